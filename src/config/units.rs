//! Value types of the file format that are written as strings: durations (`250ms`,
//! `10s`, `1m`, `1h`), sizes (`512`, `16KiB`, `10MiB`), rates (`100/s`) and status
//! ranges (`200-399`). Each parses with a message that says what was expected.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written like `250ms`, `10s`, `1m`, `1h` (or combined: `1m30s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        // A bare number has no obvious unit; refuse it rather than guess seconds.
        if t.is_empty() || t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "expected a duration with a unit like 250ms, 10s, 1m or 1h, got `{s}`"
            ));
        }
        humantime::parse_duration(t)
            .map(Duration)
            .map_err(|_| format!("expected a duration like 250ms, 10s, 1m or 1h, got `{s}`"))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() != 0 {
            if d.subsec_nanos().is_multiple_of(1_000_000) {
                return write!(f, "{}ms", d.as_millis());
            }
            return write!(f, "{}", humantime::format_duration(d));
        }
        let s = d.as_secs();
        if s != 0 && s.is_multiple_of(3600) {
            write!(f, "{}h", s / 3600)
        } else if s != 0 && s.is_multiple_of(60) {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

/// A byte count: a plain integer or a number with a unit (`16KiB`, `10MiB`, `1GiB`,
/// and the decimal `KB`/`MB`/`GB`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("expected a size like 512, 16KiB or 10MiB, got `{s}`");
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n != 0 && n.is_multiple_of(size) {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}")
    }
}

/// A rate: `100/s`, `6000/m`, `50000/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: u64,
    pub per: std::time::Duration,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected a rate like 100/s, 6000/m or 50000/h, got `{s}`");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("a rate must be above zero, got `{s}`"));
        }
        let per = match unit.trim() {
            "s" => std::time::Duration::from_secs(1),
            "m" => std::time::Duration::from_secs(60),
            "h" => std::time::Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// A calendar window of a quota, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Minute,
    Hour,
    Day,
    /// Monday 00:00 to Monday 00:00 (ISO weeks).
    Week,
    Month,
}

impl Period {
    pub const NAMES: [&'static str; 5] = ["minute", "hour", "day", "week", "month"];

    pub fn name(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

/// A quota: requests per calendar window, `1000000/month`, `5000/day`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuotaLimit {
    pub count: u64,
    pub period: Period,
}

impl FromStr for QuotaLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("expected a quota like 1000000/month, 5000/day or 100/hour, got `{s}`");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = n.trim().replace('_', "").parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("a quota must be above zero, got `{s}`"));
        }
        let period = match unit.trim() {
            "minute" => Period::Minute,
            "hour" => Period::Hour,
            "day" => Period::Day,
            "week" => Period::Week,
            "month" => Period::Month,
            other => {
                let hint = super::suggest::hint(other, Period::NAMES);
                return Err(format!(
                    "unknown quota period `{other}`; expected minute, hour, day, week or month{hint}"
                ));
            }
        };
        Ok(QuotaLimit { count, period })
    }
}

impl fmt::Display for QuotaLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.period.name())
    }
}

/// An inclusive range of HTTP statuses: `200`, `200-399`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusRange {
    pub low: u16,
    pub high: u16,
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

impl FromStr for StatusRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected a status or a range like 200-399, got `{s}`");
        let code = |x: &str| -> Result<u16, String> {
            let v: u16 = x.trim().parse().map_err(|_| bad())?;
            if (100..=599).contains(&v) {
                Ok(v)
            } else {
                Err(bad())
            }
        };
        let (low, high) = match s.split_once('-') {
            Some((a, b)) => (code(a)?, code(b)?),
            None => (code(s)?, code(s)?),
        };
        if low > high {
            return Err(bad());
        }
        Ok(StatusRange { low, high })
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

/// Serde glue shared by the four types: accept a string (and, for sizes and
/// statuses, an integer), parse with `FromStr`, serialize with `Display`.
macro_rules! string_serde {
    ($ty:ty, $expecting:literal, $accept_int:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        if $accept_int {
                            v.to_string().parse().map_err(E::custom)
                        } else {
                            Err(E::custom(format!(
                                concat!("expected ", $expecting, ", got the bare number `{}`"),
                                v
                            )))
                        }
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        Err(E::custom(format!(
                            concat!("expected ", $expecting, ", got `{}`"),
                            v
                        )))
                    }
                }
                d.deserialize_any(V)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

string_serde!(Duration, "a duration like 250ms, 10s, 1m or 1h", false);
string_serde!(ByteSize, "a size like 512, 16KiB or 10MiB", true);
string_serde!(Rate, "a rate like 100/s, 6000/m or 50000/h", false);
string_serde!(QuotaLimit, "a quota like 1000000/month or 5000/day", false);
string_serde!(StatusRange, "a status or a range like 200-399", true);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!("250ms".parse::<Duration>(), Ok(Duration::from_millis(250)));
        assert_eq!("10s".parse::<Duration>(), Ok(Duration::from_secs(10)));
        assert_eq!("1m".parse::<Duration>(), Ok(Duration::from_secs(60)));
        assert_eq!("1h".parse::<Duration>(), Ok(Duration::from_secs(3600)));
        assert!("10".parse::<Duration>().is_err());
        assert!("ten seconds".parse::<Duration>().is_err());
        assert_eq!(Duration::from_millis(250).to_string(), "250ms");
        assert_eq!(Duration::from_secs(120).to_string(), "2m");
    }

    #[test]
    fn sizes() {
        assert_eq!("512".parse::<ByteSize>(), Ok(ByteSize(512)));
        assert_eq!("16KiB".parse::<ByteSize>(), Ok(ByteSize(16384)));
        assert_eq!("10MiB".parse::<ByteSize>(), Ok(ByteSize(10 << 20)));
        assert!("10 parsecs".parse::<ByteSize>().is_err());
        assert!("-1".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(32 << 10).to_string(), "32KiB");
    }

    #[test]
    fn rates_and_statuses() {
        let r: Rate = "6000/m".parse().unwrap();
        assert_eq!((r.count, r.per.as_secs()), (6000, 60));
        assert!("0/s".parse::<Rate>().is_err());
        assert!("5/d".parse::<Rate>().is_err());
        let q: QuotaLimit = "1_000_000/month".parse().unwrap();
        assert_eq!((q.count, q.period), (1_000_000, Period::Month));
        assert_eq!(q.to_string(), "1000000/month");
        assert!("0/day".parse::<QuotaLimit>().is_err());
        let e = "10/mnth".parse::<QuotaLimit>().unwrap_err();
        assert!(e.contains("did you mean `month`?"), "{e}");
        let s: StatusRange = "200-399".parse().unwrap();
        assert!(s.contains(302) && !s.contains(404));
        assert!("399-200".parse::<StatusRange>().is_err());
        assert!("700".parse::<StatusRange>().is_err());
    }
}
