//! NATS group provider for the hub framework: one hub's groups shared by every hub
//! server connected to the same NATS (a single `nats-server` or a cluster).
//!
//! ```no_run
//! use std::time::Duration;
//! use hub_nats::NatsProvider;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The simple form: a URL (or several, comma-separated), credentials may be inside.
//! let groups = NatsProvider::connect("nats://hub:s3cret@nats-1:4222,nats://nats-2:4222").await?;
//!
//! // Or every option of async-nats (TLS, credentials files, nkeys...) plus the
//! // provider's own settings.
//! let groups = NatsProvider::builder()
//!     .options(
//!         hub_nats::async_nats::ConnectOptions::with_user_and_password("hub".into(), "s3cret".into())
//!             .require_tls(true)
//!             .add_root_certificates("ca.pem".into()),
//!     )
//!     .subject_prefix("game")
//!     .roll_call_timeout(Duration::from_millis(300))
//!     .connect("tls://nats-1:4222")
//!     .await?;
//!
//! // Then, with hub_server: `Hubs::builder().default_groups(groups)` or
//! // `FooHubServer::builder(hub).groups(groups)`.
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! ## Subjects
//!
//! Every subject of a hub starts with its prefix `P` = `<subject prefix>.<hub full
//! name>`, by default `hub.chat.v1.ChatHub` for the hub `chat.v1.ChatHub`:
//!
//! | subject | carries | subscribed by |
//! |---|---|---|
//! | `P.g.<group token>` | `hub.v1.Envelope`: a push to a group | every server with local members of the group |
//! | `P.n.<node id>` | `hub.v1.Envelope` without a group: a push to connections of that server | that server, from start |
//! | `P.hb` | `hub.nats.v1.Heartbeat` | every server |
//! | `P.rc` | `hub.nats.v1.RollCall` (with a reply subject) | every server |
//! | `P.m.<group token>` | `hub.nats.v1.MemberChange`: a member joined or left on one server | every server with local members of the group |
//!
//! A group name becomes one subject token with [`group_token`]: ASCII letters,
//! digits, `-` and `_` stay, every other byte (`.`, `*`, `>`, `$`, `%`, bytes of
//! non-ASCII characters...) becomes `%XX` (uppercase hex), so `zone.eu/42` is
//! `P.g.zone%2Eeu%2F42` and no group name can reach another group's subject or act
//! as a wildcard. Node ids are the 16 hex digits of [`hub_core::NodeId`]. The
//! control messages are defined in `proto/hub/nats/v1/nats.proto` ([`proto`]).
//!
//! A server subscribes to a group's subject when the group's first local member
//! joins, and unsubscribes when its last local member leaves. A join returns once
//! the subscription is registered with the NATS server it is connected to (checked
//! with a round trip through that server), so a broadcast made after the join
//! returns reaches the new member. In a NATS *cluster*, another node learns of the
//! subscription a moment later (route interest propagation, normally well under a
//! millisecond); a push published through that node within that moment misses it.
//!
//! ## Envelope: encode once
//!
//! A push to a group is delivered to the local members first, then published once,
//! as a `hub.v1.Envelope` {`version` 1, `origin` this server's node id, `group`,
//! `target` (all / except / only), `frame`}: the encoded response frame, byte for
//! byte. Each server with members of the group receives it, skips it if it is its
//! own, and hands the same bytes to its members (`LocalGroups::deliver`): the
//! payload is never decoded or re-encoded. A push to connections by id
//! (`HubHandle::connection(s)`) goes to `P.n.<node>` of the server(s) holding them
//! (a connection id names its server), one publish per server. A process in another
//! language can publish to a group the same way.
//!
//! Publishing does not flush per message (async-nats batches writes); an error from
//! NATS, a publish that cannot be queued within the operation timeout, or a broken
//! connection comes back to the caller as [`GroupError`].
//!
//! ## Members across servers: the roll call
//!
//! `member_count` and `members` publish a `RollCall` on `P.rc` with a reply inbox.
//! **Every** live server answers with its local members of the group (or just their
//! number), with zero if it has none, so the asker knows when it has heard from
//! everyone: it returns as soon as every live server answered. A live server that
//! has not answered by the roll-call timeout (500 ms by default) makes the query fail
//! with [`GroupError::Unavailable`]: it may be overloaded, or NATS may be stalled, and
//! a count without its members would be a wrong answer. Alone, a server answers from
//! its own members once a round trip through NATS shows NATS answers (a stalled NATS
//! could be hiding the others).
//!
//! Live servers are known from heartbeats on `P.hb` (every 2 s by default); a server
//! silent for 3 of its intervals is presumed dead. A server starting (or
//! reconnecting) sends a `HELLO`, which every other server answers at once with a
//! heartbeat; for one roll-call timeout after that, roll calls wait their whole
//! timeout, since the list may still be incomplete. A server shutting down cleanly
//! sends a `BYE`. When this server is alone, counts come from its own members.
//!
//! **Crashed servers.** A crashed server is presumed dead once it has been silent for
//! 3 heartbeat intervals at two checks in a row, one interval apart (so 3 to 5
//! intervals after its last heartbeat: 6 to 10 s by default); until then member
//! queries fail with `Unavailable`, after that its members are no longer counted.
//! Silence may be ours: before presuming anyone dead, a server checks with a round
//! trip that NATS answers it, and after its own stall or reconnect every other server
//! gets a fresh grace period. The second check covers a stall of a whole cluster: our
//! own node may answer the round trip before the other nodes' heartbeats come
//! through the routes.
//!
//! **Members lost.** Every server with members of a group keeps who the other
//! servers' members of it are: each join and leave is announced on `P.m.<group
//! token>` (numbered per server), and a roll call seeds the list when the group is
//! subscribed. When a server is presumed dead, each server reports the dead one's
//! members of its groups to the hub (`on_members_lost`), once they no longer count.
//! A server that says `BYE` has no members left to lose.
//!
//! ## Pushing from outside the hub
//!
//! [`NatsEmitter`] publishes envelopes from a process that is not a hub server (a
//! game loop owning the game state, a worker): a push to a group (all, all except
//! some connections, only some), to a user (the group `$user/<id>`), to connections
//! (on `P.n.<node id>` of their server), and the commands (the envelope's `command`):
//! disconnect a user or a connection with a reason, remove a user from a group.
//! Wrap it in the hub's generated emitter (`ChatHubEmitter::new(NatsEmitter::new(&provider))`)
//! for typed pushes. Each is one publish; while NATS is down it fails at once. The
//! wire, for publishers in other languages, is in the README ("Pushing from outside
//! the hub").
//!
//! ## Sessions on another server
//!
//! A hub that keeps sessions (`HubConfig::sessions`) writes the record of each
//! session it holds (`hub.v1.SessionRecord`: connection id, identity, groups, the
//! server holding it, a hash of the resume secret) to a JetStream key-value bucket,
//! so that a client resuming on another server gets its session back there
//! (`RESUME_OUTCOME_RESTORED`), whether the first server lives (it is told to let
//! go) or died.
//!
//! - **Where.** One bucket per hub, [`NatsProvider::sessions_bucket`]: the hub's
//!   prefix with `.` as `-`, then `-sessions` (`hub-chat-v1-ChatHub-sessions`, stream
//!   `KV_hub-chat-v1-ChatHub-sessions`), one revision per key, file storage, one
//!   replica (create it beforehand with more replicas, same name and settings, for a
//!   JetStream cluster whose nodes may fail). The key is the connection id
//!   (`<node>-<n>`). The first server that writes a record creates the bucket.
//! - **Who holds it.** A resume on another server reads the record, checks the
//!   credential and identity against it, and claims it with a compare-and-set on the
//!   entry's revision: of two servers claiming one session at once, one wins (the
//!   other answers `EXPIRED`). A server writes, rewrites or deletes a record only
//!   while it holds it (also compare-and-set).
//! - **Lifetime.** The bucket's `max_age` is the session grace plus 3 heartbeat
//!   intervals (the silence after which a server is presumed dead), set by the server
//!   that opens the bucket (servers of one hub should use the same grace and
//!   interval). Each server rewrites the records it holds at every heartbeat
//!   interval while it lives, so a record of a live server never expires; a record
//!   of a dead server expires `max_age` after its last rewrite, and a resume then
//!   answers `UNKNOWN` (the server that issued the id answers `EXPIRED`). A record is
//!   deleted when its session ends on the server holding it.
//! - **Needs JetStream** (`nats-server -js`; 2.9 or later: no per-message TTL is
//!   used). At connect the provider asks JetStream for the account's info; without
//!   JetStream every hub still works and sessions resume only on the server that
//!   held them (another answers `UNKNOWN`), and the first hub keeping sessions logs a
//!   warning once. [`NatsProviderBuilder::share_sessions`] makes JetStream required
//!   (`true`) or never used (`false`). A JetStream that answers at connect but not
//!   later (or is still electing its cluster leader) fails a resume on another server
//!   with `UNKNOWN` (the backplane unavailable), within the operation timeout: every
//!   record operation is bounded by it, and fails at once while NATS is disconnected.
//! - **Liveness** of the server holding a session (whether to tell it to let go) is
//!   what the heartbeats say: listed until presumed dead.
//!
//! # Guarantees
//!
//! - **At-most-once.** NATS core does not store messages: a push is delivered to the
//!   members connected and subscribed when it passes; nothing is replayed to a member
//!   that joins later, a server that reconnects later, or a client that reconnects.
//! - **Order.** Pushes from one sender to one group arrive in the order sent (one
//!   NATS connection, one subject, one reader per group). Pushes to a group and
//!   pushes to connections by id use different subjects: no order between them.
//! - **No silent failure.** While the connection to NATS is down, publishes, joins
//!   that need a new subscription, and member queries fail at once with
//!   [`GroupError::Unavailable`] (async-nats would otherwise buffer them and send
//!   them after a reconnect, or never, and the caller would not know); a publish that
//!   NATS does not take within the operation timeout (5 s) fails with
//!   [`GroupError::Timeout`]. The runtime counts them (`backplane_publish_failures`,
//!   `backplane_errors`). Joins of groups already subscribed, and leaves, keep
//!   working while NATS is down. A message accepted just before the connection
//!   broke may still be lost, or sent after the reconnect.
//! - **Reconnects.** async-nats reconnects by itself (forever, with backoff) and
//!   restores the subscriptions; the hub server keeps serving meanwhile. On
//!   reconnect each hub counts `backplane_reconnects`, says `HELLO` again, and checks
//!   that every group with local members is subscribed (and no other).
//! - **Counters** (on the hub's `HubMetrics`): `backplane_received` (envelopes from
//!   other servers, delivered), `backplane_malformed` (envelopes, heartbeats, roll
//!   calls or answers that could not be read; they are dropped), `backplane_errors`
//!   (heartbeats or roll-call answers not sent, NATS server errors such as a
//!   permissions violation, messages NATS dropped for a slow subscription),
//!   `backplane_reconnects`. Connection-level events (server errors, slow
//!   subscriptions) are counted in every hub bound to the provider.
//! - **Slow subscriptions.** A group's reader that falls more than
//!   `subscription_capacity` messages behind (65 536 by default, an async-nats
//!   connect option) makes async-nats drop messages for it. The drops are counted,
//!   but only approximately: async-nats reports them as events and, in a burst,
//!   drops events too. Raise `subscription_capacity` for very bursty groups.
//! - **Size.** An envelope must fit NATS' `max_payload` (1 MiB by default). The
//!   backplane tells the hub the largest frame it carries (`max_payload` less room
//!   for the envelope of a group push naming 16 connections), which the hub enforces
//!   and advertises; a message still larger fails with [`GroupError::TooLarge`]
//!   (`OUT_OF_RANGE`: not retryable).
//! - **Dropping vs. shutting down.** The runtime calls `Backplane::shutdown` on a
//!   graceful shutdown: the server says `BYE` and unsubscribes. A backplane dropped
//!   without it (or a crash) just goes silent: the others stop counting its members
//!   at once and forget it after 3 to 5 heartbeat intervals.
//!
//! # Options
//!
//! [`NatsProvider::connect`] takes one or more URLs, comma-separated:
//! `nats://host:port`, `nats://user:password@host:port` (user and password),
//! `nats://token@host:port` (a token), `tls://host:port` (TLS required). Credentials
//! in a URL are percent-decoded and used for every server of the list.
//! [`NatsProvider::builder`] takes any [`async_nats::ConnectOptions`] (re-exported as
//! [`hub_nats::async_nats`](async_nats); TLS
//! certificates, credentials files, nkeys, JWT, custom inbox prefix...) and the
//! provider's settings: the subject prefix, heartbeat interval, roll-call timeout,
//! operation timeout, and whether sessions are shared
//! ([`NatsProviderBuilder::share_sessions`]). The provider installs its own event callback on the
//! options (to see reconnects); use [`NatsProviderBuilder::on_event`] to get the
//! events too. Do not set `no_echo`: the provider checks that a subscription is
//! registered by sending a message to itself, so every join would time out.
//!
//! **Permissions.** With NATS authorization, the provider's user must be allowed to
//! publish and subscribe on `<subject prefix>.>` (`hub.>` by default) and on its inbox
//! prefix (`_INBOX.>` by default, see `ConnectOptions::custom_inbox_prefix`); to
//! share sessions, also to publish on `$JS.API.>` and `$KV.<bucket>.>` (see
//! [`NatsProvider::sessions_bucket`]).
//!
//! One provider (one NATS connection) may serve several hubs; each gets its own
//! subjects. [`NatsProvider::client`] gives the connection for the application's
//! own use.

mod adopted;
mod backplane;
mod emitter;
mod groups;
mod history;
mod members;
mod peers;
mod roll_call;
mod sessions;
mod state;
mod subject;
mod tasks;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerAddr};
use hub_core::{Backplane, BindContext, GroupError, GroupName, GroupProvider};
use tokio::sync::broadcast;

pub use emitter::{NatsEmitter, STALL_PROBE_INTERVAL};
pub use subject::{DEFAULT_PREFIX, decode_group_token, group_token};

/// The async-nats crate this provider is built on, for [`async_nats::ConnectOptions`]
/// and [`NatsProvider::client`] without a separate (and possibly mismatched) dependency.
pub use async_nats;

/// The provider's control messages (`hub.nats.v1`), from `proto/hub/nats/v1/nats.proto`.
pub mod proto {
    #![allow(missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/hub.nats.v1.rs"));
}

/// The backplane name in errors and logs.
pub(crate) const BACKPLANE: &str = "nats";

/// Default interval between heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Default longest wait for roll-call answers.
pub const DEFAULT_ROLL_CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// Default time limit of one NATS operation (a publish, a subscribe round trip).
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// The NATS ping interval of [`NatsProvider::connect`] (async-nats' own default is
/// 60 s): a dead connection is noticed after two unanswered pings.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);

/// Why the provider could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No server URL was given.
    #[error("no NATS server URL given")]
    NoServers,
    /// A server URL could not be read.
    #[error("invalid NATS server URL {url:?}: {source}")]
    InvalidUrl {
        /// The URL, credentials hidden.
        url: String,
        /// What is wrong with it.
        #[source]
        source: std::io::Error,
    },
    /// The subject prefix is not usable.
    #[error(
        "invalid subject prefix {0:?}: use one or more '.'-separated tokens of ASCII letters, digits, '-' and '_'"
    )]
    InvalidPrefix(String),
    /// An option is out of range or inconsistent.
    #[error("invalid NATS provider option: {0}")]
    InvalidOption(String),
    /// [`NatsProviderBuilder::share_sessions`] asked for shared sessions and the NATS
    /// server has no JetStream for this account.
    #[error("cannot share sessions over NATS at {servers}: {reason}")]
    NoJetStream {
        /// The servers, credentials hidden.
        servers: String,
        /// What JetStream answered.
        reason: String,
    },
    /// Connecting failed (unreachable, refused, authentication, TLS...).
    #[error("cannot connect to NATS at {servers}: {source}")]
    Connect {
        /// The servers tried, credentials hidden.
        servers: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
}

impl From<ConnectError> for GroupError {
    fn from(e: ConnectError) -> Self {
        GroupError::Unavailable {
            backplane: BACKPLANE,
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

/// The provider's settings.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The first part of every subject (the hub's full name follows).
    pub(crate) prefix: String,
    /// Interval between heartbeats.
    pub(crate) heartbeat: Duration,
    /// Longest wait for roll-call answers.
    pub(crate) roll_call_timeout: Duration,
    /// Time limit of one NATS operation.
    pub(crate) op_timeout: Duration,
    /// Group history kept in JetStream: the most messages per group, their age.
    pub(crate) history: Option<(usize, Duration)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            prefix: DEFAULT_PREFIX.to_owned(),
            heartbeat: DEFAULT_HEARTBEAT_INTERVAL,
            roll_call_timeout: DEFAULT_ROLL_CALL_TIMEOUT,
            op_timeout: DEFAULT_OPERATION_TIMEOUT,
            history: None,
        }
    }
}

/// What every hub bound to one provider shares.
pub(crate) struct ProviderShared {
    /// The NATS connection.
    pub(crate) client: async_nats::Client,
    /// Settings.
    pub(crate) config: Arc<Config>,
    /// Connection events, for each bound hub's control task.
    pub(crate) events: broadcast::Sender<Event>,
    /// The servers, credentials hidden (for `Debug` and `describe`).
    pub(crate) servers: String,
    /// Whether hubs share session records through JetStream.
    pub(crate) sessions: SharedSessions,
}

/// Whether a provider's hubs share session records (JetStream KV).
#[derive(Debug)]
pub(crate) enum SharedSessions {
    /// Yes.
    On,
    /// No: [`NatsProviderBuilder::share_sessions`] said so.
    Off,
    /// No: JetStream was not there at connect.
    Missing(Arc<MissingJetStream>),
}

/// Why JetStream was not there at connect; said once, by the first hub that keeps
/// sessions.
#[derive(Debug)]
pub(crate) struct MissingJetStream {
    /// What JetStream answered.
    pub(crate) reason: String,
    /// Whether a hub said it.
    pub(crate) warned: std::sync::atomic::AtomicBool,
}

/// Groups shared by every hub server connected to one NATS (server or cluster).
///
/// Cheap to clone; clones share the connection. See the [crate docs](crate) for the
/// subjects, the envelope, the roll call and the guarantees.
#[derive(Clone)]
pub struct NatsProvider {
    shared: Arc<ProviderShared>,
}

impl fmt::Debug for NatsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsProvider")
            .field("servers", &self.shared.servers)
            .field("prefix", &self.shared.config.prefix)
            .field("state", &self.shared.client.connection_state())
            .finish()
    }
}

impl NatsProvider {
    /// Connects to NATS at `urls` (one URL, or several comma-separated) with the
    /// default settings. See the [crate docs](crate#options) for the URL forms.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), hub_nats::ConnectError> {
    /// let groups = hub_nats::NatsProvider::connect("nats://127.0.0.1:4222").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(urls: &str) -> Result<Self, ConnectError> {
        Self::builder().connect(urls).await
    }

    /// A builder, to pass [`async_nats::ConnectOptions`] or change the provider's settings.
    pub fn builder() -> NatsProviderBuilder {
        NatsProviderBuilder::default()
    }

    /// The NATS connection, for the application's own use.
    pub fn client(&self) -> &async_nats::Client {
        &self.shared.client
    }

    /// The prefix of every subject of the hub named `hub` (e.g. `hub.chat.v1.ChatHub`).
    pub fn hub_prefix(&self, hub: &str) -> String {
        format!("{}.{hub}", self.shared.config.prefix)
    }

    /// The JetStream KV bucket of the session records of the hub named `hub`: its
    /// [hub prefix](NatsProvider::hub_prefix) with `.` as `-` (`-` and `_` escaped as
    /// `_D` and `__`), then `-sessions`, e.g. `hub-chat-v1-ChatHub-sessions`. Its keys
    /// are connection ids, its values `hub.v1.SessionRecord`s (see the
    /// [crate docs](crate#sessions-on-another-server)).
    pub fn sessions_bucket(&self, hub: &str) -> String {
        sessions::bucket_name(&self.hub_prefix(hub))
    }

    /// Whether the hubs bound to this provider share session records (JetStream
    /// answered at connect, unless [`NatsProviderBuilder::share_sessions`] said no).
    pub fn shares_sessions(&self) -> bool {
        matches!(self.shared.sessions, SharedSessions::On)
    }

    /// The subject a hub's group is published on: `<hub prefix>.g.<group token>`.
    /// For tools and processes in other languages that publish to a group.
    pub fn group_subject(&self, hub: &str, group: &GroupName) -> String {
        format!("{}.g.{}", self.hub_prefix(hub), group_token(group.as_str()))
    }
}

impl GroupProvider for NatsProvider {
    fn name(&self) -> &'static str {
        BACKPLANE
    }

    fn bind(&self, ctx: BindContext) -> Result<Arc<dyn Backplane>, GroupError> {
        Ok(backplane::bind(&self.shared, ctx)?)
    }

    fn describe(&self) -> String {
        self.shared.servers.clone()
    }
}

/// A callback for NATS connection events.
type EventHook = Arc<dyn Fn(&Event) + Send + Sync>;

/// Builds a [`NatsProvider`]: connect options and the provider's settings.
#[derive(Default)]
pub struct NatsProviderBuilder {
    options: Option<ConnectOptions>,
    config: Config,
    on_event: Option<EventHook>,
    sessions: Option<bool>,
}

impl fmt::Debug for NatsProviderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsProviderBuilder")
            .field("options", &self.options)
            .field("config", &self.config)
            .field("sessions", &self.sessions)
            .finish()
    }
}

impl NatsProviderBuilder {
    /// The async-nats connect options: authentication (user and password, token,
    /// nkey, JWT, credentials file), TLS, timeouts, reconnect policy, inbox prefix...
    /// Without this, [`ConnectOptions::new`] with a ping interval of
    /// [`DEFAULT_PING_INTERVAL`]. The provider replaces any event callback set here
    /// (see [`NatsProviderBuilder::on_event`]); do not set `no_echo`.
    pub fn options(mut self, options: ConnectOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// The first part of every subject: a hub's subjects are
    /// `<prefix>.<hub full name>.…`. Default [`DEFAULT_PREFIX`] (`hub`). One or more
    /// `.`-separated tokens of ASCII letters, digits, `-` and `_`; checked by
    /// [`NatsProviderBuilder::connect`]. Servers of one deployment must use the same.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.prefix = prefix.into();
        self
    }

    /// How often each server announces itself. A server silent for 3 intervals is
    /// presumed dead. Default [`DEFAULT_HEARTBEAT_INTERVAL`] (2 s).
    pub fn heartbeat_interval(mut self, every: Duration) -> Self {
        self.config.heartbeat = every;
        self
    }

    /// The longest a member query (`member_count`, `members`) waits for the other
    /// servers' answers. A query returns as soon as every live server answered; when
    /// one does not answer within this (crashed, overloaded, or NATS stalled) it fails
    /// with `Unavailable`, until that server is presumed dead. Also the bound of the
    /// round trip that checks NATS answers before a server is presumed dead.
    /// Default [`DEFAULT_ROLL_CALL_TIMEOUT`] (500 ms).
    pub fn roll_call_timeout(mut self, timeout: Duration) -> Self {
        self.config.roll_call_timeout = timeout;
        self
    }

    /// The time limit of one NATS operation: queueing a publish, the round trip of a
    /// new subscription. Default [`DEFAULT_OPERATION_TIMEOUT`] (5 s).
    ///
    /// This and the other durations must be at least 10 ms.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.config.op_timeout = timeout;
        self
    }

    /// Also calls `hook` with every NATS connection event (connected, disconnected,
    /// errors...). Keep it quick: it runs on async-nats' event task.
    pub fn on_event(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(hook));
        self
    }

    /// Whether hubs keeping sessions share their records through JetStream, so that a
    /// session resumes on another server (`RESUME_OUTCOME_RESTORED`). By default, if
    /// JetStream answers at connect: a NATS without JetStream still serves every hub,
    /// sessions then resume only on the server that held them (another answers
    /// `UNKNOWN`), and the first hub that keeps sessions logs a warning saying so.
    /// `true`: [`NatsProviderBuilder::connect`] fails
    /// ([`ConnectError::NoJetStream`]) without JetStream. `false`: JetStream is never
    /// used.
    pub fn share_sessions(mut self, share: bool) -> Self {
        self.sessions = Some(share);
        self
    }

    /// Keeps each group's recent pushes in JetStream, so that a server that misses
    /// some (its subscription cut, a reconnect, a slow consumer's dropped messages)
    /// delivers them from there, in order, before anything later, and a session
    /// resumed on another server gets the group pushes it missed. Default off.
    ///
    /// Each hub gets a stream `<prefix>-<hub>-history` (named like the sessions
    /// bucket: `.` → `-`, `-` → `_D`, `_` → `__`) capturing its group subjects
    /// `<prefix>.<hub>.g.>`, at most `max_len` messages per group and none older than
    /// `max_age`, with direct gets, republishing every stored message to
    /// `<prefix>.<hub>.h.<group token>` with its stream sequence (`Nats-Sequence`)
    /// and the group's previous one (`Nats-Last-Sequence`): servers subscribe to
    /// those instead of the group subjects, and number each group's pushes by them
    /// (the group offsets are the stream's sequences, shared by the hub's groups: not
    /// contiguous per group; a gap shows as a `Nats-Last-Sequence` above the last
    /// sequence delivered). The epoch is a hash of the stream's creation time.
    /// A group push is a JetStream publish waiting for its ack (an error if the
    /// stream did not store it). Missed messages are read by direct gets
    /// (`next_by_subj`), one request per message, within the operation timeout.
    ///
    /// Needs JetStream with RePublish (nats-server 2.9 or later):
    /// [`NatsProviderBuilder::connect`] fails ([`ConnectError::NoJetStream`])
    /// without it. Every server and emitter of a hub must agree on it (without it a
    /// server listens on the group subjects, which the stream does not republish
    /// to). `max_len` at least 1, `max_age` at least 1 ms.
    pub fn history(mut self, max_len: usize, max_age: Duration) -> Self {
        self.config.history = Some((max_len.max(1), max_age.max(Duration::from_millis(1))));
        self
    }

    /// Checks the settings and connects to `urls` (one URL, or several comma-separated).
    pub async fn connect(self, urls: &str) -> Result<NatsProvider, ConnectError> {
        if !subject::valid_prefix(&self.config.prefix) {
            return Err(ConnectError::InvalidPrefix(self.config.prefix));
        }
        for (d, what) in [
            (
                self.config.heartbeat,
                "the heartbeat interval must be at least 10 ms",
            ),
            (
                self.config.roll_call_timeout,
                "the roll-call timeout must be at least 10 ms",
            ),
            (
                self.config.op_timeout,
                "the operation timeout must be at least 10 ms",
            ),
        ] {
            if d < Duration::from_millis(10) {
                return Err(ConnectError::InvalidOption(what.to_owned()));
            }
        }
        let servers = parse_servers(urls)?;
        let shown = servers
            .addrs
            .iter()
            .map(ServerAddr::as_url_str)
            .collect::<Vec<_>>()
            .join(",");
        let mut options = self
            .options
            .unwrap_or_else(|| ConnectOptions::new().ping_interval(DEFAULT_PING_INTERVAL));
        match servers.auth {
            Some(UrlAuth::UserPassword(user, password)) => {
                options = options.user_and_password(user, password)
            }
            Some(UrlAuth::Token(token)) => options = options.token(token),
            None => {}
        }
        let (events, _) = broadcast::channel(64);
        let tx = events.clone();
        let hook = self.on_event;
        let options = options.event_callback(move |event| {
            let tx = tx.clone();
            let hook = hook.clone();
            async move {
                if let Some(hook) = &hook {
                    hook(&event);
                }
                // No receiver (no hub bound yet) is fine.
                let _ = tx.send(event);
            }
        });
        let client =
            options
                .connect(servers.addrs)
                .await
                .map_err(|source| ConnectError::Connect {
                    servers: shown.clone(),
                    source,
                })?;
        tracing::info!(servers = %shown, prefix = %self.config.prefix, "connected to NATS");
        if self.config.history.is_some()
            && let Err(reason) = sessions::probe(&client, self.config.op_timeout).await
        {
            return Err(ConnectError::NoJetStream {
                servers: shown,
                reason,
            });
        }
        let sessions = match self.sessions {
            Some(false) => SharedSessions::Off,
            wanted => match sessions::probe(&client, self.config.op_timeout).await {
                Ok(()) => SharedSessions::On,
                Err(reason) if wanted == Some(true) => {
                    return Err(ConnectError::NoJetStream {
                        servers: shown,
                        reason,
                    });
                }
                Err(reason) => {
                    tracing::debug!(%reason, "no JetStream: session records are not shared");
                    SharedSessions::Missing(Arc::new(MissingJetStream {
                        reason,
                        warned: std::sync::atomic::AtomicBool::new(false),
                    }))
                }
            },
        };
        Ok(NatsProvider {
            shared: Arc::new(ProviderShared {
                client,
                config: Arc::new(self.config),
                events,
                servers: shown,
                sessions,
            }),
        })
    }
}

/// Credentials found in a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

/// Server addresses with the credentials taken out.
#[derive(Debug)]
struct Servers {
    addrs: Vec<ServerAddr>,
    auth: Option<UrlAuth>,
}

/// Reads a comma-separated list of server URLs. async-nats ignores credentials in
/// URLs, so they are taken out here (and passed as options) and kept out of logs.
fn parse_servers(urls: &str) -> Result<Servers, ConnectError> {
    let mut addrs = Vec::new();
    let mut auth = None;
    for raw in urls.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let invalid = |source| ConnectError::InvalidUrl {
            url: redact(raw),
            source,
        };
        let addr: ServerAddr = raw.parse().map_err(invalid)?;
        let mut url = addr.into_inner();
        let user = percent_decode(url.username());
        let password = url.password().map(percent_decode);
        if !user.is_empty() && auth.is_none() {
            auth = Some(match password {
                Some(p) => UrlAuth::UserPassword(user, p),
                None => UrlAuth::Token(user),
            });
        }
        let _ = url.set_username("");
        let _ = url.set_password(None);
        addrs.push(ServerAddr::from_url(url).map_err(invalid)?);
    }
    if addrs.is_empty() {
        return Err(ConnectError::NoServers);
    }
    Ok(Servers { addrs, auth })
}

/// Hides what sits between `://` and `@`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        (None, Some(at)) => format!("***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

/// Decodes `%XX` escapes (as URLs carry user names and passwords).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
