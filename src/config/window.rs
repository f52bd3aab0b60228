//! Parsing of limit windows: `"30s"`, `"1m"`, `"1h"`, `"1d"`, or a bare number of seconds.

use std::time::Duration;

use super::file::WindowFile;

/// Longest window accepted: a year. Longer windows are almost certainly a typo.
const MAX_WINDOW_SECS: u64 = 366 * 86_400;

/// Parses a window as written in the file into a whole number of seconds.
pub(crate) fn parse_window(raw: &WindowFile) -> Result<Duration, String> {
    let secs = match raw {
        WindowFile::Seconds(n) if *n > 0 => *n as u64,
        WindowFile::Seconds(n) => {
            return Err(format!("window {n} must be a positive number of seconds"))
        }
        WindowFile::Text(text) => parse_text(text)?,
    };
    if secs > MAX_WINDOW_SECS {
        return Err(format!("window of {secs}s is longer than a year"));
    }
    Ok(Duration::from_secs(secs))
}

fn parse_text(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "window {text:?} is not \"<n>s\", \"<n>m\", \"<n>h\", \"<n>d\" or a number of seconds"
        )
    };
    let trimmed = text.trim();
    let (digits, unit_secs) = match trimmed.char_indices().last() {
        Some((i, 's')) => (&trimmed[..i], 1),
        Some((i, 'm')) => (&trimmed[..i], 60),
        Some((i, 'h')) => (&trimmed[..i], 3_600),
        Some((i, 'd')) => (&trimmed[..i], 86_400),
        Some(_) => (trimmed, 1),
        None => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("window {text:?} must be longer than zero"));
    }
    n.checked_mul(unit_secs).ok_or_else(bad)
}

/// The contract's name for a window in error details: minute, hour, day, else `<n>s`.
pub(crate) fn window_label(window_secs: u64) -> String {
    match window_secs {
        60 => "minute".into(),
        3_600 => "hour".into(),
        86_400 => "day".into(),
        n => format!("{n}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Result<u64, String> {
        parse_window(&WindowFile::Text(s.into())).map(|d| d.as_secs())
    }

    #[test]
    fn units_are_understood() {
        assert_eq!(text("30s"), Ok(30));
        assert_eq!(text("1m"), Ok(60));
        assert_eq!(text("1h"), Ok(3_600));
        assert_eq!(text("1d"), Ok(86_400));
        assert_eq!(text("90"), Ok(90));
        assert_eq!(
            parse_window(&WindowFile::Seconds(45)).map(|d| d.as_secs()),
            Ok(45)
        );
    }

    #[test]
    fn bad_windows_are_refused() {
        for bad in [
            "",
            "m",
            "0m",
            "1x",
            "-1m",
            "1.5h",
            "h1",
            "99999999999999999999d",
            "400d",
        ] {
            assert!(text(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_window(&WindowFile::Seconds(0)).is_err());
        assert!(parse_window(&WindowFile::Seconds(-5)).is_err());
    }

    #[test]
    fn labels_follow_the_contract() {
        assert_eq!(window_label(60), "minute");
        assert_eq!(window_label(3_600), "hour");
        assert_eq!(window_label(86_400), "day");
        assert_eq!(window_label(7), "7s");
    }
}
