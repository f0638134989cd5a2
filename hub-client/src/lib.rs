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
//! # Reconnecting and resuming
//!
//! When the stream drops (a transport error or reset, or a server it hears nothing
//! from) and the server offered a session (`resume_credential` and `session_grace_ms`
//! in the hello), the client opens a new stream on the same transport (a tonic
//! `Channel` reconnects its TCP connection by itself) and resumes: it presents
//! `hub-resume: <credential>` and `hub-resume-seq: <the seq of the last push it
//! handed to the receiver>`, and the server sends the pushes missed, in order, with
//! their `seq`. The client hands a push over only if its `seq` is above the last one,
//! so each reaches the receiver once, in order, across any number of drops.
//!
//! - **When**: [`ConnectOptions::reconnect`], a [`ReconnectPolicy`]: the mode
//!   ([`ReconnectMode::IfSession`], the default; `Always`; `Never`), the backoff
//!   (100 ms doubling to 5 s), its jitter (up to half of each delay taken off at
//!   random), `max_attempts` and `max_elapsed` (none by default). Each attempt is
//!   bounded by [`ConnectOptions::connect_timeout`]. A goodbye with `UNAVAILABLE`
//!   (the server shutting down, as in a rolling restart) is reconnected from. No
//!   reconnect after any other goodbye (the server closed the connection on
//!   purpose: a kick, a slow or flooding client), a clean end of the stream, or
//!   `UNAUTHENTICATED` / `PERMISSION_DENIED` (and `INVALID_ARGUMENT`,
//!   `UNIMPLEMENTED`; `OUT_OF_RANGE`, a frame too large): the client closes. The
//!   first stream is opened once, by [`HubClient::connect`]; its error is returned.
//! - **Where it stands**: [`ConnectionState`], from [`HubClient::state`], a
//!   `tokio::sync::watch` ([`HubClient::watch_state`]) to await changes, and
//!   [`PushHandler::on_state`] (the generated receivers' `on_connection_state`),
//!   called in order with the pushes. `Reconnecting { attempt, cause }` while
//!   between streams; then `Resumed` (the same connection, groups kept, nothing
//!   missed), or `ResyncNeeded { outcome, reason }`: the session could not be
//!   resumed (expired, unknown to a restarted server, a gap, ...), the new stream is
//!   a new connection (a new [`HubClient::connection_id`], no groups), so join
//!   again and reload what the app shows. `Closed(status)` at the end.
//! - **Calls**: a call waiting for its reply when the stream drops fails with
//!   [`ClientError::ConnectionLost`]. The server may or may not have run it, and the
//!   client never sends it again: retry it only if running it twice is harmless. A
//!   call (or [`HubClient::send`]) made while the client reconnects waits for the
//!   new stream, within the call's timeout (then `Timeout`), and is sent there once,
//!   whatever the outcome (after a `ResyncNeeded` it runs on the new connection,
//!   perhaps before the app joined again). If the client closes instead, it fails
//!   with `Disconnected`.
//! - A stream given up is never ended cleanly (a clean end ends the session on the
//!   server); dropping every clone of the client does end it cleanly, and with it
//!   the session.
//!
//! Errors say what went wrong in a way code can act on: see [`ClientError`].
//!
//! The files: `client.rs` (the handle, calls), `connection.rs` (the reader of one
//! stream), `link.rs` (opening streams, the task that reconnects), `shared.rs` (what
//! they see), `state.rs`, `options.rs`, `error.rs`, `spec.rs` (what generated code
//! supplies).

mod client;
mod connection;
mod error;
mod failover;
mod link;
mod options;
mod shared;
mod spec;
mod state;
#[cfg(test)]
mod tests;

pub use client::HubClient;
pub use error::{ClientError, CloseStatus};
pub use failover::{DIAL_TIMEOUT, Failover};
pub use hub_core::proto::{ConnectionInfo, ResumeOutcome};
pub use hub_core::{include_file_descriptor_set, include_proto};
pub use options::{ConnectOptions, ReconnectMode, ReconnectPolicy};
pub use shared::MAX_POSITIONS;
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
