//! Asks: the server asks clients something and waits for each one's answer. The
//! outcome types every layer shares, the ask and answer envelopes' hooks (what the
//! backplane's `Inbox` hands the runtime), and the frame an ask travels in.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use prost::Message as _;

use crate::frame::FIELD_CONTROL;
use crate::{ConnectionId, NodeId, proto};

/// The timeout of an ask when none is given (`HubConfig::ask_timeout` overrides it).
pub const DEFAULT_ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How one target connection's ask ended.
#[derive(Clone, Debug)]
pub enum AskOutcome<A> {
    /// The client answered.
    Answered(A),
    /// The client answered with an error, or the ask was refused before it was sent
    /// (`RESOURCE_EXHAUSTED`: too many asks in flight; `OUT_OF_RANGE`: too large;
    /// `CANCELLED`: the asking connection went away).
    Failed(tonic::Status),
    /// No answer within the ask's timeout.
    TimedOut,
    /// The connection is gone (closed, never connected, or its server died); why.
    Disconnected(String),
    /// The connection's server could not be reached: the backplane is down or failed
    /// while the ask waited; why.
    Unreachable(String),
}

impl<A> AskOutcome<A> {
    /// Maps the answer.
    pub fn map<B>(self, f: impl FnOnce(A) -> B) -> AskOutcome<B> {
        match self {
            AskOutcome::Answered(a) => AskOutcome::Answered(f(a)),
            AskOutcome::Failed(s) => AskOutcome::Failed(s),
            AskOutcome::TimedOut => AskOutcome::TimedOut,
            AskOutcome::Disconnected(w) => AskOutcome::Disconnected(w),
            AskOutcome::Unreachable(w) => AskOutcome::Unreachable(w),
        }
    }

    /// The answer, if the client gave one.
    pub fn answer(self) -> Option<A> {
        match self {
            AskOutcome::Answered(a) => Some(a),
            _ => None,
        }
    }

    /// A short name of the outcome for logs: `answered`, `failed`, `timed out`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            AskOutcome::Answered(_) => "answered",
            AskOutcome::Failed(_) => "failed",
            AskOutcome::TimedOut => "timed out",
            AskOutcome::Disconnected(_) => "disconnected",
            AskOutcome::Unreachable(_) => "unreachable",
        }
    }
}

/// One target's outcome of an ask.
#[derive(Clone, Debug)]
pub struct AskReply<A> {
    /// The connection asked.
    pub connection: ConnectionId,
    /// The user it acts as, when the ask went to a group or user (from the member list).
    pub user: Option<String>,
    /// How it ended.
    pub outcome: AskOutcome<A>,
}

impl<A> AskReply<A> {
    /// Maps the answer.
    pub fn map<B>(self, f: impl FnOnce(A) -> B) -> AskReply<B> {
        AskReply {
            connection: self.connection,
            user: self.user,
            outcome: self.outcome.map(f),
        }
    }
}

/// An ask received from another server for connections of this one.
#[derive(Clone, Debug)]
pub struct RemoteAsk {
    /// The asking server's id for it.
    pub id: u64,
    /// The asking server.
    pub reply_to: NodeId,
    /// How long the asker waits.
    pub timeout: std::time::Duration,
    /// The ask frame (the response message with the ask case set).
    pub frame: Bytes,
    /// The connections of this server asked (as the envelope named them).
    pub connections: Vec<ConnectionId>,
}

/// What crosses a backplane about asks, as an `Inbox` hands it to the runtime.
#[derive(Clone, Debug)]
pub enum AskEvent {
    /// Another server asks connections of this one.
    Asked(RemoteAsk),
    /// A connection on another server answered an ask of this server.
    Answered(proto::Answer),
    /// A server died (its presence expired, or its heartbeats stopped): asks waiting
    /// on its connections end now.
    ServerDead(NodeId),
    /// The backplane link went down: asks waiting on other servers end now.
    LinkDown(String),
}

/// The runtime's hook for [`AskEvent`]s (set with `BackplaneEvents::with_asks`).
#[derive(Clone, Default)]
pub(crate) struct AskHook(pub(crate) Option<Arc<dyn Fn(AskEvent) + Send + Sync>>);

impl crate::BackplaneEvents {
    /// These events, with `on_ask` called with each [`AskEvent`]. It must return
    /// quickly (the runtime spawns what takes time). Without it, asks are dropped.
    pub fn with_asks(mut self, on_ask: impl Fn(AskEvent) + Send + Sync + 'static) -> Self {
        self.asks = AskHook(Some(Arc::new(on_ask)));
        self
    }

    /// Reports an ask event.
    pub fn ask_event(&self, event: AskEvent) {
        if let Some(hook) = &self.asks.0 {
            hook(event);
        }
    }

    /// Reports a server that died: asks waiting on its connections end at once.
    pub fn server_dead(&self, node: NodeId) {
        self.ask_event(AskEvent::ServerDead(node));
    }

    /// Reports the backplane link down: asks waiting on other servers end at once.
    pub fn link_down(&self, why: impl Into<String>) {
        self.ask_event(AskEvent::LinkDown(why.into()));
    }
}

/// The ask frame one connection gets: `frame` (the response with the ask case set)
/// with `control.ask {id, timeout_ms}` appended (a field appended to an encoded
/// message is read as if it had been there).
pub fn ask_frame(frame: &[u8], id: u64, timeout_ms: u64) -> Bytes {
    let control = proto::ServerControl {
        kind: Some(proto::server_control::Kind::Ask(proto::AskInfo {
            id,
            timeout_ms,
        })),
    };
    let len = control.encoded_len();
    let mut b = BytesMut::with_capacity(frame.len() + len + 4);
    b.extend_from_slice(frame);
    prost::encoding::encode_key(
        FIELD_CONTROL,
        prost::encoding::WireType::LengthDelimited,
        &mut b,
    );
    prost::encoding::encode_varint(len as u64, &mut b);
    control.encode_raw(&mut b);
    b.freeze()
}
