//! Calendar quotas of consumer groups (`consumer_groups.<g>.quota`): at most
//! `count` requests per consumer (or per group) in each UTC minute, hour,
//! day, ISO week or month.
//!
//! The counts live in Redis, so every gateway instance draws on one count.
//! One Lua script reads, compares and increments atomically: a request over
//! the quota is refused without counting, so exactly `count` requests pass in
//! a window however many instances share it. A window's key expires a day
//! after the window ends. The window comes from the gateway's clock (UTC); at
//! a boundary, instances whose clocks disagree by a second disagree for that
//! second. A store that fails or is slower than `redis.timeout` follows the
//! quota's `on_store_error`, and the store breaker skips a dead Redis at once
//! (`store_breaker`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::{Date, Month, OffsetDateTime, Time};

use super::consumers::Consumer;
use super::rate_limit::StoreError;
use crate::config::units::{Period, QuotaLimit};
use crate::store_breaker::{StoreBreaker, redis_connection, redis_probe};

/// How long a window's count outlives the window (clock skew between
/// instances, and a look at it after the fact).
const KEEP_AFTER_WINDOW: i64 = 86_400;

/// The window `unix` falls in: its start and end, in Unix seconds.
pub fn window(period: Period, unix: i64) -> (i64, i64) {
    let Ok(t) = OffsetDateTime::from_unix_timestamp(unix) else {
        return (unix, unix + 1);
    };
    let date = t.date();
    let at = |d: Date, time: Time| d.with_time(time).assume_utc().unix_timestamp();
    match period {
        Period::Minute => {
            let start = unix - unix.rem_euclid(60);
            (start, start + 60)
        }
        Period::Hour => {
            let start = unix - unix.rem_euclid(3_600);
            (start, start + 3_600)
        }
        Period::Day => {
            let start = at(date, Time::MIDNIGHT);
            (start, start + 86_400)
        }
        Period::Week => {
            let monday = i64::from(date.weekday().number_days_from_monday());
            let start = at(date, Time::MIDNIGHT) - monday * 86_400;
            (start, start + 7 * 86_400)
        }
        Period::Month => {
            let first = |year: i32, month: Month| {
                Date::from_calendar_date(year, month, 1)
                    .map(|d| at(d, Time::MIDNIGHT))
                    .unwrap_or(unix)
            };
            let (year, month) = (date.year(), date.month());
            let next_year = if month == Month::December {
                year + 1
            } else {
                year
            };
            (first(year, month), first(next_year, month.next()))
        }
    }
}

/// Refuse over the quota without counting; count and set the expiry
/// otherwise. Returns {admitted, count after}.
const QUOTA_LUA: &str = r"
local limit = tonumber(ARGV[1])
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= limit then
  return {0, n}
end
n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('EXPIREAT', KEYS[1], ARGV[2])
end
return {1, n}
";

/// What a quota decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaVerdict {
    Admitted {
        remaining: u64,
    },
    /// Used up; it renews in this many seconds (at least 1).
    Exceeded {
        retry_after_secs: u64,
    },
    /// The store failed and `on_store_error: allow` let the request through.
    AllowedWithoutStore,
}

/// One group's quota, compiled.
pub struct QuotaPolicy {
    /// `quota:<group>`: the policy label in metrics.
    pub name: Arc<str>,
    pub group: Arc<str>,
    pub limit: QuotaLimit,
    /// One count for the whole group, not one per consumer.
    per_group: bool,
    pub deny_on_store_error: bool,
    /// Decisions taken because the store failed: [allowed, denied].
    pub store_errors: [prometheus::IntCounter; 2],
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    timeout: Duration,
    breaker: Arc<StoreBreaker>,
}

impl QuotaPolicy {
    pub fn new(
        group: &str,
        q: &crate::config::schema::GroupQuota,
        redis: &crate::config::schema::Redis,
        store_errors: [prometheus::IntCounter; 2],
    ) -> Result<Self, String> {
        let timeout = redis.timeout.get();
        let conn = redis_connection(&redis.url, timeout, timeout)?;
        let name: Arc<str> = format!("quota:{group}").into();
        Ok(QuotaPolicy {
            breaker: StoreBreaker::new(
                format!("quota of group {group}"),
                redis_probe(&conn, timeout),
            ),
            name,
            group: group.into(),
            limit: q.limit,
            per_group: q.key == "consumer_group",
            deny_on_store_error: q.on_store_error == "deny",
            store_errors,
            conn,
            script: redis::Script::new(QUOTA_LUA),
            timeout,
        })
    }

    /// The Redis key of `who`'s count in the window starting at `start`.
    fn key(&self, who: &Consumer, start: i64) -> String {
        let (kind, name) = if self.per_group {
            ("g", &*self.group)
        } else {
            ("c", &*who.name)
        };
        format!(
            "tollgate:quota:{}:{}:{kind}:{name}:{start}",
            self.group,
            self.limit.period.name()
        )
    }

    /// Counts one request of `who` against the quota.
    pub async fn check(&self, who: &Consumer) -> Result<QuotaVerdict, StoreError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let (start, end) = window(self.limit.period, now);
        let result = if self.breaker.is_open() {
            Err(StoreError::Skipped)
        } else {
            let r = self.call(&self.key(who, start), end).await;
            match &r {
                Ok(_) => self.breaker.succeeded(),
                Err(_) => self.breaker.failed(),
            }
            r
        };
        match result {
            Ok((true, n)) => Ok(QuotaVerdict::Admitted {
                remaining: self.limit.count.saturating_sub(n),
            }),
            Ok((false, _)) => Ok(QuotaVerdict::Exceeded {
                retry_after_secs: u64::try_from(end - now).unwrap_or(1).max(1),
            }),
            Err(e) => {
                if !matches!(e, StoreError::Skipped) {
                    tracing::warn!(policy = %self.name, error = %e, deny = self.deny_on_store_error, "quota store failed");
                }
                if self.deny_on_store_error {
                    self.store_errors[1].inc();
                    Err(e)
                } else {
                    self.store_errors[0].inc();
                    Ok(QuotaVerdict::AllowedWithoutStore)
                }
            }
        }
    }

    async fn call(&self, key: &str, window_end: i64) -> Result<(bool, u64), StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.script.key(key);
        invocation
            .arg(self.limit.count)
            .arg(window_end + KEEP_AFTER_WINDOW);
        let reply: Vec<i64> =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| StoreError::Timeout(self.timeout))??;
        let [admitted, count] = reply[..] else {
            return Err(StoreError::BadReply);
        };
        Ok((admitted == 1, u64::try_from(count).unwrap_or(0)))
    }
}

/// What a reload compares to keep a group's quota policy (and its Redis
/// connection) running.
pub fn definition(
    q: &crate::config::schema::GroupQuota,
    redis: &crate::config::schema::Redis,
) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        q.limit, q.key, q.on_store_error, redis.url, redis.timeout
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(date: &str, time: &str) -> i64 {
        let fmt =
            |s: &str, sep: char| -> Vec<u32> { s.split(sep).map(|p| p.parse().unwrap()).collect() };
        let d = fmt(date, '-');
        let t = fmt(time, ':');
        let month = Month::try_from(u8::try_from(d[1]).unwrap()).unwrap();
        Date::from_calendar_date(
            i32::try_from(d[0]).unwrap(),
            month,
            u8::try_from(d[2]).unwrap(),
        )
        .unwrap()
        .with_hms(
            u8::try_from(t[0]).unwrap(),
            u8::try_from(t[1]).unwrap(),
            u8::try_from(t[2]).unwrap(),
        )
        .unwrap()
        .assume_utc()
        .unix_timestamp()
    }

    #[test]
    fn windows_follow_the_utc_calendar() {
        let now = unix("2026-12-07", "08:31:15");
        assert_eq!(
            window(Period::Minute, now),
            (
                unix("2026-12-07", "08:31:00"),
                unix("2026-12-07", "08:32:00")
            )
        );
        assert_eq!(
            window(Period::Hour, now),
            (
                unix("2026-12-07", "08:00:00"),
                unix("2026-12-07", "09:00:00")
            )
        );
        assert_eq!(
            window(Period::Day, now),
            (
                unix("2026-12-07", "00:00:00"),
                unix("2026-12-08", "00:00:00")
            )
        );
        // 2026-12-07 is a Monday: its week starts that midnight.
        assert_eq!(
            window(Period::Week, now),
            (
                unix("2026-12-07", "00:00:00"),
                unix("2026-12-14", "00:00:00")
            )
        );
        assert_eq!(
            window(Period::Week, unix("2026-12-13", "23:59:59")),
            (
                unix("2026-12-07", "00:00:00"),
                unix("2026-12-14", "00:00:00")
            ),
            "Sunday is the week's last day"
        );
        // December rolls over into the next year; February has 28 or 29 days.
        assert_eq!(
            window(Period::Month, now),
            (
                unix("2026-12-01", "00:00:00"),
                unix("2027-01-01", "00:00:00")
            )
        );
        assert_eq!(
            window(Period::Month, unix("2028-02-29", "12:00:00")),
            (
                unix("2028-02-01", "00:00:00"),
                unix("2028-03-01", "00:00:00")
            )
        );
        let (start, end) = window(Period::Month, unix("2027-02-01", "00:00:00"));
        assert_eq!(
            (end - start) / 86_400,
            28,
            "the first second opens its month"
        );
    }

    #[test]
    fn every_instant_lies_in_its_window() {
        let mut t = unix("2026-01-01", "00:00:00") - 3;
        while t < unix("2027-01-01", "00:00:00") {
            for p in [
                Period::Minute,
                Period::Hour,
                Period::Day,
                Period::Week,
                Period::Month,
            ] {
                let (start, end) = window(p, t);
                assert!(start <= t && t < end, "{p:?} at {t}: [{start}, {end})");
                assert_eq!(
                    window(p, start),
                    (start, end),
                    "{p:?} windows do not overlap"
                );
            }
            t += 3_607;
        }
    }
}
