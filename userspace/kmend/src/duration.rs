//! Human durations: `500ms`, `30s`, `5m`, `12h`, `2d`.

use std::time::Duration;

/// A duration that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid duration '{0}': use a number with ms, s, m, h or d (e.g. 12h)")]
pub struct DurationError(pub String);

/// Parses a human duration.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(s.to_owned());
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs).ok_or_else(err);
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("12h").unwrap(), Duration::from_secs(43200));
        assert_eq!(parse("2d").unwrap(), Duration::from_secs(172800));
        for bad in ["", "h", "12", "12x", "-1h", "1.5h"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
