//! The clock a file sink rotates by and stamps rotated names with: UTC, local or a named
//! IANA zone.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use crate::error::Error;

/// The clock a file sink rotates by and names rotated files with: UTC (the default), the
/// system's local zone, or a named IANA zone (read from the OS time zone database).
///
/// ```
/// use keel_log::Zone;
///
/// assert_eq!("utc".parse::<Zone>().unwrap().name(), "UTC");
/// assert_eq!(Zone::named("Asia/Kolkata").unwrap().name(), "Asia/Kolkata");
/// assert!(Zone::named("Mars/Olympus_Mons").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub(super) tz: TimeZone,
    name: String,
}

impl Default for Zone {
    fn default() -> Self {
        Self::utc()
    }
}

impl Zone {
    /// UTC.
    pub fn utc() -> Self {
        Self {
            tz: TimeZone::UTC,
            name: "UTC".into(),
        }
    }

    /// The system's local zone (`TZ`, else `/etc/localtime`), read once now; UTC when it
    /// cannot be determined.
    pub fn local() -> Self {
        let tz = TimeZone::try_system().unwrap_or(TimeZone::UTC);
        let name = tz
            .iana_name()
            .map_or_else(|| "local".to_owned(), str::to_owned);
        Self { tz, name }
    }

    /// The IANA zone `name` (`Europe/Berlin`, `Asia/Kolkata`).
    ///
    /// # Errors
    /// [`Error::UnknownTimeZone`] when the time zone database has no such zone.
    pub fn named(name: &str) -> Result<Self, Error> {
        let tz = TimeZone::get(name).map_err(|e| Error::UnknownTimeZone {
            name: name.into(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            tz,
            name: name.into(),
        })
    }

    /// The zone's name: `UTC`, an IANA name, or `local` when the system zone has none.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `yyyymmddTHHMMSS` of `time` on this zone's clock.
    pub(super) fn stamp(&self, time: SystemTime) -> String {
        let secs = i64::try_from(unix_secs(time)).unwrap_or(i64::MAX);
        match Timestamp::from_second(secs) {
            Ok(ts) => Zoned::new(ts, self.tz.clone())
                .strftime("%Y%m%dT%H%M%S")
                .to_string(),
            Err(_) => "00000000T000000".into(),
        }
    }
}

impl std::str::FromStr for Zone {
    type Err = Error;

    /// `utc` (any case), `local`, or an IANA zone name.
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.eq_ignore_ascii_case("utc") {
            Ok(Self::utc())
        } else if s.eq_ignore_ascii_case("local") {
            Ok(Self::local())
        } else {
            Self::named(s)
        }
    }
}

pub(super) fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn utc_stamps() {
        let utc = Zone::utc();
        assert_eq!(utc.stamp(at(0)), "19700101T000000");
        assert_eq!(utc.stamp(at(1_795_391_999)), "20261122T235959");
        assert_eq!(utc.stamp(at(951_782_400)), "20000229T000000");
    }

    #[test]
    fn zone_names_parse() {
        assert_eq!("UTC".parse::<Zone>().unwrap(), Zone::utc());
        assert_eq!(Zone::default(), Zone::utc());
        let kolkata: Zone = "Asia/Kolkata".parse().unwrap();
        assert_eq!(kolkata.name(), "Asia/Kolkata");
        assert_eq!(kolkata.stamp(at(0)), "19700101T053000");
        let err = "Nowhere/Atlantis".parse::<Zone>().unwrap_err();
        assert!(
            matches!(&err, Error::UnknownTimeZone { name, .. } if name == "Nowhere/Atlantis"),
            "{err}"
        );
    }
}
