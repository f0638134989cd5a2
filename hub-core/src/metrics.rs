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
