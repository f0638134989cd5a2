//! The contract between generated code and the runtime.

use bytes::Bytes;
use hub_core::emit::MembersRemoved;
use hub_core::proto::ClientControl;
use hub_core::{BoxFuture, MembersLost};

use crate::{Context, DisconnectReason, HubHandle, Push};

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

    /// Runs the hub's `on_disconnect` hook. The connection has already left its
    /// groups (counts and member lists on every server no longer show it);
    /// `Context::groups` still lists them.
    fn on_disconnect(
        &self,
        ctx: Context<Self::Push>,
        reason: DisconnectReason,
    ) -> BoxFuture<'static, ()>;

    /// Runs the hub's `on_transport_lost` hook (hubs with sessions only): the
    /// connection's stream broke and its session waits for a resume; the connection
    /// is still a member of its groups. `on_disconnect` runs later if the session ends
    /// without one. The default does nothing.
    fn on_transport_lost(
        &self,
        ctx: Context<Self::Push>,
        reason: DisconnectReason,
    ) -> BoxFuture<'static, ()> {
        let _ = (ctx, reason);
        Box::pin(async {})
    }

    /// Runs the hub's `on_resumed` hook (hubs with sessions only): a new stream
    /// resumed the connection's session. The default does nothing.
    fn on_resumed(&self, ctx: Context<Self::Push>) -> BoxFuture<'static, ()> {
        let _ = ctx;
        Box::pin(async {})
    }

    /// Runs the hub's `on_members_lost` hook: members of a group on another server are
    /// gone because that server died. Called on every server with local members of the
    /// group. The default does nothing.
    fn on_members_lost(
        &self,
        hub: HubHandle<Self::Push>,
        lost: MembersLost,
    ) -> BoxFuture<'static, ()> {
        let _ = (hub, lost);
        Box::pin(async {})
    }

    /// Runs the hub's `on_removed` hook: members of this server were removed from a
    /// group by a command from outside the hub (an emitter). They have left it (the
    /// registry and the backplane no longer list them). The default does nothing.
    fn on_removed(
        &self,
        hub: HubHandle<Self::Push>,
        removed: MembersRemoved,
    ) -> BoxFuture<'static, ()> {
        let _ = (hub, removed);
        Box::pin(async {})
    }
}
