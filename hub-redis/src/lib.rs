//! Redis group provider for the hub framework: the groups of a hub shared by every
//! hub server connected to one Redis (or one Redis Cluster).
//!
//! ```no_run
//! use std::time::Duration;
//! use hub_redis::RedisProvider;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The simplest form: every hub built from `hubs` shares its groups through Redis.
//! let redis = RedisProvider::connect("redis://127.0.0.1:6379").await?;
//! let hubs = hub_server::Hubs::builder().default_groups(redis).build();
//!
//! // With options: a prefix per application, tighter deadlines.
//! let redis = RedisProvider::builder()
//!     .url("redis://127.0.0.1:6379")
//!     .prefix("mygame")
//!     .publish_timeout(Duration::from_millis(500))
//!     .presence_ttl(Duration::from_secs(15))
//!     .connect()
//!     .await?;
//!
//! // Redis Cluster with sharded pub/sub (SPUBLISH/SSUBSCRIBE).
//! let cluster = RedisProvider::builder()
//!     .cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
//!     .sharded(true)
//!     .connect()
//!     .await?;
//! # let _ = (hubs, redis, cluster);
//! # Ok(()) }
//! ```
//!
//! A server only ever receives the traffic of groups it has members in: it subscribes
//! to a group's channel when the group's first local member joins and unsubscribes
//! when the last one leaves. A broadcast is encoded once by its sender and crosses
//! Redis as one `PUBLISH`, whatever the number of members and servers; the receiving
//! servers forward the same bytes to their members without decoding them.
//!
//! # How it works
//!
//! ## Channels
//!
//! Every name starts with the hub's *base*, `{prefix}:{hub}`, where `prefix` defaults
//! to `hub` and `hub` is the hub's full service name, e.g. `hub:chat.v1.ChatHub`.
//! Give each application sharing one Redis its own [prefix](RedisProviderBuilder::prefix);
//! hubs never collide since the hub name is always part of the base.
//!
//! | channel | what goes there |
//! | --- | --- |
//! | `{base}:g:{group}` | pushes to a group (`lobby`, or `$user/alice` for a user's connections) |
//! | `{base}:node:{node}` | pushes to named connections of one server (`ConnectionId`s carry their server's `NodeId`) |
//!
//! Each server subscribes to its own node channel for as long as it runs, and to a
//! group channel while it has members in the group. With [sharded](RedisProviderBuilder::sharded)
//! pub/sub the same names are used with `SPUBLISH`/`SSUBSCRIBE`, so Redis Cluster
//! spreads the groups over its shards instead of sending every message to every node.
//!
//! ## Envelope
//!
//! A message is one protobuf `hub.v1.Envelope` (see `hub-core/proto/hub/v1/hub.proto`):
//! `version` = 1, `origin` = the sending server's node id (16 hex digits), `group`
//! (empty on a node channel), `target` (all / all except these connection ids / only
//! these), and `frame`, one encoded response frame of the hub, delivered to each
//! selected member byte for byte. A server skips envelopes of its own origin (it
//! already delivered locally). An envelope that does not decode, has another version,
//! or names another group than its channel is dropped and counted in
//! `backplane_malformed`. A process in any language can push to a group by publishing
//! such an envelope. The codec and the delivery are `hub_core::remote`'s, shared by
//! every backend. An envelope with `lost` set instead of a frame is a loss notice
//! (see below); one with `command` set closes the connections it selects or removes
//! them from its group.
//!
//! ## Pushing from outside the hub
//!
//! [`RedisEmitter`] publishes those envelopes from a process that is not a hub server
//! (a game loop owning the game state, a worker): a push to a group (all, all except
//! some connections, only some), to a user (the group `$user/<id>`), to connections
//! (on their server's node channel), and the commands: disconnect a user or a
//! connection with a reason, remove a user from a group. Wrap it in the hub's
//! generated emitter (`ChatHubEmitter::new(RedisEmitter::connect(url).await?)`) for
//! typed pushes. Each is one `PUBLISH`, answered or failed within the publish
//! timeout; delivery is at-most-once, in order per emitter and channel. The wire, for
//! publishers in other languages, is in the README ("Pushing from outside the hub").
//!
//! ## Presence keys
//!
//! Member counts and member lists cover every server. Each server registers an
//! *incarnation* `{node}:{inc}` (node id, then 8 hex digits) and refreshes it every
//! [`presence_ttl`](RedisProviderBuilder::presence_ttl)/3:
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `{base}:nodes` | sorted set | live incarnations, scored with their expiry (Redis server time, ms) |
//! | `{base}:count:{g:GROUP}` | hash | incarnation → number of members of the group on that server |
//! | `{base}:members:{g:GROUP}` | hash | connection id → `{inc}` or `{inc}\|{user}` |
//! | `{base}:node:{node}:{inc}:groups` | set | groups an incarnation has members in (for clean-up) |
//! | `{base}:purge:{node}:{inc}` | string | short-lived lock of the server cleaning up after a dead one |
//!
//! A group's two hashes share the `{g:GROUP}` hash tag, so a Lua script updates both
//! atomically, in Redis Cluster too. A count reads the count hash and the live set
//! (two requests in one round trip) and adds the live servers' numbers, so it costs
//! O(servers), not O(members); a member list reads the members hash. This server's
//! own members always come from its local registry.
//!
//! **A crashed server's members stop being counted within `presence_ttl`** (default
//! 10 s) of its last heartbeat, because queries only count incarnations whose expiry
//! is in the future; no clean-up has to run first. A live server then deletes the dead
//! incarnation's entries in the background (one server, under a lock), and publishes
//! what it deleted as a loss notice on each group's channel: every server with
//! members of the group (that one included) reports them to the hub
//! (`on_members_lost`), once they no longer count. A server that missed its own heartbeats
//! (Redis unreachable for longer than the TTL) registers a new incarnation and
//! rewrites its entries, so it is counted again.
//!
//! # Guarantees
//!
//! - **Delivery across servers is at-most-once.** Redis pub/sub keeps nothing: a
//!   message published while a server is disconnected, or just before a server's
//!   subscription to the group is active, is not delivered there, and is not retried.
//!   Clients that must not miss anything need their own recovery (e.g. a sequence
//!   number and a fetch of what was missed). With
//!   [`history`](RedisProviderBuilder::history), a group push Redis took is kept in
//!   the group's stream, and a server that missed it delivers it from there, in
//!   order; what the stream no longer holds is told to the members
//!   ([`group_offsets`](RedisProviderBuilder::group_offsets) alone only tells).
//! - Within one group, pushes from one sender arrive in the order they were sent.
//! - A join ([`Backplane::joined`]) resolves once this
//!   server's subscription to the group is confirmed by Redis (for every join, not
//!   only the group's first here), so a push sent after a join returned reaches the
//!   new member.
//! - Bounded queues: publishes wait in a queue of
//!   [`publish_queue`](RedisProviderBuilder::publish_queue) entries (full: a publish
//!   waits for room within its timeout); subscription requests in one of 1024 (full:
//!   a join waits within the command timeout).
//! - Every publish gets its own result: `Ok` once it is queued for the pipeline while
//!   Redis is up (or, with [`confirm_publishes`](RedisProviderBuilder::confirm_publishes),
//!   once Redis accepted it), or `GroupError::Unavailable` / `GroupError::Timeout`. The
//!   runtime returns that to the caller and counts it (`backplane_publish_failures`).
//!   A failure of a publish already resolved (the connection breaks, or Redis does
//!   not answer within the publish timeout) is counted in `backplane_lost_after_ok`
//!   and logged: such a push is at best late, most likely lost.
//!
//! # Faults
//!
//! When Redis goes away, hub servers keep running and serve their local members.
//! A Redis that stalls (answers nothing, connections open) counts as gone: a publish
//! pipeline not answered within the [publish timeout](RedisProviderBuilder::publish_timeout),
//! or failing, marks the link down at once, so the next publishes fail fast with
//! `GroupError::Unavailable` instead of being answered `Ok` behind a dead connection;
//! the supervisor reconnects.
//! Publishes, joins and counts fail at once with `GroupError::Unavailable` (within the
//! [publish](RedisProviderBuilder::publish_timeout) or
//! [command](RedisProviderBuilder::command_timeout) timeout when Redis hangs instead
//! of closing connections). The provider reconnects with exponential backoff
//! ([`reconnect_backoff`](RedisProviderBuilder::reconnect_backoff), with jitter),
//! then resubscribes its node channel and every group that still has local members,
//! and registers its presence again (a restarted Redis is empty), before reporting
//! itself up: broadcasts flow again without a restart. A half-open connection is
//! detected by a `PING` on the subscriber connection at every heartbeat, and at every
//! heartbeat the subscriptions are also checked against the local registry (a group
//! whose last member left while Redis was away is unsubscribed then).
//!
//! Counters in the hub's `HubMetrics`: `backplane_received` (envelopes delivered
//! here), `backplane_malformed`, `backplane_reconnects`, and `backplane_errors` for
//! failures of background work (connect attempts, heartbeats, clean-up); failures
//! returned to the runtime are counted by the runtime.
//!
//! # Performance
//!
//! Publishes from all connections of a hub go through a bounded queue
//! ([`publish_queue`](RedisProviderBuilder::publish_queue)) to one publisher task,
//! which sends them as pipelines of up to [`max_batch`](RedisProviderBuilder::max_batch)
//! commands, several pipelines in flight. Received messages are delivered on the
//! connection's reader without another queue (delivery never waits: it only queues
//! into each member's bounded outbox).
//!
//! # TLS and authentication
//!
//! `rediss://host:port` connects with TLS (rustls): the server's certificate is
//! checked against the system's trust store, or against the CA given with
//! [`tls_root_certificate`](RedisProviderBuilder::tls_root_certificate); a client
//! certificate for mutual TLS is [`tls_client_certificate`](RedisProviderBuilder::tls_client_certificate).
//! An ACL user and password go in the URL (`rediss://user:password@host:port`, the
//! password percent-encoded); they never appear in logs or `Debug` output. With the
//! default prefix the user needs at most
//! `ACL SETUSER <user> on >password ~hub:* &hub:* +@pubsub +@scripting +@hash +@set
//! +@sortedset +@string +@keyspace +@connection +time` (what the tests grant).
//!
//! # Connections
//!
//! A provider opens two connections (per cluster node with Redis Cluster), shared by
//! every hub bound to it: one for commands and publishes, one for subscriptions,
//! whose messages are routed to the hubs subscribed to each channel. Build one
//! provider per process and give it to every hub (`Hubs::builder().default_groups`).
//! Each hub keeps its own supervisor (heartbeats, health checks, resubscription); a
//! failure any hub notices (a connection closed, a publish pipeline or heartbeats not
//! answered in time) replaces the pair for all of them, and each resubscribes its
//! channels and re-registers its presence on the new one. A channel two hubs use (the
//! same hub on two servers in one process) is unsubscribed only when neither does.
//! `RedisEmitter` opens a connection of its own. Both speak RESP3, so Redis 6 or newer
//! is required. Bind the provider inside a Tokio runtime: the connections run on the
//! runtime of the hub that opened them (a hub on another runtime that stops takes
//! them along; the others notice and open new ones).

mod backplane;
mod conn;
mod emitter;
mod envelope;
mod keys;
mod link;
mod presence;
mod publish;
mod shared;
#[cfg(test)]
mod tests;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use hub_core::{Backplane, BindContext, GroupError, GroupProvider};

use crate::conn::{Deployment, resp3};
pub use emitter::RedisEmitter;
pub use hub_core::remote::ENVELOPE_VERSION;

/// The options of a provider, validated.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Where Redis is.
    pub(crate) deployment: Deployment,
    /// `SPUBLISH`/`SSUBSCRIBE` instead of `PUBLISH`/`SUBSCRIBE`.
    pub(crate) sharded: bool,
    /// The first part of every channel and key.
    pub(crate) prefix: String,
    /// Deadline of joins, leaves, counts, subscriptions, heartbeats.
    pub(crate) command_timeout: Duration,
    /// Deadline of a publish, queueing included.
    pub(crate) publish_timeout: Duration,
    /// Deadline of opening a connection.
    pub(crate) connect_timeout: Duration,
    /// How long a server's presence lives without a heartbeat.
    pub(crate) presence_ttl: Duration,
    /// First reconnect delay.
    pub(crate) backoff_min: Duration,
    /// Longest reconnect delay.
    pub(crate) backoff_max: Duration,
    /// Publishes waiting for the publisher, at most.
    pub(crate) publish_queue: usize,
    /// Commands per pipeline, at most.
    pub(crate) max_batch: usize,
    /// A publish resolves on Redis's answer (true) or once queued for the pipeline (false).
    pub(crate) confirm_publishes: bool,
    /// The largest envelope published, in bytes.
    pub(crate) max_payload: usize,
    /// Group pushes carry a per-group offset and epoch, assigned by a script that
    /// publishes in the same step.
    pub(crate) group_offsets: bool,
    /// Group envelopes kept in a stream per group, with these limits.
    pub(crate) history: Option<HistoryLimits>,
}

/// The limits of the history kept per group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryLimits {
    /// Entries kept, about (the stream is trimmed with `MAXLEN ~`).
    pub(crate) max_len: usize,
    /// How long a group's stream lives after its last push.
    pub(crate) max_age: Duration,
}

impl Config {
    /// How often presence is refreshed (and the subscriber connection pinged).
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        (self.presence_ttl / 3).max(Duration::from_millis(50))
    }
}

/// Why a provider could not be built or could not reach Redis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Neither a URL, a client nor cluster nodes were given.
    #[error("no Redis address: give a URL, a redis::Client or cluster nodes")]
    NoAddress,
    /// A URL did not parse.
    #[error("invalid Redis address {address:?}: {source}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// Why it is invalid.
        #[source]
        source: redis::RedisError,
    },
    /// An option is out of range or inconsistent.
    #[error("invalid Redis provider option: {0}")]
    InvalidOption(String),
    /// Redis refused or failed the first connection.
    #[error("cannot reach Redis at {address}: {source}")]
    Unreachable {
        /// Where.
        address: String,
        /// What failed.
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not answer the first connection in time.
    #[error("Redis at {address} did not answer within {after:?}")]
    Timeout {
        /// Where.
        address: String,
        /// The connect timeout.
        after: Duration,
    },
}

impl From<ConnectError> for GroupError {
    fn from(e: ConnectError) -> Self {
        GroupError::unavailable("redis", "cannot set up the Redis provider", e)
    }
}

/// Groups shared by every hub server connected to one Redis or Redis Cluster.
///
/// Cheap to clone (clones share the connections); one provider serves every hub of a
/// process over one command and one subscriber connection (each hub has its own
/// channels and keys). See the [crate docs](crate) for the channels, keys,
/// connections and guarantees.
#[derive(Debug, Clone)]
pub struct RedisProvider {
    /// The validated options, shared by every hub bound to this provider.
    config: Arc<Config>,
    /// The connections, shared by every hub bound to this provider.
    wire: Arc<wire::Wire>,
}

impl RedisProvider {
    /// Connects to the Redis server at `url` (`redis://[user:password@]host:port[/db]`,
    /// or `rediss://` for TLS, checked against the system's roots; see
    /// [`RedisProviderBuilder::tls_root_certificate`] for a private CA) with the
    /// default options, and checks that it answers.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::builder().url(url).connect().await
    }

    /// Starts a builder for the other options.
    pub fn builder() -> RedisProviderBuilder {
        RedisProviderBuilder::default()
    }

    /// The channel and key prefix (see [`RedisProviderBuilder::prefix`]).
    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// Whether sharded pub/sub is used.
    pub fn is_sharded(&self) -> bool {
        self.config.sharded
    }
}

impl GroupProvider for RedisProvider {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn bind(&self, ctx: BindContext) -> Result<Arc<dyn Backplane>, GroupError> {
        Ok(Arc::new(backplane::RedisTransport::start(
            self.config.clone(),
            self.wire.clone(),
            ctx,
        )?))
    }

    fn describe(&self) -> String {
        self.config.deployment.describe()
    }
}

/// Where the builder connects.
#[derive(Debug, Clone)]
enum Source {
    Url(String),
    Client(Box<redis::Client>),
    Cluster(Vec<String>),
}

/// Builds a [`RedisProvider`]. Every option has a default; only the address is needed.
#[derive(Debug, Clone)]
pub struct RedisProviderBuilder {
    source: Option<Source>,
    sharded: bool,
    prefix: String,
    command_timeout: Duration,
    publish_timeout: Duration,
    connect_timeout: Duration,
    presence_ttl: Duration,
    backoff: (Duration, Duration),
    publish_queue: usize,
    max_batch: usize,
    confirm_publishes: bool,
    max_payload: usize,
    group_offsets: bool,
    history: Option<(usize, Duration)>,
    tls_root: Option<Vec<u8>>,
    tls_client: Option<(Vec<u8>, Vec<u8>)>,
}

/// Redis's own limit on one argument (`proto-max-bulk-len`, 512 MiB by default).
pub const DEFAULT_MAX_PAYLOAD: usize = 512 * 1024 * 1024;

impl Default for RedisProviderBuilder {
    fn default() -> Self {
        RedisProviderBuilder {
            source: None,
            sharded: false,
            prefix: "hub".to_owned(),
            command_timeout: Duration::from_secs(2),
            publish_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(3),
            presence_ttl: Duration::from_secs(10),
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            publish_queue: 16 * 1024,
            max_batch: 128,
            confirm_publishes: false,
            max_payload: DEFAULT_MAX_PAYLOAD,
            group_offsets: false,
            history: None,
            tls_root: None,
            tls_client: None,
        }
    }
}

impl RedisProviderBuilder {
    /// One Redis server: `redis://[user:password@]host:port[/db]`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.source = Some(Source::Url(url.into()));
        self
    }

    /// One Redis server, from an existing client (its address, database, credentials
    /// and TLS settings are used; the protocol is switched to RESP3).
    pub fn client(mut self, client: redis::Client) -> Self {
        self.source = Some(Source::Client(Box::new(client)));
        self
    }

    /// A Redis Cluster, from the URLs of some of its nodes (credentials in the URLs).
    pub fn cluster<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.source = Some(Source::Cluster(nodes.into_iter().map(Into::into).collect()));
        self
    }

    /// Sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7+): each group's messages go
    /// to the shard owning its channel only, so pub/sub scales with the cluster.
    /// Needs [`cluster`](Self::cluster). Default off.
    pub fn sharded(mut self, sharded: bool) -> Self {
        self.sharded = sharded;
        self
    }

    /// The first part of every channel and key; the hub's name follows it. Default
    /// `hub` (giving `hub:chat.v1.ChatHub:…`). Use one per application sharing a
    /// Redis. Must be non-empty, without whitespace, `{` or `}`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Deadline of joins, leaves, member counts and lists, subscriptions and
    /// heartbeats. Default 2 s.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Deadline of one publish, from the call to Redis's answer (waiting for room in
    /// the publish queue included). A pipeline of publishes Redis does not answer
    /// within it marks the link down (later publishes fail fast until it is back).
    /// Default 2 s.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Deadline of opening a connection (and, before the first connection is up, of
    /// operations waiting for it). Default 3 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a server's members keep being counted after its last heartbeat
    /// (heartbeats run every TTL/3). This bounds how long a crashed server's members
    /// linger in counts. Default 10 s; at least 300 ms.
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.presence_ttl = ttl;
        self
    }

    /// The first and the longest delay between reconnect attempts (doubling, ±25%
    /// jitter). Default 100 ms and 5 s.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max);
        self
    }

    /// Publishes that may wait for the publisher task. When full, a publish waits for
    /// room, within its timeout. Default 16384.
    pub fn publish_queue(mut self, capacity: usize) -> Self {
        self.publish_queue = capacity;
        self
    }

    /// When a publish resolves. Default `false`: once it is queued for the publisher
    /// while the connection to Redis is up (as a NATS publish resolves once buffered by
    /// the client). A failure after that (the connection breaks before Redis answers,
    /// the pipeline times out) is counted in `backplane_lost_after_ok` and logged,
    /// not returned, and marks the link down so that the next publishes fail. `true`: a publish resolves on Redis's answer, so the caller learns
    /// of every failure, but a connection's calls (which run in order) are then paced
    /// by a Redis round trip per broadcast. Either way, a publish while Redis is known
    /// to be down fails at once with `GroupError::Unavailable`, and delivery is
    /// at-most-once.
    pub fn confirm_publishes(mut self, confirm: bool) -> Self {
        self.confirm_publishes = confirm;
        self
    }

    /// Loss detection for group pushes. Default `false`. With `true`, each push to a
    /// group is published by a script that, in one atomic step, increments the
    /// group's offset (the hash `{prefix}:{hub}:offset:{g:<group>}`, fields `o` and
    /// `e`, the epoch, set once) and publishes the envelope with `offset` and `epoch`
    /// in front. A server that receives a group's envelopes with offsets skipped (a
    /// publish Redis acknowledged and then lost, a subscription that broke and came
    /// back) tells the group's local members (`ServerControl.pushes_lost`) and counts
    /// it (`backplane_gaps`, `backplane_pushes_missed`). Costs a script call per group
    /// push instead of a `PUBLISH`; the offset hash lives as long as Redis keeps it
    /// (its loss shows as a new epoch). Pushes from emitters carry no offset and are
    /// not covered. Every server of a hub should use the same setting. With sharded
    /// pub/sub the hash's tag is the slot of the group's channel instead
    /// (`{prefix}:{hub}:offset:{<channel>}`), since a script publishes only to
    /// channels of its keys' slot.
    pub fn group_offsets(mut self, on: bool) -> Self {
        self.group_offsets = on;
        self
    }

    /// Keeps each group's recent pushes in Redis, so that a server that misses some
    /// (a pub/sub message dropped, a subscription that broke and came back) delivers
    /// them from there, in order, before anything later. Implies
    /// [`group_offsets`](Self::group_offsets). Default off.
    ///
    /// The offset script also adds each group envelope to the stream
    /// `{prefix}:{hub}:history:{g:<group>}` (entry id `<offset>-1`, the published
    /// message in field `m`), trimmed to about `max_len` entries (`XADD MAXLEN ~`:
    /// Redis trims whole nodes of `stream-node-max-entries`, 100 by default, so up to
    /// that many more stay) and expiring `max_age` after the group's last push
    /// (`PEXPIRE`; the whole stream, not each entry). The stream shares the offset
    /// hash's hash tag: Redis Cluster keeps both in one slot.
    ///
    /// A receiving server that sees a gap reads the missing offsets
    /// (`backplane_gaps_filled`, `backplane_pushes_recovered`) while the group's later
    /// envelopes wait (at most 4096; the read within 3 s); what the stream no longer
    /// holds (trimmed, expired, another epoch, the read failed or was late) is told to
    /// the members as without history (`ServerControl.pushes_lost`, `backplane_gaps`).
    /// After a reconnect, each group is read from the last offset seen. The history
    /// is also readable by the hub runtime (`Backplane::history`). Costs: an `XADD`
    /// and a `PEXPIRE` per group push in the script, and the memory of
    /// `max_len` envelopes per active group. `max_len` at least 1, `max_age` at least
    /// 1 ms.
    pub fn history(mut self, max_len: usize, max_age: Duration) -> Self {
        self.history = Some((max_len, max_age));
        self.group_offsets = true;
        self
    }

    /// The largest envelope this provider publishes, in bytes: set it to the Redis
    /// server's `proto-max-bulk-len` if lower than the default
    /// ([`DEFAULT_MAX_PAYLOAD`], Redis's own default), or lower to bound what one
    /// push may put on Redis. The hub's push limit becomes at most this, less room for
    /// the envelope; a larger message fails with `GroupError::TooLarge`
    /// (`OUT_OF_RANGE`). At least 64 KiB.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Trusts the CA certificate(s) `pem` (PEM) for TLS instead of the system's trust
    /// store: for a Redis whose certificate a private CA signed. Needs `rediss://`
    /// addresses. Without it, `rediss://` checks the server against the system's
    /// roots. The server's name in the URL must match its certificate.
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root = Some(pem.into());
        self
    }

    /// Presents this client certificate and key (PEM) to a Redis that asks for one
    /// (mutual TLS, `tls-auth-clients yes`). Needs `rediss://` addresses.
    pub fn tls_client_certificate(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls_client = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The most commands in one pipeline. Default 128.
    pub fn max_batch(mut self, commands: usize) -> Self {
        self.max_batch = commands;
        self
    }

    /// Validates the options. Opens no connection: each hub connects when bound.
    pub fn build(self) -> Result<RedisProvider, ConnectError> {
        let parse = |url: &str| {
            redis::IntoConnectionInfo::into_connection_info(url).map_err(|source| {
                ConnectError::InvalidAddress {
                    address: url.to_owned(),
                    source,
                }
            })
        };
        let tls = (self.tls_root.is_some() || self.tls_client.is_some()).then(|| {
            redis::TlsCertificates {
                client_tls: self.tls_client.clone().map(|(client_cert, client_key)| {
                    redis::ClientTlsConfig {
                        client_cert,
                        client_key,
                    }
                }),
                root_cert: self.tls_root.clone(),
            }
        });
        // Applies the certificates to one address (which must be `rediss://`).
        let with_tls = |info: redis::ConnectionInfo| -> Result<_, ConnectError> {
            let Some(certs) = &tls else { return Ok(info) };
            let shown = info.addr().to_string();
            redis::Client::build_with_tls(info, certs.clone())
                .map(|c| c.get_connection_info().clone())
                .map_err(|e| {
                    ConnectError::InvalidOption(format!("TLS certificates for {shown}: {e}"))
                })
        };
        let deployment = match self.source.ok_or(ConnectError::NoAddress)? {
            Source::Url(url) => Deployment::Single(resp3(with_tls(parse(&url)?)?)),
            Source::Client(client) => {
                Deployment::Single(resp3(with_tls(client.get_connection_info().clone())?))
            }
            Source::Cluster(nodes) if nodes.is_empty() => return Err(ConnectError::NoAddress),
            Source::Cluster(nodes) => Deployment::Cluster(
                nodes
                    .iter()
                    .map(|n| Ok(resp3(with_tls(parse(n)?)?)))
                    .collect::<Result<_, ConnectError>>()?,
                tls.clone(),
            ),
        };
        if deployment.is_tls() {
            // rustls needs a crypto provider: ring, unless the application installed
            // another one first (then this does nothing).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let invalid = |m: &str| Err(ConnectError::InvalidOption(m.to_owned()));
        if self.sharded && !matches!(deployment, Deployment::Cluster(..)) {
            return invalid(
                "sharded pub/sub needs Redis Cluster: give the nodes with `cluster(..)`",
            );
        }
        if self.prefix.is_empty()
            || self
                .prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
        {
            return invalid("the prefix must be non-empty, without whitespace, '{' or '}'");
        }
        let zero = Duration::ZERO;
        if self.command_timeout == zero
            || self.publish_timeout == zero
            || self.connect_timeout == zero
        {
            return invalid("timeouts must be positive");
        }
        if self.presence_ttl < Duration::from_millis(300) {
            return invalid("the presence TTL must be at least 300 ms");
        }
        let (backoff_min, backoff_max) = self.backoff;
        if backoff_min == zero || backoff_max < backoff_min {
            return invalid("the reconnect backoff needs 0 < min <= max");
        }
        if self.publish_queue == 0 || self.max_batch == 0 {
            return invalid("the publish queue and batch size must be at least 1");
        }
        if self.max_payload < 64 * 1024 {
            return invalid("the largest payload must be at least 64 KiB");
        }
        let history = match self.history {
            Some((max_len, max_age)) if max_len == 0 || max_age < Duration::from_millis(1) => {
                return invalid(
                    "the history needs a length of at least 1 and an age of at least 1 ms",
                );
            }
            Some((max_len, max_age)) => Some(HistoryLimits { max_len, max_age }),
            None => None,
        };
        let config = Arc::new(Config {
            deployment,
            sharded: self.sharded,
            prefix: self.prefix,
            command_timeout: self.command_timeout,
            publish_timeout: self.publish_timeout,
            connect_timeout: self.connect_timeout,
            presence_ttl: self.presence_ttl,
            backoff_min,
            backoff_max,
            publish_queue: self.publish_queue,
            max_batch: self.max_batch,
            confirm_publishes: self.confirm_publishes,
            max_payload: self.max_payload,
            group_offsets: self.group_offsets || history.is_some(),
            history,
        });
        Ok(RedisProvider {
            wire: Arc::new(wire::Wire::new(config.clone())),
            config,
        })
    }

    /// Validates the options and checks that Redis answers (a connection and a
    /// `PING`), so a wrong address fails at start-up rather than at the first join.
    pub async fn connect(self) -> Result<RedisProvider, ConnectError> {
        let provider = self.build()?;
        let cfg = &provider.config;
        let address = cfg.deployment.describe();
        let check = async {
            let conn = conn::open(
                &cfg.deployment,
                cfg.connect_timeout,
                |_: redis::PushInfo| Ok::<(), ()>(()),
            )
            .await?;
            conn.ping().await
        };
        match tokio::time::timeout(cfg.connect_timeout + cfg.command_timeout, check).await {
            Ok(Ok(())) => Ok(provider),
            Ok(Err(source)) => Err(ConnectError::Unreachable { address, source }),
            Err(_) => Err(ConnectError::Timeout {
                address,
                after: cfg.connect_timeout + cfg.command_timeout,
            }),
        }
    }
}
