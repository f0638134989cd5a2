use std::fmt;
use std::str::FromStr;

/// The id of one hub server instance (one process may run several, as tests do).
///
/// Random at start-up, so ids from different servers do not collide.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A new random node id.
    pub fn random() -> Self {
        NodeId(rand::random::<u64>() | 1)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// The id of one client connection, unique across every server of a deployment.
///
/// It is the server's [`NodeId`] and a per-server counter; its text form,
/// `"<node as 16 hex digits>-<counter>"`, is what clients see in
/// `hub.v1.ConnectionInfo.connection_id` and what crosses a backplane.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId {
    /// The server that issued the id. It holds the connection, unless the
    /// connection's session was resumed on another server (`crate::session`): the
    /// id stays the same for the session's life.
    pub node: NodeId,
    /// The connection's number on that server.
    pub local: u64,
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.node, self.local)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({self})")
    }
}

/// A string that is not a connection id. Holds the string as
/// [`crate::quote::quote`] quotes it (a short escaped prefix).
#[derive(Debug, Clone, thiserror::Error)]
#[error("not a connection id: {0} (expected 16 hex digits, '-', a number)")]
pub struct ParseConnectionIdError(pub String);

impl FromStr for ConnectionId {
    type Err = ParseConnectionIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseConnectionIdError(crate::quote::quote(s).to_string());
        let (node, local) = s.split_once('-').ok_or_else(err)?;
        if node.len() != 16 {
            return Err(err());
        }
        let node = u64::from_str_radix(node, 16).map_err(|_| err())?;
        let local = local.parse::<u64>().map_err(|_| err())?;
        Ok(ConnectionId {
            node: NodeId(node),
            local,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let id = ConnectionId {
            node: NodeId(0xdead_beef),
            local: 42,
        };
        assert_eq!(id.to_string(), "00000000deadbeef-42");
        assert_eq!(id.to_string().parse::<ConnectionId>().unwrap(), id);
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "-",
            "abc-1",
            "00000000deadbeef-",
            "00000000deadbeef-x",
            "zzzzzzzzzzzzzzzz-1",
        ] {
            assert!(s.parse::<ConnectionId>().is_err(), "{s:?} parsed");
        }
    }
}
