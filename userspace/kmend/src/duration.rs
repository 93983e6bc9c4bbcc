//! Human durations: `500ms`, `30s`, `5m`, `12h`, `2d`, `1h 30m` (parsed by
//! the `humantime` crate; this module only words the error for kmend).

use std::time::Duration;

/// A duration that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid duration '{0}': use a number with ms, s, m, h or d (e.g. 12h)")]
pub struct DurationError(pub String);

/// Parses a human duration.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(s.trim()).map_err(|_| DurationError(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("12h").unwrap(), Duration::from_secs(43200));
        assert_eq!(parse("2d").unwrap(), Duration::from_secs(172800));
        assert_eq!(parse("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
        for bad in ["", "h", "12", "12x", "-1h"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
