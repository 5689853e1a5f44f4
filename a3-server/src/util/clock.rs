//! Time: wall-clock time as the catalog and the logs store it (Unix seconds or
//! milliseconds), and the clocks the store's leases and GC read: [`Clock`] (injectable,
//! the system's by default) and [`Steady`], a wall time that never steps back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Unix seconds now.
pub fn unix_now() -> i64 {
    unix_now_ms() / 1000
}

/// Unix milliseconds now (0 for a clock before 1970).
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `YYYY-MM-DD HH:MM` (UTC) of Unix seconds, as names and listings show times.
pub fn utc_minute(secs: i64) -> String {
    match jiff::Timestamp::from_second(secs) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M").to_string(),
        Err(_) => format!("@{secs}"),
    }
}

/// Where time comes from: the system's clocks, or a test's that it steps.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time. It may step either way (NTP, an operator, a resumed VM).
    fn wall(&self) -> SystemTime;
    /// Monotonic time: it never steps.
    fn mono(&self) -> Instant;
}

/// The system's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn mono(&self) -> Instant {
        Instant::now()
    }
}

/// A wall time that never steps back: the wall clock read once, when it is made, then
/// carried on by the monotonic clock, and moved forward (never back) by
/// [`Steady::catch_up`]. Two readings are ordered like the moments they were taken,
/// whatever the wall clock does in between.
pub struct Steady {
    clock: Arc<dyn Clock>,
    anchor_wall: SystemTime,
    anchor_mono: Instant,
    /// How far [`Steady::catch_up`] moved it ahead. Read and changed with the monotonic
    /// clock under the lock, so readings from all threads are ordered too.
    ahead: Mutex<Duration>,
}

/// A time [`Steady::catch_up`] moves to must leave this much room to run on.
const HEADROOM: Duration = Duration::from_secs(1000 * 366 * 24 * 3600);

impl Steady {
    /// Anchored at `clock`'s wall time now.
    pub fn new(clock: Arc<dyn Clock>) -> Steady {
        Steady {
            anchor_wall: clock.wall(),
            anchor_mono: clock.mono(),
            clock,
            ahead: Mutex::new(Duration::ZERO),
        }
    }

    /// Now.
    pub fn now(&self) -> SystemTime {
        let ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
        self.at(*ahead)
    }

    /// Moves [`Steady::now`] forward to `seen` if it is behind it; returns how far it
    /// moved. A time with no room to run on (a damaged file time) is ignored.
    pub fn catch_up(&self, seen: SystemTime) -> Duration {
        let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
        let lag = match seen.duration_since(self.at(*ahead)) {
            Ok(lag) if seen.checked_add(HEADROOM).is_some() => lag,
            _ => return Duration::ZERO,
        };
        *ahead += lag;
        lag
    }

    /// Monotonic time, for durations: [`Steady::catch_up`] does not move it.
    pub fn mono(&self) -> Instant {
        self.clock.mono()
    }

    fn at(&self, ahead: Duration) -> SystemTime {
        self.anchor_wall
            + self
                .clock
                .mono()
                .saturating_duration_since(self.anchor_mono)
            + ahead
    }
}

/// A clock a test moves by hand: both clocks together ([`TestClock::advance`]), or the
/// wall clock alone ([`TestClock::step_wall`]).
#[cfg(test)]
pub struct TestClock {
    base: Instant,
    /// (wall time, monotonic time since `base`)
    now: Mutex<(SystemTime, Duration)>,
}

#[cfg(test)]
impl TestClock {
    /// A clock at 2026-01-01 00:00 UTC.
    pub fn new() -> Arc<TestClock> {
        Arc::new(TestClock {
            base: Instant::now(),
            now: Mutex::new((
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
                Duration::ZERO,
            )),
        })
    }

    /// Lets `d` pass.
    pub fn advance(&self, d: Duration) {
        let mut now = self.now.lock().unwrap();
        now.0 += d;
        now.1 += d;
    }

    /// Steps the wall clock by `secs` (back when negative); monotonic time stays.
    pub fn step_wall(&self, secs: i64) {
        let mut now = self.now.lock().unwrap();
        let d = Duration::from_secs(secs.unsigned_abs());
        now.0 = if secs < 0 { now.0 - d } else { now.0 + d };
    }
}

#[cfg(test)]
impl Clock for TestClock {
    fn wall(&self) -> SystemTime {
        self.now.lock().unwrap().0
    }

    fn mono(&self) -> Instant {
        self.base + self.now.lock().unwrap().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_are_civil_utc() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00");
        assert_eq!(utc_minute(1_795_564_800 + 3_660), "2026-11-25 01:01");
        assert_eq!(utc_minute(951_782_400), "2000-02-29 00:00");
    }

    #[test]
    fn steady_time_ignores_wall_steps_and_only_catches_up_forward() {
        let clock = TestClock::new();
        let steady = Steady::new(clock.clone());
        let t0 = steady.now();
        clock.step_wall(-3600);
        clock.advance(Duration::from_secs(10));
        assert_eq!(steady.now(), t0 + Duration::from_secs(10));
        clock.step_wall(7200);
        assert_eq!(steady.now(), t0 + Duration::from_secs(10));
        // Behind a time it has seen: it moves forward to it, and never back.
        let seen = t0 + Duration::from_secs(3600);
        assert_eq!(steady.catch_up(seen), Duration::from_secs(3590));
        assert_eq!(steady.now(), seen);
        assert_eq!(steady.catch_up(t0), Duration::ZERO);
        clock.advance(Duration::from_secs(1));
        assert_eq!(steady.now(), seen + Duration::from_secs(1));
        // Monotonic time is untouched by the catch-up.
        let m = steady.mono();
        assert_eq!(
            steady.catch_up(seen + Duration::from_secs(60)),
            Duration::from_secs(59)
        );
        assert_eq!(steady.mono(), m);
        // A time with no room left to run on is ignored.
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 - 10);
        assert_eq!(steady.catch_up(far), Duration::ZERO);
    }
}
