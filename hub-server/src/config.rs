use std::sync::Arc;
use std::time::Duration;

use crate::SessionConfig;
use crate::rate::RateLimit;
use hub_core::{
    GroupProvider, MemoryProvider, NodeId, OutboundBudget, OutboxLimits, SlowConsumerPolicy,
};

/// Limits and timings of one hub. Every bound is documented with what happens when
/// it is hit.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HubConfig {
    /// Pushes a connection's outbound queue holds within its budget. A queue over its
    /// budget (this, or [`HubConfig::outbound_queue_bytes`]) is *behind*, and
    /// [`HubConfig::slow_consumer`] applies: by default the client is closed with
    /// `RESOURCE_EXHAUSTED` if it stays behind for [`HubConfig::slow_consumer_grace`] or
    /// its queue reaches twice the budget ([`hub_core::HARD_LIMIT_FACTOR`]). Replies,
    /// errors and control frames do not count (see [`HubConfig::max_queued_calls`]).
    /// Counted: `slow_consumer_behind`, `slow_consumer_disconnects`. Default 1024.
    pub outbound_queue: usize,
    /// Bytes of pushes a connection's outbound queue holds within its budget (each frame
    /// also costs [`hub_core::FRAME_OVERHEAD`] bytes). Over it, as over
    /// [`HubConfig::outbound_queue`]. One push is always taken into an empty queue, however
    /// large. Default 2 MiB (a queue may hold 4 MiB while within its grace).
    pub outbound_queue_bytes: usize,
    /// How long a connection may stay over its outbound budget before it is closed
    /// (with [`SlowConsumerPolicy::Disconnect`]): this tells a client that stopped
    /// reading from one briefly behind (a burst, a network hiccup), which catches up
    /// and misses nothing. Zero closes it as soon as it is over budget. Default 5 s.
    pub slow_consumer_grace: Duration,
    /// What a queue over budget does. Default: disconnect the client with
    /// `RESOURCE_EXHAUSTED` after the grace (see [`SlowConsumerPolicy`]).
    pub slow_consumer: SlowConsumerPolicy,
    /// The largest frame, in bytes, in either direction (sent frames: unless
    /// [`HubConfig::max_outbound_message_bytes`] says otherwise). A larger request frame
    /// ends the stream with `RESOURCE_EXHAUSTED`; a larger reply becomes an error frame;
    /// a larger push (with room for the sequence number each copy gets) is refused to
    /// its sender (`PushError::TooLarge`), both with `OUT_OF_RANGE`. Default 1 MiB.
    /// Clients must accept frames this large
    /// (`hub_client::ConnectOptions::max_message_bytes`, default 4 MiB); the hello frame
    /// tells them the limit.
    pub max_message_bytes: usize,
    /// The largest frame, in bytes, the server sends, if it differs from
    /// [`HubConfig::max_message_bytes`] (`None`, the default: the same). The hello
    /// advertises it (`max_outbound_message_bytes`); a reply over it becomes an error
    /// frame and a push over it (with room for its sequence number) is refused to its
    /// sender, both with `OUT_OF_RANGE` (not worth retrying) and counted in
    /// `frames_too_large`. Error and goodbye messages are cut to
    /// [`hub_core::quote::MAX_ERROR_MESSAGE_BYTES`]. Stock gRPC clients receive up to
    /// 4 MiB unless told otherwise: keep it at or below that.
    pub max_outbound_message_bytes: Option<usize>,
    /// Calls a connection may have waiting behind the one running. One more gets an
    /// error frame (`RESOURCE_EXHAUSTED`) at once; the connection stays up (counted in
    /// `frames_rejected`). Replies are backpressure: while this many replies (or
    /// [`HubConfig::outbound_queue_bytes`] of them) wait to be written, the connection
    /// reads no new frame (counted in `reads_paused`), so a client that pipelines calls
    /// without reading is slowed by HTTP/2 flow control, never closed for its own
    /// replies. Default 64.
    pub max_queued_calls: usize,
    /// Request frames a connection may send per second, and in a burst (calls,
    /// fire-and-forget calls and control frames alike). One more call gets an error
    /// frame `RESOURCE_EXHAUSTED` (a control frame is dropped); counted in
    /// `inbound_rate_limited`. `None`: no limit. Default 200/s, bursts of 400.
    pub inbound_calls: Option<RateLimit>,
    /// Request bytes a connection may send per second, and in a burst; over it, as over
    /// [`HubConfig::inbound_calls`]. The burst is raised to
    /// [`HubConfig::max_message_bytes`] if it is smaller. `None`: no limit. Default
    /// 512 KiB/s, bursts of 2 MiB.
    pub inbound_bytes: Option<RateLimit>,
    /// A connection whose frames are refused by its rate limits more than this many
    /// times in quick succession (the allowance refills at this many per
    /// [`HubConfig::flood_window`]) is closed: a goodbye and `RESOURCE_EXHAUSTED`
    /// (counted in `flood_disconnects`). A client that slows down when told never gets
    /// there. 0: never. Default 100 (per 10 s).
    pub flood_refusals: u32,
    /// The window of [`HubConfig::flood_refusals`]. Default 10 s.
    pub flood_window: Duration,
    /// How often the server pings each client (`ServerControl.ping`). `None`: never. Default 15 s.
    pub heartbeat_interval: Option<Duration>,
    /// A connection that sends nothing (no call, no pong) for this long is closed with
    /// `UNAVAILABLE` ("heartbeat timeout"). Detects dead peers behind proxies that
    /// answer HTTP/2 pings themselves. Checked every `heartbeat_interval` (every quarter
    /// of the timeout when the server does not ping; the client's own pings then keep
    /// it alive). While the connection does not read because its replies wait, the
    /// time counts from when it stopped reading. `None`: never. Default 45 s.
    pub heartbeat_timeout: Option<Duration>,
    /// Sessions that survive a dropped stream (see [`SessionConfig`]): a client that
    /// reconnects within the grace period with its resume credential keeps its
    /// connection id and groups and gets the pushes it missed. With sessions,
    /// `on_disconnect` runs when the session ends, not when a stream breaks (that runs
    /// `on_transport_lost`). `None` (the default): no sessions; a broken stream ends
    /// the connection.
    pub sessions: Option<SessionConfig>,
    /// How long an ask waits for each target's answer when it sets no timeout of its
    /// own (`.ask_timeout(..)`); then that target's outcome is `TimedOut` (counted in
    /// `asks_timed_out`). Default 5 s.
    pub ask_timeout: Duration,
    /// Asks (to one connection, a user or a group: one each) a connection's calls may
    /// have in flight at once; one more is refused at once, every target's outcome
    /// `RESOURCE_EXHAUSTED` (counted in `asks_refused`). Default 16.
    pub max_asks_per_connection: usize,
    /// Asks waiting for one target connection's answer on this server; one more to it
    /// is refused (its outcome `RESOURCE_EXHAUSTED`, counted in `asks_refused`), the
    /// other targets are asked. Default 16.
    pub max_asks_per_target: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            outbound_queue: 1024,
            outbound_queue_bytes: 2 * 1024 * 1024,
            slow_consumer_grace: Duration::from_secs(5),
            slow_consumer: SlowConsumerPolicy::Disconnect,
            max_message_bytes: 1024 * 1024,
            max_outbound_message_bytes: None,
            max_queued_calls: 64,
            inbound_calls: Some(RateLimit::new(200, 400)),
            inbound_bytes: Some(RateLimit::new(512 * 1024, 2 * 1024 * 1024)),
            flood_refusals: 100,
            flood_window: Duration::from_secs(10),
            heartbeat_interval: Some(Duration::from_secs(15)),
            heartbeat_timeout: Some(Duration::from_secs(45)),
            sessions: None,
            ask_timeout: hub_core::ask::DEFAULT_ASK_TIMEOUT,
            max_asks_per_connection: 16,
            max_asks_per_target: 16,
        }
    }
}

impl HubConfig {
    /// Sets [`HubConfig::sessions`].
    pub fn sessions(mut self, sessions: Option<SessionConfig>) -> Self {
        self.sessions = sessions;
        self
    }

    /// Sets [`HubConfig::outbound_queue`].
    pub fn outbound_queue(mut self, frames: usize) -> Self {
        self.outbound_queue = frames.max(1);
        self
    }

    /// Sets [`HubConfig::slow_consumer`].
    pub fn slow_consumer(mut self, policy: SlowConsumerPolicy) -> Self {
        self.slow_consumer = policy;
        self
    }

    /// Sets [`HubConfig::max_message_bytes`].
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Sets [`HubConfig::max_outbound_message_bytes`].
    pub fn max_outbound_message_bytes(mut self, bytes: Option<usize>) -> Self {
        self.max_outbound_message_bytes = bytes;
        self
    }

    /// The largest frame the server sends: [`HubConfig::max_outbound_message_bytes`],
    /// or [`HubConfig::max_message_bytes`] when that is not set.
    pub fn outbound_limit(&self) -> usize {
        self.max_outbound_message_bytes
            .unwrap_or(self.max_message_bytes)
    }

    /// Sets [`HubConfig::max_queued_calls`].
    pub fn max_queued_calls(mut self, calls: usize) -> Self {
        self.max_queued_calls = calls;
        self
    }

    /// Sets [`HubConfig::outbound_queue_bytes`].
    pub fn outbound_queue_bytes(mut self, bytes: usize) -> Self {
        self.outbound_queue_bytes = bytes.max(1);
        self
    }

    /// Sets [`HubConfig::slow_consumer_grace`].
    pub fn slow_consumer_grace(mut self, grace: Duration) -> Self {
        self.slow_consumer_grace = grace;
        self
    }

    /// Sets [`HubConfig::inbound_calls`].
    pub fn inbound_calls(mut self, limit: Option<RateLimit>) -> Self {
        self.inbound_calls = limit;
        self
    }

    /// Sets [`HubConfig::inbound_bytes`].
    pub fn inbound_bytes(mut self, limit: Option<RateLimit>) -> Self {
        self.inbound_bytes = limit;
        self
    }

    /// Sets [`HubConfig::flood_refusals`] and [`HubConfig::flood_window`].
    pub fn flood(mut self, refusals: u32, window: Duration) -> Self {
        self.flood_refusals = refusals;
        self.flood_window = window;
        self
    }

    /// The limits of one connection's outbound queue.
    pub(crate) fn outbox_limits(&self) -> OutboxLimits {
        OutboxLimits {
            frames: self.outbound_queue,
            bytes: self.outbound_queue_bytes,
            grace: self.slow_consumer_grace,
            replies: self.max_queued_calls.max(1),
            reply_bytes: self.outbound_queue_bytes,
        }
    }

    /// Sets [`HubConfig::heartbeat_interval`] and [`HubConfig::heartbeat_timeout`].
    pub fn heartbeat(mut self, interval: Option<Duration>, timeout: Option<Duration>) -> Self {
        self.heartbeat_interval = interval;
        self.heartbeat_timeout = timeout;
        self
    }
}

/// Server-wide defaults shared by the hubs of one server: the group provider, the
/// [`HubConfig`], the server's node id, and one shutdown switch for all of them.
///
/// ```
/// use hub_server::{Hubs, HubConfig};
/// # fn redis() -> hub_core::MemoryProvider { hub_core::MemoryProvider }
/// // Every hub built with `hubs` uses this provider unless it picks its own.
/// let hubs = Hubs::builder().default_groups(redis()).build();
/// ```
#[derive(Clone)]
pub struct Hubs {
    pub(crate) inner: Arc<HubsInner>,
}

pub(crate) struct HubsInner {
    /// Identifies this server in connection ids and on backplanes.
    pub(crate) node: NodeId,
    /// The provider for hubs that do not choose one.
    pub(crate) default_groups: Arc<dyn GroupProvider>,
    /// The config for hubs that do not set one.
    pub(crate) config: HubConfig,
    /// Cancelled by [`Hubs::shutdown`]; every hub's own token is a child of it.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    /// How hubs that do not choose their own learn who a connection is.
    pub(crate) identity: crate::identity::IdentityConfig,
    /// The hubs built from this, so shutdown can wait for their connections.
    pub(crate) hubs: std::sync::Mutex<Vec<std::sync::Weak<crate::hub::HubCore>>>,
    /// Bytes queued to the clients of every hub built from this, and their limit.
    pub(crate) outbound: Arc<OutboundBudget>,
}

impl std::fmt::Debug for Hubs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hubs")
            .field("node", &self.inner.node)
            .field("default_groups", &self.inner.default_groups.name())
            .finish()
    }
}

impl Default for Hubs {
    fn default() -> Self {
        Hubs::builder().build()
    }
}

impl Hubs {
    /// In-memory groups, default config, a random node id.
    pub fn new() -> Self {
        Hubs::default()
    }

    /// Starts a [`HubsBuilder`].
    pub fn builder() -> HubsBuilder {
        HubsBuilder {
            node: None,
            default_groups: Arc::new(MemoryProvider),
            config: HubConfig::default(),
            identity: Default::default(),
            max_outbound_bytes: DEFAULT_MAX_OUTBOUND_BYTES,
        }
    }

    /// This server's node id.
    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// The bytes queued to the clients of every hub built from this (a gauge, its peak
    /// and its limit, [`HubsBuilder::max_outbound_bytes`]).
    pub fn outbound(&self) -> &OutboundBudget {
        &self.inner.outbound
    }

    /// Closes every connection of every hub built from this, with `reason`: each client
    /// gets what is already queued for it, a `Goodbye` frame, and the status
    /// `UNAVAILABLE`; new connections are refused. Resolves when all are closed or
    /// `grace` has passed. Then stop the tonic server (`serve_with_shutdown`).
    pub async fn shutdown(&self, reason: &str, grace: std::time::Duration) {
        let hubs: Vec<_> = {
            let list = self.inner.hubs.lock().unwrap_or_else(|e| e.into_inner());
            list.iter().filter_map(|w| w.upgrade()).collect()
        };
        for hub in &hubs {
            hub.begin_shutdown(reason);
        }
        self.inner.shutdown.cancel();
        let all = futures_util::future::join_all(hubs.iter().map(|h| h.wait_closed()));
        let _ = tokio::time::timeout(grace, all).await;
    }
}

/// The default of [`HubsBuilder::max_outbound_bytes`]: 256 MiB.
pub const DEFAULT_MAX_OUTBOUND_BYTES: usize = 256 * 1024 * 1024;

/// Builds [`Hubs`].
pub struct HubsBuilder {
    node: Option<NodeId>,
    default_groups: Arc<dyn GroupProvider>,
    config: HubConfig,
    /// Set by `identity` / `require_identity` (in `identity.rs`).
    pub(crate) identity: crate::identity::IdentityConfig,
    max_outbound_bytes: usize,
}

impl HubsBuilder {
    /// The group provider of every hub that does not choose its own (e.g. Redis for all).
    pub fn default_groups(mut self, provider: impl GroupProvider) -> Self {
        self.default_groups = Arc::new(provider);
        self
    }

    /// Like [`HubsBuilder::default_groups`], with a shared provider.
    pub fn default_groups_arc(mut self, provider: Arc<dyn GroupProvider>) -> Self {
        self.default_groups = provider;
        self
    }

    /// The config of every hub that does not set its own.
    pub fn config(mut self, config: HubConfig) -> Self {
        self.config = config;
        self
    }

    /// The most bytes queued to clients, all hubs and connections of this server
    /// together (pushes, replies, control frames; a broadcast's shared bytes count
    /// once). When it is spent, a push to a connection holding more than its share
    /// (this / connections) applies the slow-consumer policy to that connection at once
    /// (by default a close with `RESOURCE_EXHAUSTED`); connections within their share
    /// still get every push. Counted in `outbound_total_hits`. Default 256 MiB
    /// ([`DEFAULT_MAX_OUTBOUND_BYTES`]).
    pub fn max_outbound_bytes(mut self, bytes: usize) -> Self {
        self.max_outbound_bytes = bytes;
        self
    }

    /// A fixed node id (the default is random).
    pub fn node(mut self, node: NodeId) -> Self {
        self.node = Some(node);
        self
    }

    /// Builds it.
    pub fn build(self) -> Hubs {
        Hubs {
            inner: Arc::new(HubsInner {
                node: self.node.unwrap_or_else(NodeId::random),
                default_groups: self.default_groups,
                config: self.config,
                identity: self.identity,
                shutdown: tokio_util::sync::CancellationToken::new(),
                hubs: std::sync::Mutex::new(Vec::new()),
                outbound: Arc::new(OutboundBudget::new(self.max_outbound_bytes)),
            }),
        }
    }
}
