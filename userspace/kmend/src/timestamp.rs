//! Points in time as kmend writes them: RFC 3339, UTC, whole seconds.

use std::{
    fmt,
    time::Duration, //
};

use serde::{
    Deserialize,
    Deserializer,
    Serialize,
    Serializer, //
};
use time::{
    OffsetDateTime,
    format_description::well_known::Rfc3339, //
};

/// A UTC instant, shown as `2026-11-22T04:53:00Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

/// A time that is not RFC 3339.
#[derive(Debug, thiserror::Error)]
#[error("invalid time '{0}': use RFC 3339, e.g. 2026-11-22T04:53:00Z")]
pub struct TimestampError(pub String);

impl Timestamp {
    pub fn now() -> Self {
        Self::from_unix(OffsetDateTime::now_utc().unix_timestamp())
    }

    /// Seconds since the epoch (clamped to the years 1970..9999).
    pub fn from_unix(secs: i64) -> Self {
        let secs = secs.clamp(0, 253_402_300_799);
        Self(OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH))
    }

    pub fn unix(self) -> i64 {
        self.0.unix_timestamp()
    }

    /// Parses RFC 3339 (any offset; kept as UTC).
    pub fn parse(s: &str) -> Result<Self, TimestampError> {
        let t = OffsetDateTime::parse(s.trim(), &Rfc3339).map_err(|_| TimestampError(s.to_owned()))?;
        Ok(Self::from_unix(t.unix_timestamp()))
    }

    /// The last second of a `YYYY-MM-DD` day, in UTC.
    pub fn end_of_day(date: &str) -> Result<Self, TimestampError> {
        let t = Self::parse(&format!("{date}T23:59:59Z")).map_err(|_| TimestampError(date.to_owned()))?;
        // Reject things like "2026-1-5" that happened to parse some other way.
        if date.len() != 10 { Err(TimestampError(date.to_owned())) } else { Ok(t) }
    }

    pub fn saturating_sub(self, d: Duration) -> Self {
        Self::from_unix(self.unix().saturating_sub(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        Self::from_unix(self.unix().saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
    }

    /// The date part, `YYYY-MM-DD`.
    pub fn date(self) -> String {
        self.to_string()[..10].to_owned()
    }
}

/// Now: a record made without a time is made now.
impl Default for Timestamp {
    fn default() -> Self {
        Self::now()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_normalises_to_utc() {
        let t = Timestamp::parse("2026-11-22T04:53:00Z").unwrap();
        assert_eq!(t.to_string(), "2026-11-22T04:53:00Z");
        let t2 = Timestamp::parse("2026-11-22T06:53:00+02:00").unwrap();
        assert_eq!(t, t2);
        assert_eq!(Timestamp::end_of_day("2026-11-22").unwrap().to_string(), "2026-11-22T23:59:59Z");
        assert!(Timestamp::parse("yesterday").is_err());
        assert!(Timestamp::end_of_day("2026-13-01").is_err());
        assert_eq!(t.saturating_sub(Duration::from_secs(3600)).to_string(), "2026-11-22T03:53:00Z");
        assert_eq!(t.date(), "2026-11-22");
    }
}
