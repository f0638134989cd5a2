//! The hub's counters, gauges and histograms.
//!
//! Every figure goes through the [`metrics`] facade, labelled `hub="<service>"`
//! (names below), so any `metrics` recorder exports them: `chat-server
//! --metrics-addr` serves them as Prometheus text. Install the recorder before the
//! hubs are built: each hub registers its handles once, when it is built, and the
//! hot path then only bumps those handles (no name lookup, no label allocation).
//! The counters are also kept in relaxed atomics that [`HubMetrics::snapshot`]
//! reads, for tests and for code that wants the figures without a recorder.
//!
//! | name | kind | what |
//! | --- | --- | --- |
//! | `hub_<counter>_total` | counter | each field of [`HubMetrics`] of type [`Counter`] |
//! | `hub_connections` | gauge | connections open on this server |
//! | `hub_groups` | gauge | groups with at least one member on this server |
//! | `hub_queued_bytes` | gauge | bytes of frames waiting in this server's outbound queues |
//! | `hub_call_duration_seconds` | histogram | time from a call's start to its reply |
//! | `hub_backplane_publish_duration_seconds` | histogram | time for one backplane publish to resolve |
//! | `hub_push_fanout` | histogram | local connections one push was queued to |

use std::sync::atomic::{AtomicU64, Ordering, Ordering::Relaxed};

use metrics::{Gauge, Histogram, Unit};

/// One counter: a relaxed atomic, plus the same count through the `metrics` facade
/// (a no-op handle for [`HubMetrics::default`], or until a recorder is installed).
#[derive(Debug)]
pub struct Counter {
    /// The count, for [`HubMetrics::snapshot`].
    value: AtomicU64,
    /// The facade's handle, registered once per hub.
    exported: metrics::Counter,
}

impl Default for Counter {
    fn default() -> Self {
        Counter {
            value: AtomicU64::new(0),
            exported: metrics::Counter::noop(),
        }
    }
}

impl Counter {
    fn registered(exported: metrics::Counter) -> Self {
        Counter {
            value: AtomicU64::new(0),
            exported,
        }
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Relaxed);
        self.exported.increment(n);
    }

    /// The count so far.
    #[inline]
    pub fn get(&self) -> u64 {
        self.value.load(Relaxed)
    }

    /// Adds `n` and returns the previous count, like [`AtomicU64::fetch_add`] (the
    /// ordering is always relaxed).
    #[inline]
    pub fn fetch_add(&self, n: u64, _order: Ordering) -> u64 {
        self.exported.increment(n);
        self.value.fetch_add(n, Relaxed)
    }

    /// The count so far, like [`AtomicU64::load`].
    #[inline]
    pub fn load(&self, _order: Ordering) -> u64 {
        self.get()
    }
}

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// The figures of one hub on one server. Every failure the runtime or a
        /// provider meets is counted here (and logged), so nothing is lost silently.
        ///
        /// Cheap to update (relaxed atomics and pre-registered `metrics` handles);
        /// read a consistent-enough copy of the counters with [`HubMetrics::snapshot`].
        /// See the module docs for the exported names.
        #[derive(Debug)]
        pub struct HubMetrics {
            $($(#[doc = $doc])* pub $name: Counter,)*
            /// Connections open on this server (`hub_connections`).
            pub connections: Gauge,
            /// Groups with at least one member on this server (`hub_groups`).
            pub groups: Gauge,
            /// Bytes of frames waiting in this hub's outbound queues on this server,
            /// each with the queue's per-frame overhead (`hub_queued_bytes`; a
            /// broadcast counts once per recipient).
            pub queued_bytes: Gauge,
            /// Seconds from a call's start to its reply or error (`hub_call_duration_seconds`).
            pub call_seconds: Histogram,
            /// Seconds one backplane publish took to resolve
            /// (`hub_backplane_publish_duration_seconds`).
            pub backplane_publish_seconds: Histogram,
            /// Local connections one push was queued to (`hub_push_fanout`).
            pub push_fanout: Histogram,
        }

        /// A copy of the counters of [`HubMetrics`] at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Default for HubMetrics {
            /// Figures kept in the atomics only: nothing is exported.
            fn default() -> Self {
                HubMetrics {
                    $($name: Counter::default(),)*
                    connections: Gauge::noop(),
                    groups: Gauge::noop(),
                    queued_bytes: Gauge::noop(),
                    call_seconds: Histogram::noop(),
                    backplane_publish_seconds: Histogram::noop(),
                    push_fanout: Histogram::noop(),
                }
            }
        }

        impl HubMetrics {
            /// The figures of hub `hub` (its full service name), registered with the
            /// `metrics` recorder installed now (if none is, they are kept in the
            /// atomics only, like [`HubMetrics::default`]).
            pub fn for_hub(hub: &str) -> Self {
                let label = [("hub", hub.to_owned())];
                $(
                    metrics::describe_counter!(
                        concat!("hub_", stringify!($name), "_total"),
                        Unit::Count,
                        concat!($($doc),*).trim().to_owned()
                    );
                )*
                describe();
                HubMetrics {
                    $($name: Counter::registered(metrics::counter!(
                        concat!("hub_", stringify!($name), "_total"),
                        &label
                    )),)*
                    connections: metrics::gauge!("hub_connections", &label),
                    groups: metrics::gauge!("hub_groups", &label),
                    queued_bytes: metrics::gauge!("hub_queued_bytes", &label),
                    call_seconds: metrics::histogram!("hub_call_duration_seconds", &label),
                    backplane_publish_seconds: metrics::histogram!(
                        "hub_backplane_publish_duration_seconds",
                        &label
                    ),
                    push_fanout: metrics::histogram!("hub_push_fanout", &label),
                }
            }

            /// Reads every counter.
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot { $($name: self.$name.get(),)* }
            }
        }
    };
}

/// Describes the gauges and histograms to the recorder.
fn describe() {
    metrics::describe_gauge!(
        "hub_connections",
        Unit::Count,
        "Connections open on this server."
    );
    metrics::describe_gauge!(
        "hub_groups",
        Unit::Count,
        "Groups with at least one member on this server."
    );
    metrics::describe_gauge!(
        "hub_queued_bytes",
        Unit::Bytes,
        "Bytes of frames waiting in outbound queues (a broadcast counts once per recipient)."
    );
    metrics::describe_histogram!(
        "hub_call_duration_seconds",
        Unit::Seconds,
        "Time from a call's start to its reply or error."
    );
    metrics::describe_histogram!(
        "hub_backplane_publish_duration_seconds",
        Unit::Seconds,
        "Time one backplane publish took to resolve."
    );
    metrics::describe_histogram!(
        "hub_push_fanout",
        Unit::Count,
        "Local connections one push was queued to."
    );
}

counters! {
    /// Connections accepted.
    connections_opened,
    /// Connections ended, for any reason.
    connections_closed,
    /// Connections refused by the hub's `on_connect` hook, for lack of a valid identity,
    /// because the server was shutting down, or because a resume was throttled
    /// (`resume_lookups_throttled`).
    connections_rejected,
    /// Of `connections_rejected`: refused because the request's credentials were
    /// missing (on a hub that requires them) or did not verify.
    connections_unauthenticated,
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
    /// Times this server began listening on another server's channel, because it
    /// restored a session whose connection id names that server (sends, asks and
    /// commands for the id go there).
    backplane_nodes_adopted,
    /// Times it stopped again: it held no such connection any more. Adopted less
    /// released is the number of other servers' channels it listens on now.
    backplane_nodes_released,
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
    /// Gaps seen in a group's backplane offsets that were not (all) filled from
    /// history (pushes published and never received here, or offsets that
    /// restarted); each told the group's local members (`ServerControl.pushes_lost`).
    backplane_gaps,
    /// Pushes those gaps skipped (offsets never received nor read from history).
    backplane_pushes_missed,
    /// Gaps in a group's backplane offsets filled entirely from the backplane's
    /// history (nothing told to the members).
    backplane_gaps_filled,
    /// Pushes read from the backplane's history to fill gaps, and delivered in order.
    backplane_pushes_recovered,
    /// Connections whose stream broke and whose session was kept for a resume
    /// (`SessionConfig::grace`).
    sessions_detached,
    /// Sessions resumed by a new stream (same connection id, groups kept, missed
    /// pushes replayed).
    sessions_resumed,
    /// Sessions restored on this server from the backplane's session record (another
    /// server held them, or died): same connection id, identity and groups
    /// (`RESUME_OUTCOME_RESTORED`).
    sessions_restored,
    /// Sessions this server stopped serving because another server resumed them (a
    /// takeover command); their `on_disconnect` does not run here.
    sessions_taken_over,
    /// Sessions this server left for another to resume when it shut down (shared
    /// sessions: the record stays, `on_disconnect` does not run here).
    sessions_handed_off,
    /// Detached sessions that ended because no resume came within their grace period
    /// (or too many were detached).
    sessions_expired,
    /// Sessions ended to make room for a new one of the same identity
    /// (`SessionConfig::max_per_identity`).
    sessions_evicted,
    /// Resumes refused: the session had ended (`RESUME_OUTCOME_EXPIRED`).
    resumes_failed_expired,
    /// Resumes refused: the credential matched no session (`RESUME_OUTCOME_UNKNOWN`).
    resumes_failed_unknown,
    /// Resumes refused: the pushes missed were no longer all held (`RESUME_OUTCOME_GAP`).
    resumes_failed_gap,
    /// Resumes refused: another identity presented the credential
    /// (`RESUME_OUTCOME_IDENTITY_MISMATCH`).
    resumes_failed_identity,
    /// Resumes refused otherwise: no sessions on the hub, or a malformed request
    /// (`RESUME_OUTCOME_REFUSED`).
    resumes_failed_refused,
    /// Resumes of a session this server does not hold that failed with `UNAVAILABLE`
    /// before reading its record on the backplane: the hub's bound on these lookups
    /// (`SessionConfig::restore_lookups`) was spent. The session is left as it was;
    /// the client retries.
    resume_lookups_throttled,
    /// Restored sessions whose `hub-resume-positions-bin` was not read whole: it did
    /// not decode (no position was read), or it held more than 1,024 positions (the
    /// rest were ignored). Their groups replay from where the session joined them.
    resume_positions_ignored,
    /// Pushes read from the groups' history and replayed to sessions restored on this
    /// server (`RESUME_OUTCOME_RESTORED`: the hello's `replayed` is 0 for them, these
    /// follow it).
    restored_pushes_replayed,
    /// Pushes a restored session missed that its groups' history no longer held; each
    /// group's told to the session (`ServerControl.pushes_lost`).
    restored_pushes_missed,
    /// Asks sent to one target connection (a group ask counts one per member asked).
    asks,
    /// Of `asks`: answered by the client.
    asks_answered,
    /// Of `asks`: the client answered with an error.
    asks_failed,
    /// Of `asks`: no answer within the ask's timeout.
    asks_timed_out,
    /// Of `asks`: the target was gone (closed, not connected, or its server died).
    asks_disconnected,
    /// Of `asks`: the target's server could not be reached (backplane down or failed).
    asks_unreachable,
    /// Of `asks`: refused before sending, over `HubConfig::max_asks_per_connection`
    /// (asks in flight from one asking connection) or `max_asks_per_target` (asks
    /// waiting on one target connection), or too large.
    asks_refused,
    /// Of `asks`: abandoned because the asking connection went away.
    asks_cancelled,
    /// Answers that matched no waiting ask (late, after the timeout, or unknown).
    answers_unmatched,
}

impl HubMetrics {
    /// Adds one to a counter.
    #[inline]
    pub fn incr(counter: &Counter) {
        counter.add(1);
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
