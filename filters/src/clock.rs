//! The one place rocketmesh reads the clock.
//!
//! State machines (the pull->pop translator, the pop store, message ids) take time as an
//! argument so tests can drive them; the code that calls them reads it here. Two clocks:
//! - [`unix_ms`]: wall time, ms since the Unix epoch. For values that travel (store and
//!   born timestamps, pop times, revive deadlines) and must agree with a broker's clock.
//! - [`mono_ms`]: monotonic ms since this process first asked. For local deadlines and
//!   cool-downs that must not jump with NTP; never put on the wire.

use std::sync::LazyLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Wall time in ms since the Unix epoch (0 if the clock is set before 1970, saturating far in
/// the future).
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Monotonic ms since the first call in this process (so 0 is a usable "never" value only
/// for the very first millisecond; callers that need a sentinel add 1).
pub fn mono_ms() -> u64 {
    u64::try_from(START.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_move_forward() {
        let (w, m) = (unix_ms(), mono_ms());
        // 2020-01-01 in ms: any machine running this is past it.
        assert!(w > 1_577_836_800_000);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(mono_ms() > m);
        assert!(unix_ms() >= w);
    }
}
