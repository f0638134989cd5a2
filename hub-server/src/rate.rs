//! Token buckets: [`RateLimit`] (a sustained rate and a burst) and the limiter built
//! from one. The limiters are `governor`'s GCRA limiters (one atomic word each) on
//! tokio's clock, so paused-time tests drive them. The inbound limits of each
//! connection ([`HubConfig::inbound_calls`](crate::HubConfig::inbound_calls)) and the
//! hub's bound on session record lookups
//! ([`SessionConfig::restore_lookups`](crate::SessionConfig::restore_lookups)) use them.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// A token bucket: a sustained rate and the burst it may reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens refilled per second.
    pub per_second: u32,
    /// The most tokens that may be spent at once.
    pub burst: u32,
}

impl RateLimit {
    /// `per_second` tokens a second, bursts of `burst`.
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimit { per_second, burst }
    }
}

/// tokio's clock, for `governor`: real time normally, paused time in tests.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A token bucket shared by its users (lock-free).
pub(crate) type Bucket =
    RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;

/// A bucket refilled with one token every `every`, bursts of `burst` (0 counts as 1).
fn bucket_of(every: Duration, burst: u32) -> Bucket {
    // `with_period` refuses only a zero period, excluded here.
    let quota = Quota::with_period(every.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
    Bucket::direct_with_clock(quota, TokioClock)
}

/// The bucket of `limit` (a rate or burst of 0 counts as 1).
pub(crate) fn bucket(limit: RateLimit) -> Bucket {
    bucket_of(
        Duration::from_secs(1) / limit.per_second.max(1),
        limit.burst,
    )
}

/// A bucket of `n` tokens per `window`: one every `window / n`, bursts of `n` (0
/// counts as 1).
pub(crate) fn bucket_per(n: u32, window: Duration) -> Bucket {
    bucket_of(window / n.max(1), n)
}
