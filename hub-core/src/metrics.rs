use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters of one hub on one server. Every failure the runtime or a provider
        /// meets is counted here (and logged), so nothing is lost silently.
        ///
        /// Cheap to update (relaxed atomics); read a consistent-enough copy with
        /// [`HubMetrics::snapshot`].
        #[derive(Debug, Default)]
        pub struct HubMetrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`HubMetrics`] at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl HubMetrics {
            /// Reads every counter.
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Connections accepted.
    connections_opened,
    /// Connections ended, for any reason.
    connections_closed,
    /// Connections refused by the hub's `on_connect` hook or because the server was shutting down.
    connections_rejected,
    /// Calls dispatched to the hub.
    calls,
    /// Calls that returned an error (a status) or panicked.
    calls_failed,
    /// Inbound frames refused before dispatch: malformed, empty, unknown call,
    /// duplicate call id, too many queued calls.
    frames_rejected,
    /// Frames queued to a local connection (replies, pushes, control).
    frames_queued,
    /// Pushes not delivered to a local connection because its queue was full or it was closing.
    pushes_dropped,
    /// Connections closed because they stopped reading (outbound queue full).
    slow_consumer_disconnects,
    /// Connections closed because the client sent nothing within the heartbeat timeout.
    heartbeat_timeouts,
    /// Envelopes published to the backplane.
    backplane_published,
    /// Publishes to the backplane that failed (the caller got an error).
    backplane_publish_failures,
    /// Envelopes received from the backplane and delivered locally.
    backplane_received,
    /// Envelopes received from the backplane that could not be read.
    backplane_malformed,
    /// Backplane (re)connections after a loss.
    backplane_reconnects,
    /// Backplane operations other than publish that failed (subscribe, presence, counts).
    backplane_errors,
    /// Times a connection's outbound queue went over its budget (`HubConfig::outbound_queue`,
    /// `outbound_queue_bytes`): the start of its grace period. Closes that follow are in
    /// `slow_consumer_disconnects`.
    slow_consumer_behind,
    /// Pushes that met the server-wide outbound byte budget (`HubsBuilder::max_outbound_bytes`)
    /// at a connection holding more than its share (the policy applied to it).
    outbound_total_hits,
    /// Inbound frames refused by a connection's rate limits (`HubConfig::inbound_calls`,
    /// `inbound_bytes`); each got `RESOURCE_EXHAUSTED`.
    inbound_rate_limited,
    /// Connections closed for going on past their rate limits (`HubConfig::flood_refusals`).
    flood_disconnects,
    /// Times a connection stopped reading calls because its replies waited to be written
    /// (replies are backpressure).
    reads_paused,
    /// Replies and pushes refused because they were larger than the largest frame the
    /// server sends (`max_outbound_message_bytes` in the hello); the caller got `OUT_OF_RANGE`.
    frames_too_large,
    /// Pushes whose publish had already been answered OK (resolved once queued) and
    /// then failed or went unconfirmed within the publish timeout (the backplane
    /// stalled or broke): at best late, most likely lost.
    backplane_lost_after_ok,
    /// Members of other servers reported lost because their server died (presence
    /// expired), each reported to the hub's `on_members_lost` hook.
    backplane_members_lost,
}

impl HubMetrics {
    /// Adds one to a counter.
    #[inline]
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// Counters of a server's connections as `hub_server::transport` serves them (the
/// TCP and HTTP/2 level, below any hub): what its limits refused or closed.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    /// TCP connections accepted.
    pub connections_accepted: AtomicU64,
    /// Connections closed because they opened no request within the handshake
    /// timeout, or had none open for the idle timeout.
    pub idle_closed: AtomicU64,
    /// Accept failures that paused the accept loop (out of file descriptors or
    /// memory), each followed by a back-off instead of an immediate retry.
    pub accept_errors: AtomicU64,
    /// Requests (hub streams and any other gRPC call) opened on these connections.
    pub requests: AtomicU64,
}

/// A copy of [`TransportMetrics`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TransportSnapshot {
    /// See [`TransportMetrics::connections_accepted`].
    pub connections_accepted: u64,
    /// See [`TransportMetrics::idle_closed`].
    pub idle_closed: u64,
    /// See [`TransportMetrics::accept_errors`].
    pub accept_errors: u64,
    /// See [`TransportMetrics::requests`].
    pub requests: u64,
}

impl TransportMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> TransportSnapshot {
        TransportSnapshot {
            connections_accepted: self.connections_accepted.load(Relaxed),
            idle_closed: self.idle_closed.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
            requests: self.requests.load(Relaxed),
        }
    }
}
