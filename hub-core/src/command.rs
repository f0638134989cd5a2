//! Commands: what an envelope can ask every server holding some of the connections
//! it selects to do to them (close them, remove them from a group, let another
//! server take over their sessions), as the hub would itself. Sent by emitters and
//! by servers that resume another's sessions (the `emit` module), read by the backplane
//! `Inbox` (the `remote` module), carried out by the hub runtime.

use crate::{GroupName, MemberInfo};

/// A command received from the backplane, with this server's connections it applies
/// to (never empty), as `BackplaneEvents::commanded` hands it to the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commanded {
    /// What to do.
    pub action: Action,
    /// The local connections selected, sorted by connection id.
    pub members: Vec<MemberInfo>,
}

/// What a command asks of the server holding the connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Close them with this status and reason.
    Disconnect {
        /// The status code (goodbye and end of stream).
        code: tonic::Code,
        /// Why, shown to the client.
        reason: String,
    },
    /// Remove them from this group (never a reserved one).
    Leave {
        /// The group.
        group: GroupName,
    },
    /// Stop serving their sessions: `server` resumed them. The connections end here
    /// without the hub's `on_disconnect` (the session goes on there).
    Takeover {
        /// The server that holds the sessions now.
        server: crate::NodeId,
    },
}

/// Members removed from a group by a command from outside the hub (an emitter's
/// `Emitter::remove`), as the hub's `on_removed` hook gets them: they have left
/// (registry and backplane), like after a leave on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembersRemoved {
    /// The group.
    pub group: GroupName,
    /// This server's members that left it.
    pub members: Vec<MemberInfo>,
}
