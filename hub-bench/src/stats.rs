//! Clocks, latency percentiles and the fan-out completion tracker.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::{Notify, Semaphore};

/// Nanoseconds since this process first asked: the clock of `sent_at_nanos`.
/// Publisher and receivers live in the same process, so one epoch serves both.
pub fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The `p` quantile (0..1) of latencies in nanoseconds, in milliseconds rounded to
/// two decimals, picked as the peers' bench does (`sorted[floor(p * n)]`).
pub fn quantile_ms(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((p * sorted.len() as f64) as usize).min(sorted.len() - 1);
    Some((sorted[i] as f64 / 1e4).round() / 100.0)
}

/// Rounds to `digits` decimals (for JSON output).
pub fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// Counts deliveries per broadcast; a broadcast is complete when every member got it.
pub struct Tracker {
    /// Members of the group: deliveries that complete one broadcast.
    clients: u32,
    /// Deliveries so far, per broadcast number.
    counts: Vec<AtomicU32>,
    /// Broadcasts complete.
    done: AtomicU64,
    /// Deliveries seen (complete broadcasts or not).
    deliveries: AtomicU64,
    /// Publish-to-last-delivery latency of each complete broadcast, in nanoseconds.
    latencies: Mutex<Vec<u64>>,
    /// Broadcasts the publisher may still start: one permit back per completion.
    pub window: Semaphore,
    /// Pinged when the last broadcast completes.
    pub all_done: Notify,
}

impl Tracker {
    /// A tracker for `broadcasts` broadcasts to `clients` members, `window` in flight.
    pub fn new(clients: u32, broadcasts: u64, window: usize) -> Self {
        Tracker {
            clients,
            counts: (0..broadcasts).map(|_| AtomicU32::new(0)).collect(),
            done: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            latencies: Mutex::new(Vec::with_capacity(broadcasts as usize)),
            window: Semaphore::new(window),
            all_done: Notify::new(),
        }
    }

    /// One member got broadcast `seq`, sent at `sent_at_nanos`.
    pub fn delivered(&self, seq: u64, sent_at_nanos: u64) {
        self.deliveries.fetch_add(1, Relaxed);
        let Some(count) = self.counts.get(seq as usize) else {
            return;
        };
        if count.fetch_add(1, Relaxed) + 1 != self.clients {
            return;
        }
        let latency = now_nanos().saturating_sub(sent_at_nanos);
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(latency);
        self.window.add_permits(1);
        if self.done.fetch_add(1, Relaxed) + 1 == self.counts.len() as u64 {
            self.all_done.notify_one();
        }
    }

    /// Broadcasts complete so far.
    pub fn done(&self) -> u64 {
        self.done.load(Relaxed)
    }

    /// Deliveries seen so far.
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Relaxed)
    }

    /// The latencies of complete broadcasts, sorted.
    pub fn sorted_latencies(&self) -> Vec<u64> {
        let mut v = self
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        v.sort_unstable();
        v
    }
}
