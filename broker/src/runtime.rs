//! GET_BROKER_RUNTIME_INFO (28): a KVTable of the broker's figures, with Apache's key names
//! (`BrokerController.prepareRuntimeInfo`, `StoreStatsService.getRuntimeInfo`).
//!
//! Rates come from the store's counters (messages stored; records handed to pulls and pops),
//! sampled every second by [`sample`] for the last 600 s: `putTps` and `getTransferedTps` are
//! three space-separated rates over 10 s, 60 s and 600 s (over the time sampled so far while the
//! broker is younger). Day totals (`...TodayMorning`, `...YesterdayMorning`) are the counters at
//! the last UTC midnights seen.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocketmesh_filters::clock::unix_ms;
use rocketmesh_filters::codec::body::KvTable;
use rocketmesh_filters::codec::codes::{response_code as code, ROCKETMESH_VERSION};
use rocketmesh_filters::codec::RemotingCommand;
use tokio_util::sync::CancellationToken;

use super::processor::reply;
use super::Broker;

/// The Apache version name of [`ROCKETMESH_VERSION`].
pub const VERSION_DESC: &str = "V5_3_0";
/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The rate windows, seconds.
pub const WINDOWS: [u64; 3] = [10, 60, 600];
const MS_PER_DAY: i64 = 86_400_000;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    puts: u64,
    gets: u64,
}

#[derive(Debug, Default)]
struct Days {
    day: i64,
    put_today: u64,
    put_yesterday: u64,
    get_today: u64,
    get_yesterday: u64,
}

/// Boot time and sampled counters.
#[derive(Debug)]
pub struct RuntimeStats {
    boot_ms: i64,
    samples: Mutex<VecDeque<Sample>>,
    days: Mutex<Days>,
}

impl Default for RuntimeStats {
    fn default() -> Self {
        Self::new()
    }
}

impl RuntimeStats {
    /// Stats of a broker booting now.
    pub fn new() -> Self {
        Self {
            boot_ms: unix_ms(),
            samples: Mutex::new(VecDeque::new()),
            days: Mutex::new(Days {
                day: unix_ms() / MS_PER_DAY,
                ..Days::default()
            }),
        }
    }

    /// Records the counters now.
    pub fn record(&self, puts: u64, gets: u64) {
        let now = Instant::now();
        let mut samples = self.samples.lock();
        samples.push_back(Sample {
            at: now,
            puts,
            gets,
        });
        let keep = WINDOWS[2] as usize + 2;
        while samples.len() > keep {
            samples.pop_front();
        }
        drop(samples);
        let day = unix_ms() / MS_PER_DAY;
        let mut d = self.days.lock();
        if day != d.day {
            d.day = day;
            d.put_yesterday = d.put_today;
            d.get_yesterday = d.get_today;
            d.put_today = puts;
            d.get_today = gets;
        }
    }

    /// Rates per second over each of [`WINDOWS`], given the counters now: `(puts, gets)`.
    fn rates(&self, puts: u64, gets: u64) -> [(f64, f64); 3] {
        let now = Instant::now();
        let samples = self.samples.lock();
        WINDOWS.map(|w| {
            let window = Duration::from_secs(w);
            // The newest sample at least `window` old, else the oldest there is.
            let base = samples
                .iter()
                .rev()
                .find(|s| now.duration_since(s.at) >= window)
                .or(samples.front());
            match base {
                Some(s) => {
                    let secs = now.duration_since(s.at).as_secs_f64();
                    if secs <= 0.0 {
                        return (0.0, 0.0);
                    }
                    (
                        puts.saturating_sub(s.puts) as f64 / secs,
                        gets.saturating_sub(s.gets) as f64 / secs,
                    )
                }
                None => (0.0, 0.0),
            }
        })
    }
}

/// Samples the store's counters every [`SAMPLE_EVERY`] until `stop`.
pub(crate) async fn sample(broker: Arc<Broker>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let s = broker.store.stats();
        broker.runtime.record(s.messages, s.messages_read);
    }
}

/// Apache's `[ d days, h hours, m minutes, s seconds ]`.
fn format_runtime(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    format!(
        "[ {} days, {} hours, {} minutes, {} seconds ]",
        s / 86_400,
        s % 86_400 / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// Used fraction of the filesystem holding `path` (Java's `(total - free) / total`), -1 when
/// unknown.
fn disk_ratio(path: &std::path::Path) -> f64 {
    match rustix::fs::statvfs(path) {
        Ok(st) if st.f_blocks > 0 => {
            st.f_blocks.saturating_sub(st.f_bfree) as f64 / st.f_blocks as f64
        }
        Ok(_) => -1.0,
        Err(e) => {
            tracing::debug!(path = %path.display(), "statvfs: {e}");
            -1.0
        }
    }
}

/// GET_BROKER_RUNTIME_INFO (28).
pub(crate) fn runtime_info(b: &Broker, req: &RemotingCommand) -> RemotingCommand {
    let stats = b.store.stats();
    let (puts, gets) = (stats.messages, stats.messages_read);
    let rates = b.runtime.rates(puts, gets);
    let tps = |pick: fn(&(f64, f64)) -> f64| {
        rates
            .iter()
            .map(|r| format!("{:.2}", pick(r)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let now = unix_ms();
    let days = b.runtime.days.lock();
    let log = b.store.commit_log();
    let entries: [(&str, String); 16] = [
        ("brokerVersionDesc", VERSION_DESC.to_owned()),
        ("brokerVersion", ROCKETMESH_VERSION.to_string()),
        ("putTps", tps(|r| r.0)),
        ("getTransferedTps", tps(|r| r.1)),
        (
            "msgPutTotalYesterdayMorning",
            days.put_yesterday.to_string(),
        ),
        ("msgPutTotalTodayMorning", days.put_today.to_string()),
        ("msgPutTotalTodayNow", puts.to_string()),
        (
            "msgGetTotalYesterdayMorning",
            days.get_yesterday.to_string(),
        ),
        ("msgGetTotalTodayMorning", days.get_today.to_string()),
        ("msgGetTotalTodayNow", gets.to_string()),
        ("commitLogMinOffset", log.min_offset().to_string()),
        ("commitLogMaxOffset", log.end_offset().to_string()),
        (
            "earliestMessageTimeStamp",
            b.store.earliest_message_time().to_string(),
        ),
        (
            "commitLogDiskRatio",
            disk_ratio(&b.config.data_dir).to_string(),
        ),
        ("bootTimestamp", b.runtime.boot_ms.to_string()),
        ("runtime", format_runtime(now - b.runtime.boot_ms)),
    ];
    drop(days);
    let table = KvTable {
        table: entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    };
    reply(b, req, code::SUCCESS).with_body(table.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_is_formatted_as_apache_does() {
        assert_eq!(
            format_runtime(((86_400 + 2 * 3600 + 3 * 60 + 4) * 1000) + 999),
            "[ 1 days, 2 hours, 3 minutes, 4 seconds ]"
        );
    }

    #[test]
    fn rates_use_the_sample_a_window_ago_or_the_oldest() {
        let s = RuntimeStats::new();
        assert_eq!(s.rates(5, 5), [(0.0, 0.0); 3]);
        s.record(0, 0);
        std::thread::sleep(Duration::from_millis(50));
        let r = s.rates(100, 10);
        // About 2000/s and 200/s over ~50 ms for every window (nothing older is sampled).
        for (p, g) in r {
            assert!(p > 100.0 && p < 2100.0, "{p}");
            assert!((p / g - 10.0).abs() < 1e-9);
        }
    }

    #[test]
    fn disk_ratio_is_a_fraction() {
        let r = disk_ratio(&std::env::temp_dir());
        assert!((0.0..=1.0).contains(&r), "{r}");
    }
}
