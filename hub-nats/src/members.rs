//! Who is a member where, as far as this server knows: for each group with members
//! here, the members on every other server, from their `MemberChange` messages and
//! from roll-call answers. Used for one thing: when a server dies, to tell which of
//! its members are gone (`on_members_lost`). Counts and member lists still come from
//! roll calls, which ask the live servers themselves.

use std::collections::{BTreeMap, HashMap};

use hub_core::{ConnectionId, GroupName, MemberInfo};

/// One server's members of one group, as of its change number `seq`.
#[derive(Debug, Default)]
struct Roster {
    /// Connection → user.
    members: BTreeMap<ConnectionId, Option<String>>,
    /// The server's change number this roster is current with: older changes and
    /// answers are ignored (changes and answers travel separately).
    seq: u64,
}

/// The members of other servers in the groups this server tracks.
#[derive(Debug, Default)]
pub(crate) struct Whereabouts {
    /// Group → server (node id text) → its members.
    groups: HashMap<GroupName, HashMap<String, Roster>>,
}

impl Whereabouts {
    /// Starts keeping a group (its first member here joined).
    pub(crate) fn track(&mut self, group: &GroupName) {
        self.groups.entry(group.clone()).or_default();
    }

    /// Stops keeping a group (its last member here left).
    pub(crate) fn untrack(&mut self, group: &GroupName) {
        self.groups.remove(group);
    }

    /// A member of `node` joined or left `group` (the server's change number `seq`).
    pub(crate) fn change(
        &mut self,
        group: &GroupName,
        node: &str,
        member: MemberInfo,
        joined: bool,
        seq: u64,
    ) {
        let Some(servers) = self.groups.get_mut(group) else {
            return;
        };
        let roster = servers.entry(node.to_owned()).or_default();
        if seq <= roster.seq {
            return;
        }
        roster.seq = seq;
        if !joined {
            roster.members.remove(&member.connection);
            return;
        }
        let connection = member.connection;
        roster.members.insert(connection, member.user);
        // A connection is a member on one server at a time: joined here, it is a
        // session resumed from the other (not lost when that one dies).
        for (other, roster) in servers.iter_mut() {
            if other != node {
                roster.members.remove(&connection);
            }
        }
    }

    /// What `node` answered to a roll call, when it had sent `seq` changes: all its
    /// members of `group`.
    pub(crate) fn replace(
        &mut self,
        group: &GroupName,
        node: &str,
        members: &[MemberInfo],
        seq: u64,
    ) {
        let Some(servers) = self.groups.get_mut(group) else {
            return;
        };
        let roster = servers.entry(node.to_owned()).or_default();
        if seq < roster.seq {
            return;
        }
        roster.seq = seq;
        roster.members = members
            .iter()
            .map(|m| (m.connection, m.user.clone()))
            .collect();
    }

    /// `node` is gone: forgets it and returns its members, by group.
    pub(crate) fn server_gone(&mut self, node: &str) -> Vec<(GroupName, Vec<MemberInfo>)> {
        let mut out = Vec::new();
        for (group, servers) in &mut self.groups {
            if let Some(roster) = servers.remove(node)
                && !roster.members.is_empty()
            {
                let members: Vec<MemberInfo> = roster
                    .members
                    .into_iter()
                    .map(|(connection, user)| MemberInfo { connection, user })
                    .collect();
                out.push((group.clone(), members));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::NodeId;

    fn m(node: u64, n: u64) -> MemberInfo {
        MemberInfo {
            connection: ConnectionId {
                node: NodeId(node),
                local: n,
            },
            user: Some(format!("u{n}")),
        }
    }

    #[test]
    fn changes_and_answers_say_who_a_dead_server_had() {
        let room = GroupName::new("room").expect("valid");
        let hall = GroupName::new("hall").expect("valid");
        let mut w = Whereabouts::default();
        // Untracked groups are ignored.
        w.change(&room, "b", m(2, 1), true, 1);
        assert!(w.server_gone("b").is_empty());
        w.track(&room);
        w.track(&hall);
        w.change(&room, "b", m(2, 1), true, 1);
        w.change(&room, "b", m(2, 3), true, 4);
        // An answer older than the changes already seen changes nothing...
        w.replace(&room, "b", &[m(2, 1)], 3);
        // ...a newer one replaces them, and older changes are ignored after it.
        w.replace(&room, "b", &[m(2, 1), m(2, 2)], 5);
        w.change(&room, "b", m(2, 9), true, 5);
        w.change(&room, "b", m(2, 3), true, 6);
        w.change(&room, "b", m(2, 1), false, 7);
        w.change(&hall, "b", m(2, 2), true, 8);
        w.change(&hall, "c", m(3, 1), true, 1);
        assert_eq!(
            w.server_gone("b"),
            vec![
                (hall.clone(), vec![m(2, 2)]),
                (room.clone(), vec![m(2, 2), m(2, 3)])
            ]
        );
        assert!(w.server_gone("b").is_empty());
        w.untrack(&hall);
        assert!(w.server_gone("c").is_empty());
    }

    #[test]
    fn a_session_resumed_elsewhere_is_not_lost_with_its_old_server() {
        let room = GroupName::new("room").expect("valid");
        let mut w = Whereabouts::default();
        w.track(&room);
        w.change(&room, "a", m(1, 1), true, 1);
        w.change(&room, "a", m(1, 2), true, 2);
        // Connection 1-1 resumed on c and joined there.
        w.change(&room, "c", m(1, 1), true, 1);
        assert_eq!(w.server_gone("a"), vec![(room.clone(), vec![m(1, 2)])]);
        assert_eq!(w.server_gone("c"), vec![(room, vec![m(1, 1)])]);
    }
}
