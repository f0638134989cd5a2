use std::sync::Arc;

use crate::proto;
use crate::{ConnectionId, GroupName};

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

/// Who receives a push: the selected members of a group, or named connections
/// (wherever they are connected, with or without a group).
///
/// What the runtime hands a [`Backplane`](crate::Backplane) to publish; every value
/// is a send that can happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The members of `group` that `target` selects.
    Group {
        /// The group.
        group: GroupName,
        /// Which of its members.
        target: Target,
    },
    /// These connections, whatever groups they are in.
    Connections(Arc<[ConnectionId]>),
}

impl Destination {
    /// Every member of `group`.
    pub fn group(group: GroupName) -> Self {
        Destination::Group {
            group,
            target: Target::All,
        }
    }

    /// Whether connection `id` is selected (as a member of the group, for a group).
    pub fn selects(&self, id: &ConnectionId) -> bool {
        match self {
            Destination::Group { target, .. } => target.selects(id),
            Destination::Connections(ids) => ids.contains(id),
        }
    }

    /// The same destination without `ids` (typically the caller: "everyone else").
    pub fn except(self, ids: &[ConnectionId]) -> Self {
        match self {
            Destination::Group { group, target } => Destination::Group {
                group,
                target: match target {
                    Target::All => Target::Except(ids.into()),
                    Target::Except(old) => Target::Except(old.iter().chain(ids).copied().collect()),
                    Target::Only(old) => Target::Only(without(&old, ids)),
                },
            },
            Destination::Connections(old) => Destination::Connections(without(&old, ids)),
        }
    }

    /// The same destination narrowed to `ids`.
    pub fn only(self, ids: &[ConnectionId]) -> Self {
        match self {
            Destination::Group { group, target } => Destination::Group {
                group,
                target: match target {
                    Target::All => Target::Only(ids.into()),
                    Target::Except(old) => Target::Only(without(ids, &old)),
                    Target::Only(old) => Target::Only(within(&old, ids)),
                },
            },
            Destination::Connections(old) => Destination::Connections(within(&old, ids)),
        }
    }
}

/// The ids of `from` not in `drop`, in order.
fn without(from: &[ConnectionId], drop: &[ConnectionId]) -> Arc<[ConnectionId]> {
    from.iter().filter(|c| !drop.contains(c)).copied().collect()
}

/// The ids of `from` also in `keep`, in order.
fn within(from: &[ConnectionId], keep: &[ConnectionId]) -> Arc<[ConnectionId]> {
    from.iter().filter(|c| keep.contains(c)).copied().collect()
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
    fn narrowing_a_destination() {
        let g = GroupName::new("room").expect("valid");
        let all = Destination::group(g.clone());
        let except = all.clone().except(&[id(1)]).except(&[id(2)]);
        assert!(!except.selects(&id(1)) && !except.selects(&id(2)) && except.selects(&id(3)));
        // only() after except() keeps the exclusions.
        let only = except.only(&[id(2), id(3)]);
        assert_eq!(
            only,
            Destination::Group {
                group: g,
                target: Target::Only(Arc::from([id(3)]))
            }
        );
        assert!(!all.only(&[]).selects(&id(9)));
        let list = Destination::Connections(Arc::from([id(1), id(2), id(3)]));
        assert_eq!(
            list.except(&[id(2)]).only(&[id(3), id(4)]),
            Destination::Connections(Arc::from([id(3)]))
        );
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
