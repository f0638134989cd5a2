use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::{
    ConnectionId, Destination, GroupName, HubMetrics, InvalidGroupName, LocalGroups, MemberInfo,
    NodeId,
};

/// A boxed, sendable future, as the object-safe provider traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a group operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The group name is not valid.
    #[error(transparent)]
    InvalidName(#[from] InvalidGroupName),
    /// The connection is not connected (to this server, or, with a backplane, to any).
    #[error("connection {0} is not connected")]
    NotConnected(ConnectionId),
    /// The backplane could not be reached or refused the operation.
    #[error("{backplane} backplane unavailable: {message}")]
    Unavailable {
        /// Which backplane ("redis", "nats").
        backplane: &'static str,
        /// What failed.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The message is larger than the backplane carries (e.g. NATS `max_payload`).
    /// Not retryable: the same push fails again.
    #[error("{backplane} backplane carries at most {max} bytes; this message has {size}")]
    TooLarge {
        /// Which backplane.
        backplane: &'static str,
        /// The message's size, in bytes.
        size: usize,
        /// The backplane's limit, in bytes.
        max: usize,
    },
    /// The backplane did not answer in time.
    #[error("{backplane} backplane timed out after {after:?} ({op})")]
    Timeout {
        /// Which backplane.
        backplane: &'static str,
        /// The operation.
        op: &'static str,
        /// The time limit.
        after: Duration,
    },
}

impl GroupError {
    /// An [`GroupError::Unavailable`] with its source.
    pub fn unavailable(
        backplane: &'static str,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        GroupError::Unavailable {
            backplane,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl From<GroupError> for tonic::Status {
    fn from(e: GroupError) -> Self {
        let code = match &e {
            GroupError::InvalidName(_) => tonic::Code::InvalidArgument,
            GroupError::NotConnected(_) => tonic::Code::NotFound,
            GroupError::Unavailable { .. } => tonic::Code::Unavailable,
            GroupError::Timeout { .. } => tonic::Code::Unavailable,
            // The size is past what this deployment carries: retrying cannot help.
            GroupError::TooLarge { .. } => tonic::Code::OutOfRange,
        };
        tonic::Status::new(code, e.to_string())
    }
}

/// Awaits `fut` for at most `after`; past that, [`GroupError::Timeout`] for `op` on
/// `backplane`. The time limit of the backplanes' operations.
pub async fn deadline<T>(
    backplane: &'static str,
    op: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T, GroupError>>,
) -> Result<T, GroupError> {
    tokio::time::timeout(after, fut).await.unwrap_or_else(|_| {
        Err(GroupError::Timeout {
            backplane,
            op,
            after,
        })
    })
}

/// Members of a group lost because their server died (crashed, or cut off from the
/// backplane for longer than its presence lives), as a backplane reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembersLost {
    /// The group.
    pub group: GroupName,
    /// The server that died.
    pub server: NodeId,
    /// Its members of the group, sorted by connection id.
    pub members: Vec<MemberInfo>,
}

/// Where a backplane reports what happened on other servers that the hub should
/// hear about. Cheap to clone.
#[derive(Clone)]
pub struct BackplaneEvents {
    /// Called with each loss; must not block (the runtime spawns the hub's hook).
    lost: Arc<dyn Fn(MembersLost) + Send + Sync>,
    /// Called with each command for local connections (`crate::emit`).
    pub(crate) commands: crate::emit::CommandHook,
    /// Called with asks, answers, dead servers and a lost link (`crate::ask`).
    pub(crate) asks: crate::ask::AskHook,
}

impl BackplaneEvents {
    /// Events handed to `on_lost`, which must return quickly.
    pub fn new(on_lost: impl Fn(MembersLost) + Send + Sync + 'static) -> Self {
        BackplaneEvents {
            lost: Arc::new(on_lost),
            commands: Default::default(),
            asks: Default::default(),
        }
    }

    /// Events nobody listens to.
    pub fn ignored() -> Self {
        Self::new(|_| {})
    }

    /// Reports members lost with their server. Report a loss only once it is visible
    /// in counts and member lists, so a hook that asks sees them gone.
    pub fn members_lost(&self, lost: MembersLost) {
        if !lost.members.is_empty() {
            (self.lost)(lost);
        }
    }
}

impl Default for BackplaneEvents {
    fn default() -> Self {
        Self::ignored()
    }
}

impl std::fmt::Debug for BackplaneEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackplaneEvents")
    }
}

/// What a provider gets when a hub is bound to it.
#[derive(Clone, Debug)]
pub struct BindContext {
    /// The hub's full service name, e.g. `chat.v1.ChatHub` (a default channel prefix).
    pub hub: &'static str,
    /// The hub's local members on this server: deliver received envelopes here.
    pub local: Arc<LocalGroups>,
    /// The hub's counters: count backplane failures here.
    pub metrics: Arc<HubMetrics>,
    /// Where to report members lost with their server.
    pub events: BackplaneEvents,
}

/// Where a hub's groups live: in this process only, or shared with other servers
/// through a backplane. Chosen per hub when the hub service is built; a server-wide
/// default can be set (`hub_server::Hubs`).
///
/// A provider may be shared by several hubs (one Redis connection, say); it is bound
/// once per hub.
pub trait GroupProvider: Send + Sync + 'static {
    /// A short name for logs ("memory", "redis", "nats").
    fn name(&self) -> &'static str;

    /// Binds one hub: returns the backplane its groups use.
    fn bind(&self, ctx: BindContext) -> Result<Arc<dyn Backplane>, GroupError>;

    /// What this provider connects to, for logs and the fingerprint of a sharded
    /// setup ([`crate::shard`]): an address without credentials. Default: the name.
    fn describe(&self) -> String {
        self.name().to_owned()
    }
}

/// The per-hub driver between this server's [`LocalGroups`] and other servers.
///
/// The runtime always does the local part itself (registry, local delivery); a
/// backplane only adds what crosses servers. Every method has a default that does
/// nothing and returns `None` ("nothing to wait for"), which is exactly the in-memory
/// behaviour, so a backplane overrides only what it needs:
///
/// - [`joined`](Backplane::joined) / [`left`](Backplane::left): subscribe to a group's
///   channel on its first local member, unsubscribe on its last, keep presence;
/// - [`publish`](Backplane::publish): send one encoded frame to the other servers;
/// - [`member_count`](Backplane::member_count) / [`members`](Backplane::members):
///   answer for every server.
///
/// Frames received from other servers go to [`LocalGroups::deliver`] /
/// [`LocalGroups::deliver_to`] of the [`BindContext`].
pub trait Backplane: Send + Sync + 'static {
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;

    /// A local connection joined `group`; `first` when it is the group's first member here.
    ///
    /// `first` (and `last` in [`left`](Backplane::left)) are hints: the join and the
    /// leave of one group by two connections run concurrently and may reach the
    /// backplane in either order, so a backplane that subscribes keeps its own record
    /// of what it is subscribed to.
    fn joined<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        first: bool,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let _ = (group, member, first);
        None
    }

    /// A local connection left `group` (or disconnected); `last` when no member is left here.
    fn left<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        last: bool,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let _ = (group, member, last);
        None
    }

    /// Sends an encoded push frame to what `dest` selects on the other servers. The
    /// runtime has already delivered to this server's connections.
    fn publish<'a>(
        &'a self,
        dest: &'a Destination,
        frame: &'a Bytes,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let _ = (dest, frame);
        None
    }

    /// The number of members of `group` on every server.
    fn member_count<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Result<u64, GroupError>>> {
        let _ = group;
        None
    }

    /// The largest push frame this backplane carries to other servers, in bytes,
    /// after its own overhead (e.g. NATS `max_payload` less the envelope), or `None`
    /// for no limit of its own. The hub advertises and enforces the smaller of this
    /// and its own limit; a message still too large (a long target list) fails with
    /// [`GroupError::TooLarge`].
    fn max_frame_bytes(&self) -> Option<usize> {
        None
    }

    /// The members of `group` on every server.
    fn members<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Result<Vec<MemberInfo>, GroupError>>> {
        let _ = group;
        None
    }

    /// Sends an ask to connections of server `node` (on its own channel); their
    /// answers come back to this server's channel. `None`: this backplane does not
    /// cross servers (the connections are not connected anywhere).
    fn ask<'a>(
        &'a self,
        node: NodeId,
        ids: &'a [ConnectionId],
        ask: &'a crate::proto::Ask,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let _ = (node, ids, ask);
        None
    }

    /// Sends one connection's answer to an ask back to the asking server `node`.
    fn answer<'a>(
        &'a self,
        node: NodeId,
        answer: &'a crate::proto::Answer,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let _ = (node, answer);
        None
    }

    /// The group history this backplane keeps (e.g. Redis with
    /// `RedisProviderBuilder::history`), to read a group's pushes after an offset;
    /// `None`: it keeps none.
    fn history(&self) -> Option<Arc<dyn crate::history::GroupHistory>> {
        None
    }

    /// Whether this server's pushes to `group` reach its own members through the
    /// backplane, in the group's offset order and carrying their position (a group
    /// with history): the hub then queues them to no local member itself. Default
    /// `false`.
    fn echoes_own_pushes(&self, group: &GroupName) -> bool {
        let _ = group;
        false
    }

    /// The position of `group` for a member joining it now on this server (offset
    /// and epoch: every push after it reaches the member; `(0, 0)`: before the
    /// group's first push), on a backplane with group history. `None`: no history.
    fn group_position<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Result<(u64, u64), GroupError>>> {
        let _ = group;
        None
    }

    /// Holds back this server's deliveries of `group` while a resumed session
    /// catches up on the pushes it missed ([`crate::remote::ReplayHold`]); taken
    /// before the session joins the group here. `None`: no history (the future's
    /// `None`: the group stayed busy with a gap fill).
    fn hold_group<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Option<crate::remote::ReplayHold>>> {
        let _ = group;
        None
    }

    /// Sends a command (`hub.v1.Command`) for connections of server `node`, on its
    /// own channel, as an emitter's command without a group. `None`: nothing crosses
    /// servers.
    fn command<'a>(
        &'a self,
        node: NodeId,
        ids: &'a [ConnectionId],
        command: &'a crate::proto::Command,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let _ = (node, ids, command);
        None
    }

    /// This server now holds a connection whose id names server `node` (a session
    /// restored here from another server's record): listen on `node`'s channel, so
    /// the sends, asks and commands routed there by the id reach it here. Called once
    /// per such connection, before the session is claimed, and matched by one
    /// [`release`](Backplane::release) when the connection ends here; the backplane
    /// counts them per node and unsubscribes with the last. An error refuses the
    /// restore. `None`: nothing crosses servers (no session is restored from another).
    fn adopt<'a>(&'a self, node: NodeId) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let _ = node;
        None
    }

    /// A connection [`adopt`](Backplane::adopt) counted for `node` ended here (or
    /// moved on to another server, or its restore failed).
    fn release<'a>(&'a self, node: NodeId) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let _ = node;
        None
    }

    /// Whether this backplane keeps session records, so that a session resumes on
    /// another server (the session methods below return `Some`). Default `false`.
    fn shares_sessions(&self) -> bool {
        false
    }

    /// Writes the record of a session this server holds (see
    /// [`Presence::save_session`](crate::relay::Presence::save_session)). `None`: this
    /// backplane shares no sessions (and the other session methods return `None` too).
    fn save_session<'a>(
        &'a self,
        record: &'a crate::session::SessionRecord,
        ttl: Duration,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let _ = (record, ttl);
        None
    }

    /// Takes over a session record held by `from` (see
    /// [`Presence::claim_session`](crate::relay::Presence::claim_session)).
    fn claim_session<'a>(
        &'a self,
        record: &'a crate::session::SessionRecord,
        from: NodeId,
        ttl: Duration,
    ) -> Option<BoxFuture<'a, Result<bool, GroupError>>> {
        let _ = (record, from, ttl);
        None
    }

    /// Reads the record of a session, by its connection id.
    fn load_session<'a>(
        &'a self,
        connection: ConnectionId,
    ) -> Option<BoxFuture<'a, Result<Option<crate::session::SessionRecord>, GroupError>>> {
        let _ = connection;
        None
    }

    /// Deletes the record of a session if `server` holds it.
    fn drop_session<'a>(
        &'a self,
        connection: ConnectionId,
        server: NodeId,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let _ = (connection, server);
        None
    }

    /// Whether server `node` is alive, as presence knows it.
    fn server_alive<'a>(&'a self, node: NodeId) -> Option<BoxFuture<'a, Result<bool, GroupError>>> {
        let _ = node;
        None
    }

    /// The hub is shutting down: stop background work, drop presence entries.
    fn shutdown(&self) -> Option<BoxFuture<'_, ()>> {
        None
    }
}

/// The backplane of the in-memory provider: nothing crosses servers.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalOnly;

impl Backplane for LocalOnly {
    fn name(&self) -> &'static str {
        "memory"
    }
}

/// The in-memory group provider (the default): groups live in this process only.
/// Right for a single server; behind a load balancer, use a Redis or NATS provider.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryProvider;

impl MemoryProvider {
    /// The in-memory provider.
    pub fn new() -> Self {
        MemoryProvider
    }
}

impl GroupProvider for MemoryProvider {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn bind(&self, _ctx: BindContext) -> Result<Arc<dyn Backplane>, GroupError> {
        Ok(Arc::new(LocalOnly))
    }
}
