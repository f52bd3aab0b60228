//! The `termsgate` command line: parse arguments, call into the library.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use termsgate::{config, demo, diagnostics, keys, server};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "termsgate",
    version,
    about = "An edge gateway that enforces an API's terms of use"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file (SIGHUP reloads, SIGTERM drains, SIGINT exits at once).
    Run {
        /// Config file.
        #[arg(short, long, default_value = "conf/termsgate.toml")]
        config: PathBuf,
    },
    /// Validate a config file without serving.
    Check {
        /// Config file.
        #[arg(short, long, default_value = "conf/termsgate.toml")]
        config: PathBuf,
    },
    /// Manage API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Run a stand-in Jettson API with the gateway in front of it, on demo keys.
    Demo {
        /// Public port of the gateway.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Port of the admin listener.
        #[arg(long, default_value_t = 9090)]
        admin_port: u16,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Mint a new key and print the [[keys]] block holding only its SHA-256.
    New {
        /// The plan the key belongs to.
        #[arg(long)]
        plan: String,
        /// The key id (default: a random one).
        #[arg(long)]
        id: Option<String>,
    },
    /// Read one key from standard input and print its SHA-256 as lowercase hex.
    Hash,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Key {
            command: KeyCommand::New { plan, id },
        } => key_new(&plan, id),
        Command::Key {
            command: KeyCommand::Hash,
        } => key_hash(),
        Command::Demo { port, admin_port } => demo(port, admin_port),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("termsgate: {msg}");
    ExitCode::FAILURE
}

fn run(path: &Path) -> ExitCode {
    diagnostics::init();
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match server::run(cfg, Some(path.to_path_buf()), Vec::new()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            println!("{}", cfg.summary());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn key_new(plan: &str, id: Option<String>) -> ExitCode {
    let id = id.unwrap_or_else(keys::default_id);
    if !termsgate::request_id::is_valid(&id) {
        return fail(format!(
            "--id {id:?}: use 1-128 characters of A-Z a-z 0-9 . _ : -"
        ));
    }
    let token = keys::mint_token();
    println!("API key (shown once; give it to the client, store it nowhere else):\n{token}\n");
    println!(
        "Paste into the config:\n{}",
        keys::toml_block(&id, plan, &token)
    );
    ExitCode::SUCCESS
}

fn key_hash() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        return fail(format!("cannot read standard input: {e}"));
    }
    let token = input.trim();
    if token.is_empty() {
        return fail("no key on standard input");
    }
    println!("{}", keys::hash_hex(token));
    ExitCode::SUCCESS
}

fn demo(port: u16, admin_port: u16) -> ExitCode {
    diagnostics::init();
    let upstream = match demo::free_loopback_port() {
        Ok(a) => a,
        Err(e) => return fail(format!("no free loopback port for the demo upstream: {e}")),
    };
    let listen = ([127, 0, 0, 1], port).into();
    let admin = ([127, 0, 0, 1], admin_port).into();
    let (text, demo_keys) = demo::config(listen, admin, upstream);
    let cfg = match config::load_str(&text, Path::new("demo.toml")) {
        Ok(c) => c,
        Err(e) => return fail(format!("built-in demo config: {e}")),
    };
    eprintln!("{}", demo::banner(listen, admin, &demo_keys));
    let services: Vec<Box<dyn pingora::services::ServiceWithDependents>> =
        vec![Box::new(demo::upstream_service(upstream))];
    match server::run(cfg, None, services) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
