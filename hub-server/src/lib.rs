//! The server side of the hub framework.
//!
//! A hub is defined in `.proto` (see `hub-build`); the generated `FooHubServer`
//! wraps a [`HubService`], an ordinary tonic service:
//!
//! ```ignore
//! tonic::transport::Server::builder()
//!     .layer(my_auth_layer)
//!     .add_service(ChatHubServer::new(MyChat::default()))
//!     .add_service(other_grpc_service)
//!     .serve(addr)
//!     .await?;
//! ```
//!
//! # How a connection runs
//!
//! - Each `Connect` stream is one connection with a [`hub_core::ConnectionId`]. The first
//!   frame the server sends is `ServerControl.hello` (`hub.v1.ConnectionInfo`).
//! - **Calls from one connection run one at a time, in arrival order.** A handler that
//!   awaits something slow (a database, a long game action) holds back that
//!   connection's later calls, never other connections' calls, and never its
//!   heartbeats or pushes to it (they are read and written by the connection task
//!   meanwhile). Up to [`HubConfig::max_queued_calls`] calls wait; one more gets an
//!   error frame at once. For long work, spawn a task and push the result later.
//! - **Asks** (a proto's `oneof answer`, see `hub-build`): a call may ask connections
//!   and wait for their answers ([`Push::ask_frame`], typed per ask). Answers are read
//!   by each connection's reader like pongs, never queued behind its calls. While a
//!   call waits on an answer from its own caller, that call is parked and the
//!   connection runs its next calls (the client may need one to answer); the parked
//!   call's reply may then come after theirs. See the README, "Asking clients".
//! - A call with `id` 0 is fire-and-forget: no reply, but a failure still comes back
//!   as an error frame with `id` 0, scope `CALL` and the call case's field number
//!   (`hub.v1.CallError`), which tells it from a frame the server could not read
//!   (scope `FRAME`).
//! - Each connection's request frames are rate-limited ([`HubConfig::inbound_calls`],
//!   [`HubConfig::inbound_bytes`]); a client going on past the limits is closed
//!   ([`HubConfig::flood_refusals`]).
//! - Replies and errors carry the call's `id`; pushes carry `id` 0 and a
//!   per-connection `seq` (1, 2, 3...).
//!
//! # Delivery and backpressure
//!
//! A push is encoded once; the same bytes go to every local member's outbound queue
//! without waiting. Each queue has a budget in pushes and bytes
//! ([`HubConfig::outbound_queue`], [`HubConfig::outbound_queue_bytes`]) and all queues
//! of a server a total ([`HubsBuilder::max_outbound_bytes`]). Over its budget, the
//! [`hub_core::SlowConsumerPolicy`] applies (default: that client is disconnected with
//! `RESOURCE_EXHAUSTED` if it stays over for [`HubConfig::slow_consumer_grace`] or
//! reaches twice the budget), and it is counted in [`HubMetrics`]; other members are
//! not slowed. Replies are backpressure: while a connection's replies wait, its next
//! calls are not read. Live delivery is at-most-once; pushes from one sender to one
//! group arrive in order.
//!
//! # Pushes and commands from outside the hub
//!
//! With a backplane, a process that is not a hub server pushes to connections too
//! (a generated `FooHubEmitter` on `hub_redis::RedisEmitter` or
//! `hub_nats::NatsEmitter`, or any process publishing `hub.v1.Envelope`s), and sends
//! commands: this server closes its selected connections as [`Context::close`] does,
//! or removes them from a group (registry, backplane) and runs the hub's
//! `on_removed` hook ([`MembersRemoved`]).
//!
//! # Liveness and shutdown
//!
//! The server pings every [`HubConfig::heartbeat_interval`] and closes a connection
//! it heard nothing from for [`HubConfig::heartbeat_timeout`] (this catches dead
//! peers behind proxies that answer HTTP/2 pings themselves). [`Hubs::shutdown`]
//! drains every connection: queued frames, a `Goodbye` with the reason, status
//! `UNAVAILABLE`.
//!
//! # Serving on the internet
//!
//! [`transport::Transport`] builds the `tonic::transport::Server` and the accept
//! loop with limits for untrusted clients: a handshake and idle timeout for
//! connections without requests, HTTP/2 keepalive, a cap on concurrent streams per
//! connection, and an accept loop that backs off when out of file descriptors.
//!
//! [`HubMetrics`]: hub_core::HubMetrics

mod ask;
mod ask_table;
mod config;
mod connection;
mod context;
mod dispatch;
mod error;
mod gate;
mod hub;
pub mod identity;
mod inbound;
mod rate;
mod service;
mod session;
mod session_record;
pub mod transport;

pub use config::{DEFAULT_MAX_OUTBOUND_BYTES, HubConfig, Hubs, HubsBuilder};
pub use context::{Context, HubHandle, Push};
pub use dispatch::{Dispatch, Inbound};
pub use error::{DisconnectReason, PushError};
pub use hub_core::ask::{AskOutcome, AskReply};
pub use hub_core::emit::MembersRemoved;
pub use hub_core::quote;
pub use hub_core::{
    ConnectionId, Delivery, GroupError, GroupName, GroupProvider, InvalidGroupName, MemberInfo,
    MembersLost, MemoryProvider, MetricsSnapshot, SlowConsumerPolicy,
};
pub use hub_core::{include_file_descriptor_set, include_proto};
pub use identity::{BearerToken, FromExtensions, Identity, IdentityProvider};
pub use rate::RateLimit;
pub use service::{HubService, HubServiceBuilder, OutboundStream, ServerCodec, WriteItem};
pub use session::{
    MAX_RESUME_POSITIONS, RESUME_KEY, RESUME_POSITIONS_KEY, RESUME_SEQ_KEY, SessionConfig,
};

/// What generated code names. Not a stable API for hand-written code.
#[doc(hidden)]
pub mod codegen {
    pub use crate::GroupName;
    pub use crate::{
        ConnectionId, Delivery, DisconnectReason, GroupError, GroupProvider, HubConfig, Hubs,
        IdentityProvider, MembersLost, MembersRemoved, PushError,
    };
    pub use crate::{Context, Dispatch, HubHandle, HubService, HubServiceBuilder, Inbound, Push};
    pub use bytes::Bytes;
    pub use hub_core::BoxFuture;
    pub use hub_core::Destination;
    pub use hub_core::ask::{AskOutcome, AskReply};
    pub use hub_core::emit::{Emit, EmitPush, Emitter};
    pub use hub_core::proto as hub_v1;
    pub use prost;
    pub use prost_types;
    pub use tonic;
    pub use tower;

    /// Decodes each answered reply with `decode` (a reply that does not decode becomes
    /// `Failed` with the decoder's status).
    pub fn decode_answers<A>(
        replies: Vec<AskReply<Bytes>>,
        decode: impl Fn(Bytes) -> Result<A, tonic::Status>,
    ) -> Vec<AskReply<A>> {
        replies
            .into_iter()
            .map(|r| AskReply {
                connection: r.connection,
                user: r.user,
                outcome: match r.outcome {
                    AskOutcome::Answered(b) => match decode(b) {
                        Ok(a) => AskOutcome::Answered(a),
                        Err(s) => AskOutcome::Failed(s),
                    },
                    other => other.map(|_| unreachable!("answered is matched above")),
                },
            })
            .collect()
    }

    /// Encodes a message into a fresh buffer.
    pub fn encode<M: prost::Message>(msg: &M) -> Bytes {
        Bytes::from(msg.encode_to_vec())
    }
}
