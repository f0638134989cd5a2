//! The contract between generated code and the runtime.

use bytes::Bytes;
use hub_core::BoxFuture;
use hub_core::proto::ClientControl;

use crate::{Context, DisconnectReason, Push};

/// One decoded request frame, split into what the runtime needs.
#[derive(Debug)]
pub struct Inbound<C> {
    /// The call id (0: fire-and-forget).
    pub id: u64,
    /// A control message (heartbeat answer, client ping), if any.
    pub control: Option<ClientControl>,
    /// The call, if any.
    pub call: Option<C>,
}

/// A hub as the runtime drives it. Implemented by generated code (`FooHubServer`)
/// for a user's implementation of the generated `FooHub` trait; users do not
/// implement it by hand.
pub trait Dispatch: Send + Sync + 'static {
    /// The hub's request frame (`FooRequest`).
    type Request: prost::Message + Default + Send + 'static;
    /// The `oneof call` of the request frame.
    type Call: Send + 'static;
    /// The hub's typed push API (`FooHubPush`), built from an untyped [`Push`].
    type Push: From<Push> + Send + Sync + 'static;

    /// The full gRPC service name, e.g. `chat.v1.ChatHub`.
    const SERVICE: &'static str;
    /// The path of the `Connect` method, e.g. `/chat.v1.ChatHub/Connect`.
    const PATH: &'static str;

    /// Splits a request frame.
    fn split(request: Self::Request) -> Inbound<Self::Call>;

    /// The call's name in the proto (`join`), for logs and spans.
    fn call_name(call: &Self::Call) -> &'static str;

    /// Runs one call; returns the encoded reply frame (with `id` set) or a status,
    /// which the runtime turns into an error frame.
    fn dispatch(
        &self,
        ctx: Context<Self::Push>,
        id: u64,
        call: Self::Call,
    ) -> BoxFuture<'static, Result<Bytes, tonic::Status>>;

    /// Runs the hub's `on_connect` hook. An error refuses the connection with that status.
    fn on_connect(&self, ctx: Context<Self::Push>)
    -> BoxFuture<'static, Result<(), tonic::Status>>;

    /// Runs the hub's `on_disconnect` hook (the connection is still in its groups).
    fn on_disconnect(
        &self,
        ctx: Context<Self::Push>,
        reason: DisconnectReason,
    ) -> BoxFuture<'static, ()>;
}
