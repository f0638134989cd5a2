//! Per-connection inbound limits: token buckets for frames and bytes per second
//! ([`HubConfig::inbound_calls`], [`HubConfig::inbound_bytes`]) and the allowance of
//! refusals past which a connection is closed as a flooder
//! ([`HubConfig::flood_refusals`]).
//!
//! The buckets are [`crate::rate`]'s token buckets. One check per inbound frame; the
//! clock is read once per bucket checked.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::config::HubConfig;
use crate::rate::{Bucket, RateLimit, bucket, bucket_per};

/// What the limits say about one inbound frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the limits.
    Pass,
    /// Over a limit: refuse the frame with this message.
    Refused(String),
    /// Over a limit, and past the allowance of refusals: close the connection.
    Flooding(String),
}

/// The inbound limits of one connection.
pub(crate) struct InboundLimits {
    /// Frames per second, and the limit it was built from (for messages).
    frames: Option<(Bucket, RateLimit)>,
    /// Bytes per second.
    bytes: Option<(Bucket, RateLimit)>,
    /// Refusals allowed before the connection is closed.
    refusals: Option<(Bucket, u32, Duration)>,
}

impl InboundLimits {
    pub(crate) fn new(config: &HubConfig) -> Self {
        let max_frame = u32::try_from(config.max_message_bytes).unwrap_or(u32::MAX);
        InboundLimits {
            frames: config.inbound_calls.map(|l| (bucket(l), l)),
            bytes: config.inbound_bytes.map(|l| {
                // A frame as large as the hub accepts must be able to pass.
                let l = RateLimit::new(l.per_second, l.burst.max(max_frame));
                (bucket(l), l)
            }),
            refusals: (config.flood_refusals > 0).then(|| {
                let n = config.flood_refusals;
                (bucket_per(n, config.flood_window), n, config.flood_window)
            }),
        }
    }

    /// Checks one inbound frame of `len` bytes.
    pub(crate) fn admit(&self, len: usize) -> Verdict {
        let refused = if let Some((b, l)) = &self.bytes
            && let Some(n) = NonZeroU32::new(u32::try_from(len).unwrap_or(u32::MAX))
            && !matches!(b.check_n(n), Ok(Ok(())))
        {
            format!(
                "rate limit: more than {} request bytes/s (bursts of {}); slow down",
                l.per_second, l.burst
            )
        } else if let Some((b, l)) = &self.frames
            && b.check().is_err()
        {
            format!(
                "rate limit: more than {} calls/s (bursts of {}); slow down",
                l.per_second, l.burst
            )
        } else {
            return Verdict::Pass;
        };
        match &self.refusals {
            Some((b, n, window)) if b.check().is_err() => Verdict::Flooding(format!(
                "{refused}: more than {n} frames refused within {window:?}, closing"
            )),
            _ => Verdict::Refused(refused),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(calls: Option<RateLimit>, bytes: Option<RateLimit>, refusals: u32) -> HubConfig {
        HubConfig::default()
            .inbound_calls(calls)
            .inbound_bytes(bytes)
            .flood(refusals, Duration::from_secs(10))
            .max_message_bytes(100)
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_rate_holds() {
        let limits = InboundLimits::new(&config(Some(RateLimit::new(10, 5)), None, 0));
        for _ in 0..5 {
            assert_eq!(limits.admit(1), Verdict::Pass);
        }
        assert!(matches!(limits.admit(1), Verdict::Refused(m) if m.contains("10 calls/s")));
        // One token per 100 ms.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(limits.admit(1), Verdict::Pass);
        assert!(matches!(limits.admit(1), Verdict::Refused(_)));
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..5 {
            assert_eq!(limits.admit(1), Verdict::Pass);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_are_limited_and_a_largest_frame_always_fits_the_burst() {
        // A burst of 10 bytes is raised to the 100-byte frame limit.
        let limits = InboundLimits::new(&config(None, Some(RateLimit::new(50, 10)), 0));
        assert_eq!(limits.admit(100), Verdict::Pass);
        assert!(matches!(limits.admit(1), Verdict::Refused(m) if m.contains("bytes/s")));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(limits.admit(50), Verdict::Pass);
        assert!(matches!(limits.admit(10), Verdict::Refused(_)));
        // An empty frame costs no bytes.
        assert_eq!(limits.admit(0), Verdict::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_past_the_allowance_are_a_flood() {
        let limits = InboundLimits::new(&config(Some(RateLimit::new(1, 1)), None, 3));
        assert_eq!(limits.admit(1), Verdict::Pass);
        for _ in 0..3 {
            assert!(matches!(limits.admit(1), Verdict::Refused(_)));
        }
        assert!(matches!(limits.admit(1), Verdict::Flooding(m) if m.contains("3 frames refused")));
        // A client that slows down earns its allowance back.
        let limits = InboundLimits::new(&config(Some(RateLimit::new(1, 1)), None, 3));
        for _ in 0..20 {
            assert_eq!(limits.admit(1), Verdict::Pass);
            assert!(matches!(limits.admit(1), Verdict::Refused(_)));
            tokio::time::advance(Duration::from_secs(4)).await;
        }
    }

    #[test]
    fn no_limits_pass_everything() {
        let limits = InboundLimits::new(&config(None, None, 1));
        for _ in 0..10_000 {
            assert_eq!(limits.admit(1 << 20), Verdict::Pass);
        }
    }
}
