//! Core types of the hub framework.
//!
//! This crate is what group providers and extension authors depend on. It holds:
//!
//! - [`ConnectionId`] and [`NodeId`]: who a frame goes to, unique across servers;
//! - [`GroupName`]: a validated group (room) name;
//! - [`Target`]: which members of a group receive a push (all, all except some, only some),
//!   and [`Destination`]: a group with its target, or named connections;
//! - [`frame`]: the encoded frames that travel to clients ([`frame::OutFrame`]) and the
//!   framework's own control and error frames, encoded without knowing the hub's types;
//! - [`LocalGroups`]: the registry of this server's members of one hub, with
//!   encode-once delivery into each member's bounded [`Outbox`];
//! - [`GroupProvider`] and [`Backplane`]: how a hub's groups reach other servers
//!   (in-memory, Redis, NATS);
//! - [`remote`]: what crosses a backplane (the envelope codec, delivery of what
//!   other servers send), written once for every backend;
//! - [`emit`]: pushes and commands from processes that are not hub servers (a game
//!   loop), through the same backplane;
//! - [`relay`]: a [`Backplane`] made of a backend's [`relay::Transport`] and
//!   [`relay::Presence`] store, the only parts a backend writes;
//! - [`shard`]: groups spread over several backplanes by a stable hash of their
//!   name (client-side sharding over independent Redis or NATS servers);
//! - [`bus`]: an in-process backend (several hub servers in one process), the
//!   reference for writing one;
//! - [`HubMetrics`]: counters every part updates, so no failure is silent;
//! - [`session`]: the session records a backplane keeps, so a session resumes on
//!   another server;
//! - [`ask`]: asks to clients that wait for answers, across servers too;
//! - [`history`]: a group's recent pushes kept by a backplane, read back by offset;
//! - [`quote`]: bounded quoting of client input in error messages.
//!
//! The tonic service lives in `hub-server`; this crate has no server.

pub mod ask;
pub mod bus;
pub mod command;
pub mod emit;
pub mod frame;
mod group;
pub mod history;
mod id;
mod local;
mod metrics;
mod outbox;
mod provider;
pub mod quote;
pub mod relay;
pub mod remote;
pub mod session;
pub mod shard;
mod target;

/// The framework's protobuf types (`hub.v1`), generated from `proto/hub/v1/hub.proto`.
pub mod proto {
    #![allow(missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/hub.v1.rs"));
}

pub use group::{GroupName, InvalidGroupName, MAX_GROUP_NAME_BYTES};
pub use id::{ConnectionId, NodeId, ParseConnectionIdError};
pub use local::{Delivery, JoinOutcome, LeaveOutcome, LocalGroups, Member, MemberInfo};
pub use metrics::{Counter, HubMetrics, MetricsSnapshot, TransportMetrics, TransportSnapshot};
pub use outbox::{
    CloseReason, FRAME_OVERHEAD, HARD_LIMIT_FACTOR, Next, OutboundBudget, Outbox, OutboxLimits,
    OutboxReceiver, PushRejected, SlowConsumerPolicy,
};
pub use provider::{
    Backplane, BackplaneEvents, BindContext, BoxFuture, GroupError, GroupProvider, LocalOnly,
    MembersLost, MemoryProvider, deadline,
};
pub use target::{Destination, Target};

/// Includes the code `hub-build` generated for a proto package:
/// `pub mod chat { hub_server::include_proto!("chat.v1"); }`.
#[macro_export]
macro_rules! include_proto {
    ($package:tt) => {
        include!(concat!(env!("OUT_DIR"), concat!("/", $package, ".rs")));
    };
}

/// The encoded `FileDescriptorSet` `hub-build` wrote, for gRPC server reflection:
/// `tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(include_file_descriptor_set!())`.
#[macro_export]
macro_rules! include_file_descriptor_set {
    () => {
        include_bytes!(concat!(env!("OUT_DIR"), "/hub_descriptor.bin"))
    };
}
