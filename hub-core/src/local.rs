use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::frame::OutFrame;
use crate::{ConnectionId, GroupName, NodeId, Outbox, PushRejected, Target};

/// One local connection as the group registry sees it.
#[derive(Clone, Debug)]
pub struct Member {
    /// The connection.
    pub id: ConnectionId,
    /// The user the connection acts as, if the hub set one (`Context::set_user`).
    pub user: Option<Arc<str>>,
    /// Its outbound queue.
    pub outbox: Outbox,
}

/// A member as reported by `members` queries, local or remote.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberInfo {
    /// The connection.
    pub connection: ConnectionId,
    /// The user it acts as, if set.
    pub user: Option<String>,
}

/// What a delivery did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]

pub struct Delivery {
    /// Frames queued to local connections. 0 for a push to a group whose backplane
    /// keeps history: this server's members get it when it comes back from the
    /// backplane, in the group's order.
    pub local: u32,
    /// Local recipients that did not get it (queue full or connection closing).
    pub dropped: u32,
    /// Whether it was published to the backplane for other servers.
    pub published: bool,
}

impl Delivery {
    /// Adds another delivery's counts to this one.
    pub fn merge(&mut self, other: Delivery) {
        self.local += other.local;
        self.dropped += other.dropped;
        self.published |= other.published;
    }
}

/// What a join changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinOutcome {
    /// The connection was not a member before.
    pub added: bool,
    /// It is the group's first member on this server (a backplane subscribes now).
    pub first_local: bool,
}

/// What a leave changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaveOutcome {
    /// The connection was a member.
    pub removed: bool,
    /// The group has no member left on this server (a backplane unsubscribes now).
    pub last_local: bool,
}

struct ConnEntry {
    member: Member,
    groups: Vec<GroupName>,
}

#[derive(Default)]
struct State {
    /// Group -> members. Each list is an immutable snapshot replaced on join/leave,
    /// so a broadcast clones one `Arc` under the lock and fans out without it.
    groups: HashMap<GroupName, Arc<[Member]>>,
    /// Connection -> its member handle and the groups it is in (for leave-all and direct sends).
    conns: HashMap<ConnectionId, ConnEntry>,
}

/// The members of one hub on this server: who is connected, who is in which group,
/// and delivery of pre-encoded frames into their outbound queues.
///
/// Every provider uses one: the in-memory provider is this alone; a backplane adds
/// "tell the other servers" and "count the members elsewhere".
///
/// Locks are `std` locks held only for map updates and snapshot clones, never across
/// an `.await` or a fan-out loop.
pub struct LocalGroups {
    node: NodeId,
    state: RwLock<State>,
    /// Connections with ids of this server that another server holds now.
    moved: std::sync::Mutex<Moved>,
}

/// The connections with ids of this server that another server took over (their
/// session was restored there), oldest first, at most `MAX_MOVED`.
#[derive(Default)]
struct Moved {
    to: HashMap<ConnectionId, NodeId>,
    order: std::collections::VecDeque<ConnectionId>,
}

/// How many moved connections a server remembers: past it, the oldest is forgotten
/// (a send to it from this server then fails as not connected, never silently).
const MAX_MOVED: usize = 65_536;

impl std::fmt::Debug for LocalGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.read();
        f.debug_struct("LocalGroups")
            .field("node", &self.node)
            .field("connections", &s.conns.len())
            .field("groups", &s.groups.len())
            .finish()
    }
}

impl LocalGroups {
    /// An empty registry for the server `node`.
    pub fn new(node: NodeId) -> Self {
        LocalGroups {
            node,
            state: RwLock::new(State::default()),
            moved: Default::default(),
        }
    }

    /// The server these members are on.
    pub fn node(&self) -> NodeId {
        self.node
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // (each update is one insert/remove), so a poisoned lock is still usable.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn moved(&self) -> std::sync::MutexGuard<'_, Moved> {
        self.moved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that connection `id` of this server is held by server `to` now (its
    /// session was restored there): sends and asks this server makes to it go to this
    /// server's own channel, which `to` listens on, and this server leaves the asks
    /// for it that arrive there to `to`. Ids of other servers are not recorded.
    pub fn moved_away(&self, id: ConnectionId, to: NodeId) {
        if id.node != self.node || to == self.node {
            return;
        }
        let mut m = self.moved();
        if m.to.insert(id, to).is_none() {
            m.order.push_back(id);
            while m.order.len() > MAX_MOVED {
                if let Some(old) = m.order.pop_front() {
                    m.to.remove(&old);
                }
            }
        }
    }

    /// The server that holds connection `id` of this server now, if it moved away
    /// (see [`LocalGroups::moved_away`]).
    pub fn moved_to(&self, id: ConnectionId) -> Option<NodeId> {
        if id.node != self.node {
            return None;
        }
        let m = self.moved();
        if m.to.is_empty() {
            return None;
        }
        m.to.get(&id).copied()
    }

    /// Whether this server answers for connection `id` when an envelope routed by
    /// node names it (an ask): it holds it, or the id is this server's and the
    /// connection did not move to another server. A server listening on another's
    /// channel (it holds a session restored from there) sees envelopes for that
    /// server's other connections too, and leaves them alone.
    pub fn answers_for(&self, id: ConnectionId) -> bool {
        if self.read().conns.contains_key(&id) {
            return true;
        }
        id.node == self.node && self.moved_to(id).is_none()
    }

    /// Adds a connection (on connect).
    pub fn register(&self, member: Member) {
        let id = member.id;
        if id.node == self.node {
            let mut m = self.moved();
            if m.to.remove(&id).is_some() {
                m.order.retain(|c| *c != id);
            }
        }
        self.write().conns.insert(
            id,
            ConnEntry {
                member,
                groups: Vec::new(),
            },
        );
    }

    /// Removes a connection and its memberships (on disconnect). Returns the groups it
    /// was in, each with whether it was the last local member.
    pub fn unregister(&self, id: ConnectionId) -> Vec<(GroupName, bool)> {
        let mut s = self.write();
        let Some(entry) = s.conns.remove(&id) else {
            return Vec::new();
        };
        entry
            .groups
            .into_iter()
            .map(|g| {
                let last = remove_member(&mut s.groups, &g, id);
                (g, last)
            })
            .collect()
    }

    /// Sets the user a connection acts as (shown by `members`).
    pub fn set_user(&self, id: ConnectionId, user: Option<Arc<str>>) {
        let mut s = self.write();
        let Some(entry) = s.conns.get_mut(&id) else {
            return;
        };
        entry.member.user = user.clone();
        let member = entry.member.clone();
        for g in entry.groups.clone() {
            if let Some(list) = s.groups.get_mut(&g) {
                *list = list
                    .iter()
                    .map(|m| {
                        if m.id == id {
                            member.clone()
                        } else {
                            m.clone()
                        }
                    })
                    .collect();
            }
        }
    }

    /// The member handle of a local connection.
    pub fn member(&self, id: ConnectionId) -> Option<Member> {
        self.read().conns.get(&id).map(|e| e.member.clone())
    }

    /// Adds a connected connection to a group. `None` if the connection is not registered.
    pub fn join(&self, group: &GroupName, id: ConnectionId) -> Option<JoinOutcome> {
        let mut s = self.write();
        let entry = s.conns.get_mut(&id)?;
        if entry.groups.contains(group) {
            return Some(JoinOutcome {
                added: false,
                first_local: false,
            });
        }
        entry.groups.push(group.clone());
        let member = entry.member.clone();
        let list = s
            .groups
            .entry(group.clone())
            .or_insert_with(|| Arc::from([]));
        let first_local = list.is_empty();
        *list = list
            .iter()
            .cloned()
            .chain(std::iter::once(member))
            .collect();
        Some(JoinOutcome {
            added: true,
            first_local,
        })
    }

    /// Removes a connection from a group.
    pub fn leave(&self, group: &GroupName, id: ConnectionId) -> LeaveOutcome {
        let mut s = self.write();
        let Some(entry) = s.conns.get_mut(&id) else {
            return LeaveOutcome {
                removed: false,
                last_local: false,
            };
        };
        let Some(pos) = entry.groups.iter().position(|g| g == group) else {
            return LeaveOutcome {
                removed: false,
                last_local: false,
            };
        };
        entry.groups.swap_remove(pos);
        let last_local = remove_member(&mut s.groups, group, id);
        LeaveOutcome {
            removed: true,
            last_local,
        }
    }

    /// The groups a connection is in.
    pub fn groups_of(&self, id: ConnectionId) -> Vec<GroupName> {
        self.read()
            .conns
            .get(&id)
            .map(|e| e.groups.clone())
            .unwrap_or_default()
    }

    /// Every group with at least one local member (a backplane resubscribes these after a reconnect).
    pub fn groups(&self) -> Vec<GroupName> {
        self.read().groups.keys().cloned().collect()
    }

    /// The local members of a group.
    pub fn members(&self, group: &str) -> Vec<MemberInfo> {
        self.snapshot(group)
            .iter()
            .map(|m| MemberInfo {
                connection: m.id,
                user: m.user.as_deref().map(str::to_owned),
            })
            .collect()
    }

    /// How many local members a group has.
    pub fn count(&self, group: &str) -> usize {
        self.read().groups.get(group).map_or(0, |l| l.len())
    }

    /// How many connections are registered.
    pub fn connections(&self) -> usize {
        self.read().conns.len()
    }

    /// How many groups have at least one member here.
    pub fn group_count(&self) -> usize {
        self.read().groups.len()
    }

    /// Every registered connection's outbox (for shutdown).
    pub fn outboxes(&self) -> Vec<Outbox> {
        self.read()
            .conns
            .values()
            .map(|e| e.member.outbox.clone())
            .collect()
    }

    fn snapshot(&self, group: &str) -> Arc<[Member]> {
        self.read()
            .groups
            .get(group)
            .cloned()
            .unwrap_or_else(|| Arc::from([]))
    }

    /// Queues a push to the selected local members of a group. The frame's bytes are
    /// shared (reference-counted), never copied or re-encoded per member.
    pub fn deliver(&self, group: &str, target: &Target, frame: &Bytes) -> Delivery {
        let members = self.snapshot(group);
        let mut d = Delivery::default();
        // One accounted buffer for every recipient: its bytes count once in the
        // server's outbound budget, as they take memory once.
        let mut shared: Option<Bytes> = None;
        for m in members.iter().filter(|m| target.selects(&m.id)) {
            let bytes = shared.get_or_insert_with(|| m.outbox.account(frame));
            count(&mut d, m.outbox.push(OutFrame::push(bytes.clone())));
        }
        d
    }

    /// Queues a push to the given connections if they are on this server. Returns the
    /// delivery and the ids that are not connected here.
    pub fn deliver_to(&self, ids: &[ConnectionId], frame: &Bytes) -> (Delivery, Vec<ConnectionId>) {
        let mut d = Delivery::default();
        let mut missing = Vec::new();
        let outboxes: Vec<(ConnectionId, Option<Outbox>)> = {
            let s = self.read();
            ids.iter()
                .map(|id| (*id, s.conns.get(id).map(|e| e.member.outbox.clone())))
                .collect()
        };
        let mut shared: Option<Bytes> = None;
        for (id, outbox) in outboxes {
            match outbox {
                Some(o) => {
                    let bytes = shared.get_or_insert_with(|| o.account(frame));
                    count(&mut d, o.push(OutFrame::push(bytes.clone())))
                }
                None => missing.push(id),
            }
        }
        (d, missing)
    }
}

fn count(d: &mut Delivery, r: Result<(), PushRejected>) {
    match r {
        Ok(()) => d.local += 1,
        Err(_) => d.dropped += 1,
    }
}

/// Removes `id` from `group`'s list; returns whether the group is now empty here.
fn remove_member(
    groups: &mut HashMap<GroupName, Arc<[Member]>>,
    group: &GroupName,
    id: ConnectionId,
) -> bool {
    let Some(list) = groups.get_mut(group) else {
        return false;
    };
    *list = list.iter().filter(|m| m.id != id).cloned().collect();
    if list.is_empty() {
        groups.remove(group);
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HubMetrics, Next, OutboxReceiver, SlowConsumerPolicy};
    use std::future::poll_fn;

    fn member(reg: &LocalGroups, n: u64) -> (ConnectionId, OutboxReceiver) {
        let id = ConnectionId {
            node: reg.node(),
            local: n,
        };
        let (outbox, rx) = Outbox::new(
            8,
            SlowConsumerPolicy::Disconnect,
            Arc::new(HubMetrics::default()),
        );
        reg.register(Member {
            id,
            user: None,
            outbox,
        });
        (id, rx)
    }

    async fn got(rx: &mut OutboxReceiver) -> bool {
        tokio::time::timeout(
            std::time::Duration::from_millis(20),
            poll_fn(|cx| rx.poll_next(cx)),
        )
        .await
        .is_ok_and(|n| matches!(n, Some(Next::Frame(..))))
    }

    #[tokio::test]
    async fn join_deliver_leave() {
        let reg = LocalGroups::new(NodeId(1));
        let g = GroupName::new("room").unwrap();
        let (a, mut ra) = member(&reg, 1);
        let (b, mut rb) = member(&reg, 2);
        assert_eq!(
            reg.join(&g, a),
            Some(JoinOutcome {
                added: true,
                first_local: true
            })
        );
        assert_eq!(
            reg.join(&g, b),
            Some(JoinOutcome {
                added: true,
                first_local: false
            })
        );
        assert_eq!(
            reg.join(&g, b),
            Some(JoinOutcome {
                added: false,
                first_local: false
            })
        );
        assert_eq!(reg.count("room"), 2);

        let frame = Bytes::from_static(b"hello");
        let d = reg.deliver("room", &Target::Except(Arc::from([a])), &frame);
        assert_eq!((d.local, d.dropped), (1, 0));
        assert!(!got(&mut ra).await);
        assert!(got(&mut rb).await);

        assert_eq!(
            reg.leave(&g, a),
            LeaveOutcome {
                removed: true,
                last_local: false
            }
        );
        assert_eq!(
            reg.leave(&g, a),
            LeaveOutcome {
                removed: false,
                last_local: false
            }
        );
        assert_eq!(reg.unregister(b), vec![(g.clone(), true)]);
        assert_eq!(reg.count("room"), 0);
        assert!(reg.groups().is_empty());
    }

    #[tokio::test]
    async fn direct_sends_report_missing_connections() {
        let reg = LocalGroups::new(NodeId(1));
        let (a, mut ra) = member(&reg, 1);
        let gone = ConnectionId {
            node: NodeId(1),
            local: 99,
        };
        let (d, missing) = reg.deliver_to(&[a, gone], &Bytes::from_static(b"x"));
        assert_eq!(d.local, 1);
        assert_eq!(missing, vec![gone]);
        assert!(got(&mut ra).await);
    }

    #[test]
    fn join_of_unknown_connection_is_refused() {
        let reg = LocalGroups::new(NodeId(1));
        let g = GroupName::new("room").unwrap();
        assert_eq!(
            reg.join(
                &g,
                ConnectionId {
                    node: NodeId(1),
                    local: 5
                }
            ),
            None
        );
    }
}
