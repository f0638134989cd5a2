//! The client runtime of the hub framework.
//!
//! Generated `FooHubClient` types wrap a [`HubClient`]: one `Connect` stream per
//! client, on any tonic transport (a `Channel` with TLS, interceptors, ...).
//!
//! - Calls are multiplexed on the one stream by call id; many may be in flight at
//!   once (the server runs one connection's calls in order).
//! - Each call has a timeout ([`ConnectOptions::call_timeout`], default 30 s). Calls
//!   with the default one are timed by the reader task's one timer; a call with its
//!   own timeout ([`HubClient::call_with_timeout`]) has a timer of its own.
//! - Pushes go to a receiver (the generated `FooHubReceiver` trait), called in order
//!   on the client's reader task: keep its methods quick, or forward to a channel (a
//!   slow one delays the replies behind it, and the default timeouts).
//! - The client answers server pings, pings the server itself to measure
//!   [`HubClient::latency`], and treats a server it hears nothing from as gone.
//! - [`HubClient::closed`] waits for the end of the connection and tells why.
//!
//! Errors say what went wrong in a way code can act on: see [`ClientError`].
//!
//! The files: `client.rs` (the handle, calls), `connection.rs` (the reader task),
//! `shared.rs` (what both see), `options.rs`, `error.rs`, `spec.rs` (what generated
//! code supplies).

mod client;
mod connection;
mod error;
mod link;
mod options;
mod shared;
mod spec;
mod state;
#[cfg(test)]
mod tests;

pub use client::HubClient;
pub use error::{ClientError, CloseStatus};
pub use hub_core::proto::{ConnectionInfo, ResumeOutcome};
pub use hub_core::{include_file_descriptor_set, include_proto};
pub use options::{ConnectOptions, ReconnectMode, ReconnectPolicy};
pub use spec::{ClientSpec, PushHandler, ResponseParts};
pub use state::ConnectionState;

/// What generated code names. Not a stable API for hand-written code.
#[doc(hidden)]
pub mod codegen {
    pub use crate::{
        ClientError, ClientSpec, CloseStatus, ConnectOptions, ConnectionState, HubClient,
        PushHandler, ResponseParts,
    };
    pub use hub_core::BoxFuture;
    pub use hub_core::proto as hub_v1;
    pub use prost;
    pub use prost_types;
    pub use tonic;
}
