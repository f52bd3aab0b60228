//! Configuration: the file format, its validation into runtime types, and hot reload.
//!
//! `load` is the one entry point used by `termsgate check`, start-up and reload, so a file that
//! `check` accepts is exactly a file that reload accepts.

mod file;
pub mod model;
pub mod reload;
pub mod thread_copy;
mod validate;
pub mod watch;
mod window;

use std::path::{Path, PathBuf};

pub use model::*;
pub(crate) use window::window_label;

/// Why a config file was refused. The message names the table, entry and field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has unknown or mistyped fields.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said, with line and column.
        message: String,
    },
    /// The file parsed but a value is wrong.
    #[error("{0}")]
    Invalid(String),
}

/// Reads, parses and validates a config file and its `keys_file`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let parsed: file::FileConfig = parse_file(path)?;
    let keys_path = parsed
        .server
        .keys_file
        .as_ref()
        .map(|k| path.parent().unwrap_or_else(|| Path::new("")).join(k));
    let extra_keys = match &keys_path {
        Some(kp) => parse_file::<file::KeysFile>(kp)?.keys,
        None => Vec::new(),
    };
    let sources = Sources {
        config_path: path.to_path_buf(),
        keys_path,
    };
    validate::build(parsed, extra_keys, sources)
}

/// Parses a config from a string (used by `termsgate demo` for its embedded config).
pub fn load_str(text: &str, pretend_path: &Path) -> Result<Config, ConfigError> {
    let parsed: file::FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: pretend_path.to_path_buf(),
        message: one_line(&e.to_string()),
    })?;
    let sources = Sources {
        config_path: pretend_path.to_path_buf(),
        keys_path: None,
    };
    validate::build(parsed, Vec::new(), sources)
}

fn parse_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: one_line(&e.to_string()),
    })
}

/// toml's messages span several lines (with a source excerpt); the CLI promises one line.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^' || c == ' ')
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
