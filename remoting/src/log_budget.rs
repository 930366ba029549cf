//! Rate-limited warnings for what a peer can cause at will (malformed frames, lost framing):
//! the first few lines of each window are logged, the rest counted and summed up in the next
//! logged line, so 20,000 garbage frames cost a handful of lines. Counters carry the totals.

use std::sync::atomic::{AtomicU64, Ordering};

use rocketmesh_filters::clock::mono_ms;

/// Lines allowed per window.
const PER_WINDOW: u64 = 10;
/// Window length.
const WINDOW_MS: u64 = 10_000;

/// A shared budget of log lines (lock-free; a few lines over the budget at a window's edge are
/// possible and harmless).
#[derive(Debug)]
pub(crate) struct LogBudget {
    window_start: AtomicU64,
    used: AtomicU64,
    suppressed: AtomicU64,
}

impl LogBudget {
    pub(crate) const fn new() -> Self {
        LogBudget {
            window_start: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this line may be logged, `n` being how many were suppressed since the last
    /// one logged; `None` when the budget is spent (the line is counted instead).
    pub(crate) fn take(&self) -> Option<u64> {
        self.take_at(mono_ms())
    }

    fn take_at(&self, now: u64) -> Option<u64> {
        let start = self.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= WINDOW_MS
            && self
                .window_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < PER_WINDOW {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// `tracing::warn!` through a [`LogBudget`]: the line is logged with `suppressed = n` while the
/// budget lasts, dropped (and counted) otherwise.
macro_rules! warn_limited {
    ($budget:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $budget.take() {
            tracing::warn!(suppressed, $($arg)+);
        }
    };
}
pub(crate) use warn_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_costs_a_few_lines_and_the_next_window_reports_the_rest() {
        let b = LogBudget::new();
        let t0 = 1_000_000;
        let logged = (0..20_000).filter(|_| b.take_at(t0).is_some()).count();
        assert_eq!(logged as u64, PER_WINDOW);
        // The next window logs again and says how many were dropped meanwhile.
        assert_eq!(b.take_at(t0 + WINDOW_MS), Some(20_000 - PER_WINDOW));
        assert_eq!(b.take_at(t0 + WINDOW_MS + 1), Some(0));
    }
}
