//! How to connect: [`ConnectOptions`].

use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use crate::error::ClientError;

/// How to connect.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Metadata sent with the `Connect` request (e.g. `authorization`).
    pub metadata: MetadataMap,
    /// Default time limit of each call. `None`: wait forever. Default 30 s.
    pub call_timeout: Option<Duration>,
    /// How long to wait for the server's hello. Default 10 s.
    pub connect_timeout: Duration,
    /// How often the client pings the server (measures latency). `None`: never. Default 10 s.
    pub ping_interval: Option<Duration>,
    /// The server is considered gone after this long without a frame from it.
    /// `None`: three times the server's heartbeat interval (from its hello), or never
    /// if it sends none. Default `None`.
    pub dead_after: Option<Duration>,
    /// Frames the client may queue for sending before calls wait. Default 256.
    pub send_queue: usize,
    /// The largest frame the client accepts from the server, in bytes. A larger one
    /// ends the connection (`OUT_OF_RANGE`), so make it at least the server's
    /// `max_message_bytes` (its hello says it). Default 4 MiB, tonic's default, four
    /// times the server's default.
    pub max_message_bytes: usize,
    /// Whether and how the client opens a new stream when its stream drops: see
    /// [`ReconnectPolicy`]. Default: reconnect when the server offers a session.
    pub reconnect: ReconnectPolicy,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            metadata: MetadataMap::new(),
            call_timeout: Some(Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(10)),
            dead_after: None,
            send_queue: 256,
            max_message_bytes: 4 * 1024 * 1024,
            reconnect: ReconnectPolicy::default(),
        }
    }
}

impl ConnectOptions {
    /// Adds an ASCII metadata entry (an invalid value is refused).
    pub fn metadata(mut self, key: &'static str, value: &str) -> Result<Self, ClientError> {
        let v: AsciiMetadataValue = value.parse().map_err(|_| {
            ClientError::Connect(tonic::Status::invalid_argument(format!(
                "invalid metadata value for {key}"
            )))
        })?;
        self.metadata.insert(key, v);
        Ok(self)
    }

    /// Sets [`ConnectOptions::call_timeout`].
    pub fn call_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets [`ConnectOptions::ping_interval`].
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Sets [`ConnectOptions::dead_after`].
    pub fn dead_after(mut self, after: Option<Duration>) -> Self {
        self.dead_after = after;
        self
    }

    /// Sets [`ConnectOptions::max_message_bytes`].
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Sets [`ConnectOptions::reconnect`].
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }
}

/// When the client reconnects after its stream drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReconnectMode {
    /// Never: a dropped stream ends the client ([`HubClient::closed`](crate::HubClient::closed)).
    Never,
    /// When the hello of the stream that dropped offered a session
    /// (`resume_credential` and `session_grace_ms`), so that the new stream can
    /// resume it. The default.
    #[default]
    IfSession,
    /// Always, with or without a session: without one, each reconnect is a new
    /// connection ([`ConnectionState::ResyncNeeded`](crate::ConnectionState::ResyncNeeded)).
    Always,
}

/// How the client reconnects after its stream drops (a transport error, a reset, a
/// server it hears nothing from).
///
/// It reconnects after a server's goodbye with `UNAVAILABLE` (the server is shutting
/// down or draining, as in a rolling restart, or it stopped hearing the client): behind
/// a load balancer another server takes the new stream. It never reconnects after any
/// other goodbye (the server closed the connection on purpose: a kick, a slow or
/// flooding client), a clean end of the stream, or an end with `UNAUTHENTICATED`, `PERMISSION_DENIED`, `INVALID_ARGUMENT`,
/// `UNIMPLEMENTED` or `OUT_OF_RANGE` (a frame over
/// [`ConnectOptions::max_message_bytes`]): those would only fail again. An attempt
/// refused with one of the first four ends the client too; other failed attempts are
/// retried. Each attempt is bounded by [`ConnectOptions::connect_timeout`] and comes
/// after a delay: `initial_backoff`, doubled at each attempt up to `max_backoff`, less
/// a random part of up to `jitter` of it (so that clients cut at once do not all come
/// back at once).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// When to reconnect. Default [`ReconnectMode::IfSession`].
    pub mode: ReconnectMode,
    /// The delay before the first attempt. Default 100 ms.
    pub initial_backoff: Duration,
    /// The longest delay between attempts. Default 5 s.
    pub max_backoff: Duration,
    /// The random share taken off each delay, from 0 (none: the delays are exact) to
    /// 1 (anything from nothing to the full delay). Default 0.5.
    pub jitter: f64,
    /// Attempts before the client gives up and closes. `None`: no limit. Default `None`.
    pub max_attempts: Option<u32>,
    /// How long after the drop the client may still start an attempt; then it gives
    /// up and closes. `None`: no limit. Default `None`.
    pub max_elapsed: Option<Duration>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            mode: ReconnectMode::IfSession,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            jitter: 0.5,
            max_attempts: None,
            max_elapsed: None,
        }
    }
}

impl ReconnectPolicy {
    /// No reconnection: a dropped stream ends the client.
    pub fn never() -> Self {
        ReconnectPolicy {
            mode: ReconnectMode::Never,
            ..Default::default()
        }
    }

    /// Reconnects whether or not the server offers a session.
    pub fn always() -> Self {
        ReconnectPolicy {
            mode: ReconnectMode::Always,
            ..Default::default()
        }
    }

    /// Sets [`ReconnectPolicy::mode`].
    pub fn mode(mut self, mode: ReconnectMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets [`ReconnectPolicy::initial_backoff`] and [`ReconnectPolicy::max_backoff`].
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Sets [`ReconnectPolicy::jitter`] (clamped to 0..=1).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets [`ReconnectPolicy::max_attempts`].
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets [`ReconnectPolicy::max_elapsed`].
    pub fn max_elapsed(mut self, elapsed: Option<Duration>) -> Self {
        self.max_elapsed = elapsed;
        self
    }

    /// The delay before attempt `attempt` (1 for the first), with `unit` a random
    /// number in `0..1` choosing the jitter.
    pub(crate) fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        let base = self
            .initial_backoff
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff);
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        base.mul_f64(1.0 - jitter * unit.clamp(0.0, 1.0))
    }
}

/// A random number in `0..1`, for the jitter (std's per-instance random hash keys).
pub(crate) fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn invalid_metadata_is_refused() {
        let err = ConnectOptions::default()
            .metadata("x-user", "caf\u{e9}\n")
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let ok = ConnectOptions::default()
            .metadata("x-user", "alice")
            .unwrap();
        assert_eq!(ok.metadata.get("x-user").unwrap(), "alice");
    }

    #[test]
    fn backoff_doubles_up_to_the_max_and_jitter_takes_off_up_to_its_share() {
        let p = ReconnectPolicy::default()
            .backoff(Duration::from_millis(100), Duration::from_secs(1))
            .jitter(0.0);
        let delays: Vec<_> = (1..=6).map(|n| p.delay(n, 0.99)).collect();
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(p.delay(u32::MAX, 0.5), ms(1000));
        let p = p.jitter(0.5);
        assert_eq!(p.delay(3, 0.0), ms(400));
        assert_eq!(p.delay(3, 0.5), ms(300));
        assert!(p.delay(3, 0.999_999) > ms(200));
        // Out-of-range settings are clamped.
        assert_eq!(p.clone().jitter(7.0).delay(1, 1.0), Duration::ZERO);
        assert_eq!(p.jitter(f64::NAN).delay(1, 1.0), ms(100));
        let u = random_unit();
        assert!((0.0..1.0).contains(&u), "{u}");
    }
}
