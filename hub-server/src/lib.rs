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
//! - A call with `id` 0 is fire-and-forget: no reply, but a failure still comes back
//!   as an error frame with `id` 0.
//! - Replies and errors carry the call's `id`; pushes carry `id` 0 and a
//!   per-connection `seq` (1, 2, 3...).
//!
//! # Delivery and backpressure
//!
//! A push is encoded once; the same bytes go to every local member's bounded
//! outbound queue ([`HubConfig::outbound_queue`]) without waiting. When a queue is
//! full the [`hub_core::SlowConsumerPolicy`] applies (default: that client is
//! disconnected with `RESOURCE_EXHAUSTED`), and it is counted in [`HubMetrics`]; other
//! members are not slowed. Live delivery is at-most-once; pushes from one sender to
//! one group arrive in order.
//!
//! # Liveness and shutdown
//!
//! The server pings every [`HubConfig::heartbeat_interval`] and closes a connection
//! it heard nothing from for [`HubConfig::heartbeat_timeout`] (this catches dead
//! peers behind proxies that answer HTTP/2 pings themselves). [`Hubs::shutdown`]
//! drains every connection: queued frames, a `Goodbye` with the reason, status
//! `UNAVAILABLE`.
//!
//! [`HubMetrics`]: hub_core::HubMetrics

mod config;
mod connection;
mod context;
mod dispatch;
mod error;
mod service;

pub use config::{HubConfig, Hubs, HubsBuilder};
pub use context::{Context, HubHandle, Push};
pub use dispatch::{Dispatch, Inbound};
pub use error::{DisconnectReason, PushError};
pub use hub_core::{
    ConnectionId, Delivery, GroupError, GroupName, GroupProvider, MemberInfo, MembersLost,
    MemoryProvider, MetricsSnapshot, SlowConsumerPolicy,
};
pub use hub_core::{include_file_descriptor_set, include_proto};
pub use service::{HubService, HubServiceBuilder, OutboundStream, ServerCodec, WriteItem};

/// What generated code names. Not a stable API for hand-written code.
#[doc(hidden)]
pub mod codegen {
    pub use crate::{Context, Dispatch, HubHandle, HubService, HubServiceBuilder, Inbound, Push};
    pub use bytes::Bytes;
    pub use hub_core::BoxFuture;
    pub use hub_core::proto as hub_v1;
    pub use prost;
    pub use tonic;
    pub use tower;

    /// Encodes a message into a fresh buffer.
    pub fn encode<M: prost::Message>(msg: &M) -> Bytes {
        Bytes::from(msg.encode_to_vec())
    }
}
