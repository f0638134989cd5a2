use std::sync::Arc;

use crate::ConnectionId;
use crate::proto;

/// Which members of a group receive a push.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// Every member.
    #[default]
    All,
    /// Every member except these connections (typically the caller).
    Except(Arc<[ConnectionId]>),
    /// Only these connections, if they are members.
    Only(Arc<[ConnectionId]>),
}

impl Target {
    /// Whether `id` is selected.
    #[inline]
    pub fn selects(&self, id: &ConnectionId) -> bool {
        match self {
            Target::All => true,
            Target::Except(ids) => !ids.contains(id),
            Target::Only(ids) => ids.contains(id),
        }
    }

    /// The wire form carried in a backplane [`proto::Envelope`].
    pub fn to_proto(&self) -> proto::TargetSpec {
        use proto::target_spec::Kind;
        let ids = |ids: &[ConnectionId]| proto::Connections {
            ids: ids.iter().map(ToString::to_string).collect(),
        };
        proto::TargetSpec {
            kind: Some(match self {
                Target::All => Kind::All(proto::All {}),
                Target::Except(x) => Kind::Except(ids(x)),
                Target::Only(x) => Kind::Only(ids(x)),
            }),
        }
    }

    /// Reads the wire form; connection ids that do not parse are skipped
    /// (they cannot name a connection of ours).
    pub fn from_proto(spec: Option<&proto::TargetSpec>) -> Target {
        use proto::target_spec::Kind;
        let ids = |c: &proto::Connections| -> Arc<[ConnectionId]> {
            c.ids.iter().filter_map(|s| s.parse().ok()).collect()
        };
        match spec.and_then(|s| s.kind.as_ref()) {
            None | Some(Kind::All(_)) => Target::All,
            Some(Kind::Except(c)) => Target::Except(ids(c)),
            Some(Kind::Only(c)) => Target::Only(ids(c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;

    fn id(n: u64) -> ConnectionId {
        ConnectionId {
            node: NodeId(7),
            local: n,
        }
    }

    #[test]
    fn selection() {
        assert!(Target::All.selects(&id(1)));
        let except = Target::Except(Arc::from([id(1)]));
        assert!(!except.selects(&id(1)) && except.selects(&id(2)));
        let only = Target::Only(Arc::from([id(1)]));
        assert!(only.selects(&id(1)) && !only.selects(&id(2)));
    }

    #[test]
    fn wire_round_trip() {
        for t in [
            Target::All,
            Target::Except(Arc::from([id(1), id(2)])),
            Target::Only(Arc::from([id(3)])),
        ] {
            assert_eq!(Target::from_proto(Some(&t.to_proto())), t);
        }
    }
}
