//! What generated code supplies: a hub's frames ([`ClientSpec`]) and where its pushes go
//! ([`PushHandler`]).

use hub_core::proto;

/// A hub's frames as the client runtime sees them. Implemented by generated code.
pub trait ClientSpec: Send + Sync + 'static {
    /// The request frame (`FooRequest`).
    type Request: prost::Message + Send + 'static;
    /// The response frame (`FooResponse`).
    type Response: prost::Message + Default + Send + 'static;
    /// The request's `oneof call`.
    type Call: Send + 'static;
    /// The response's `oneof event`.
    type Event: Send + 'static;
    /// The request's `oneof answer` (answers to the server's asks), `()` for a hub
    /// without asks.
    type Answer: Send + 'static;
    /// The `Connect` method's path, e.g. `/chat.v1.ChatHub/Connect`.
    const PATH: &'static str;

    /// Builds a request frame.
    fn request(
        id: u64,
        call: Option<Self::Call>,
        control: Option<proto::ClientControl>,
    ) -> Self::Request;

    /// Splits a response frame.
    fn split(response: Self::Response) -> ResponseParts<Self::Event>;

    /// The request frame answering the ask `id`: the answer, or the status the
    /// client failed it with.
    fn answer(id: u64, answer: Result<Self::Answer, tonic::Status>) -> Self::Request;
}

/// A response frame, split.
#[derive(Debug)]
pub struct ResponseParts<E> {
    /// The call answered, or 0.
    pub id: u64,
    /// The push sequence number, or 0.
    pub seq: u64,
    /// The error, if the frame is one.
    pub error: Option<proto::CallError>,
    /// The control message, if any.
    pub control: Option<proto::ServerControl>,
    /// The reply or push.
    pub event: Option<E>,
}

/// Where pushes go, and who answers the server's asks. Generated receivers
/// (`FooHubReceiver`) implement it through an adapter. `A` is the hub's answer type
/// ([`ClientSpec::Answer`]).
pub trait PushHandler<E, A = ()>: Send + Sync + 'static {
    /// A push arrived with sequence number `seq`.
    fn on_push(&self, seq: u64, event: E);

    /// The server sent an error frame not tied to a call (a failed fire-and-forget
    /// call, a malformed frame).
    fn on_error(&self, code: tonic::Code, message: &str) {
        tracing::warn!(?code, message, "hub error frame");
    }

    /// Pushes to `group` that this connection should have had were lost between
    /// servers, or while its session moved, and could not be recovered
    /// (`ServerControl.pushes_lost`; `missed` 0: how many is unknown): resync what the
    /// group's pushes carry. Called in order with the pushes, before the group's next
    /// one (the client logs it too, as a warning). The default does nothing.
    fn on_pushes_lost(&self, group: &str, missed: u64, reason: &str) {
        let _ = (group, missed, reason);
    }

    /// The connection's state changed (after `connect` returned): called on the
    /// reader task, in order with the pushes, so `Reconnecting` comes after the last
    /// push of the stream that dropped and `Resumed` / `ResyncNeeded` before the first
    /// push of the new one. Keep it quick, as `on_push`. The default does nothing.
    fn on_state(&self, state: &crate::ConnectionState) {
        let _ = state;
    }

    /// The server asks something (`event` is the ask case): returns the future that
    /// answers it, run on a task of its own (so the reader goes on reading, and the
    /// answerer may make calls), or gives the event back if this is no ask it
    /// answers (the server then gets `UNIMPLEMENTED`).
    #[allow(clippy::type_complexity)]
    fn on_ask(
        self: std::sync::Arc<Self>,
        event: E,
    ) -> Result<hub_core::BoxFuture<'static, Result<A, tonic::Status>>, E> {
        Err(event)
    }
}
