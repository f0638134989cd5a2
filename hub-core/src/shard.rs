//! Groups spread over several independent backplanes (Redis servers, NATS servers, or
//! any [`GroupProvider`]) by a stable hash of the group's name: client-side sharding
//! by key, without a cluster.
//!
//! ```text
//!   Sharded::new([redis-a, redis-b, redis-c])
//!     join / leave / publish / count / members of "room-7" ──► shard_of("room-7") = b
//!     send to connections of server N                      ──► shard_of(node key of N)
//! ```
//!
//! # The hash
//!
//! A group goes to the shard with the highest score (rendezvous hashing, HRW):
//! `score(shard, key) = fmix64(fnv1a64(shard_key ++ [0xff] ++ key))`, FNV-1a 64 over
//! the bytes followed by the MurmurHash3 64-bit finalizer. Both are fixed, published
//! functions (no per-process seed), so every server and every emitter, in any
//! language, computes the same shard: [`shard_of`] is the reference. A shard's key is
//! its name ([`Sharded::named`]), or its position in the list (`"0"`, `"1"`, …) with
//! [`Sharded::new`]. The key hashed for a group is its name (`lobby`, `$user/ann`);
//! for sends to named connections it is `$node/<node id, 16 hex digits>`.
//!
//! # Sends to named connections
//!
//! Every server binds every shard, so it subscribes its own node channel on every
//! shard. A sender publishes a send to connections of server N on one shard only: the
//! one [`shard_of`] picks for N's node key. Both sides follow the same rule, and the
//! server receives on every shard anyway, so the rule only spreads the node traffic.
//! When that shard is down, sends to server N's connections fail with
//! `UNAVAILABLE` until it is back. Asks to connections of server N and their answers
//! (to the asking server) follow the same rule.
//!
//! # Changing the shards
//!
//! Every server and emitter must be given the same shards, with the same keys (the
//! same names, or the same order without names). Each server logs the list's
//! fingerprint when a hub binds (`shards=3 fingerprint=…`): servers whose
//! fingerprints differ route groups to different shards, and their members do not see
//! each other. With rendezvous hashing, adding a shard moves only the groups that go to
//! the new one (about 1/N of them) and removing one moves only its own groups; with
//! positional keys, removing a shard other than the last renames the ones after it and
//! moves many more. A moved group's members stay subscribed on its old shard until they
//! leave: members on servers with the old list and members on servers with the new one
//! do not reach each other, and counts miss them, until every server runs the new list
//! and the members rejoin (reconnect). Roll such a change out by restarting all
//! servers, not one at a time if groups must stay whole.
//!
//! # Faults
//!
//! Each shard is a backplane of its own, with its own connections, reconnects and
//! presence: a shard's outage fails the operations of its groups only
//! (`UNAVAILABLE`), and the groups of the other shards keep working. A server's
//! crash is noticed by each shard's presence for the groups it holds.

use std::sync::Arc;

use bytes::Bytes;

use crate::emit::Emit;
use crate::relay::Channel;
use crate::{
    Backplane, BindContext, BoxFuture, ConnectionId, Destination, GroupError, GroupName,
    GroupProvider, MemberInfo, NodeId,
};

/// FNV-1a, 64 bits.
fn fnv1a64(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The FNV-1a 64 offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// MurmurHash3's 64-bit finalizer: spreads FNV's weak high bits.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The rendezvous score of `key` on the shard keyed `shard`.
pub fn score(shard: &str, key: &str) -> u64 {
    let h = fnv1a64(FNV_OFFSET, shard.as_bytes());
    let h = fnv1a64(h, &[0xff]);
    fmix64(fnv1a64(h, key.as_bytes()))
}

/// The index of the shard (among shards keyed `shards`) that holds `key`: the highest
/// [`score`], the first one listed on a tie. `None` without shards.
pub fn shard_of<S: AsRef<str>>(shards: &[S], key: &str) -> Option<usize> {
    let mut best: Option<(usize, u64)> = None;
    for (i, s) in shards.iter().enumerate() {
        let sc = score(s.as_ref(), key);
        if best.is_none_or(|(_, b)| sc > b) {
            best = Some((i, sc));
        }
    }
    best.map(|(i, _)| i)
}

/// The key hashed for sends to connections of server `node`.
pub fn node_key(node: NodeId) -> String {
    format!("$node/{node}")
}

/// A fingerprint (16 hex digits) of shards, each a key and what it connects to
/// (`GroupProvider::describe`, `Emit::describe`: an address): logged when a hub binds,
/// so that operators can check that every server and emitter was given the same
/// shards. Pairs are taken in the order of their keys, so named shards listed in
/// another order have the same fingerprint, while positional shards listed in another
/// order (which routes differently) have another.
pub fn fingerprint<S: AsRef<str>, A: AsRef<str>>(keys: &[S], addresses: &[A]) -> String {
    let mut pairs: Vec<(&str, &str)> = keys
        .iter()
        .map(AsRef::as_ref)
        .zip(addresses.iter().map(AsRef::as_ref))
        .collect();
    pairs.sort();
    let mut h = fnv1a64(FNV_OFFSET, &(pairs.len() as u64).to_le_bytes());
    for (k, a) in pairs {
        h = fnv1a64(h, k.as_bytes());
        h = fnv1a64(h, &[0xff]);
        h = fnv1a64(h, a.as_bytes());
        h = fnv1a64(h, &[0xfe]);
    }
    format!("{:016x}", fmix64(h))
}

/// The shard keys and their routing, shared by [`Sharded`], its backplanes and
/// [`ShardedEmit`].
#[derive(Clone, Debug)]
struct Ring {
    keys: Arc<[String]>,
    /// What each shard says it is (`describe`), for the fingerprint.
    addresses: Arc<[String]>,
}

impl Ring {
    fn new(keys: Vec<String>, addresses: Vec<String>) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("a sharded backplane needs at least one shard".to_owned());
        }
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != keys.len() {
            return Err(format!("shard keys must be distinct: {keys:?}"));
        }
        Ok(Ring {
            keys: keys.into(),
            addresses: addresses.into(),
        })
    }

    fn positional(n: usize) -> Vec<String> {
        (0..n).map(|i| i.to_string()).collect()
    }

    fn group(&self, group: &GroupName) -> usize {
        shard_of(&self.keys, group.as_str()).unwrap_or(0)
    }

    fn node(&self, node: NodeId) -> usize {
        shard_of(&self.keys, &node_key(node)).unwrap_or(0)
    }

    fn fingerprint(&self) -> String {
        fingerprint(&self.keys, &self.addresses)
    }

    fn log(&self, what: &str, hub: &str) {
        let shards: Vec<String> = self
            .keys
            .iter()
            .zip(self.addresses.iter())
            .map(|(k, a)| format!("{k}={a}"))
            .collect();
        tracing::info!(
            hub,
            shards = ?shards,
            fingerprint = %self.fingerprint(),
            "{what}: every server and emitter of the deployment must log this fingerprint \
             (another one routes groups to other shards)"
        );
    }
}

/// A sharding setup that cannot work.
fn invalid(message: String) -> GroupError {
    GroupError::Unavailable {
        backplane: "sharded",
        message,
        source: None,
    }
}

/// A [`GroupProvider`] spreading groups over several providers by a stable hash of the
/// group's name (see the [module docs](self)). Every hub bound to it binds every shard.
#[derive(Clone)]
pub struct Sharded {
    ring: Result<Ring, String>,
    shards: Arc<[Arc<dyn GroupProvider>]>,
    name: &'static str,
}

impl std::fmt::Debug for Sharded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharded")
            .field("ring", &self.ring)
            .field("name", &self.name)
            .finish()
    }
}

impl Sharded {
    /// Shards keyed by their position in the list (`"0"`, `"1"`, …): every server and
    /// emitter must list them in the same order. An empty list fails when bound.
    pub fn new(shards: Vec<Arc<dyn GroupProvider>>) -> Self {
        let keys = Ring::positional(shards.len());
        Self::build(keys, shards)
    }

    /// Shards keyed by a name each (say the broker's host name): the order of the
    /// list does not matter, and removing a shard moves only its own groups. Names
    /// must be distinct (checked when bound).
    pub fn named<S: Into<String>>(shards: Vec<(S, Arc<dyn GroupProvider>)>) -> Self {
        let (keys, shards): (Vec<String>, Vec<_>) =
            shards.into_iter().map(|(k, p)| (k.into(), p)).unzip();
        Self::build(keys, shards)
    }

    fn build(keys: Vec<String>, shards: Vec<Arc<dyn GroupProvider>>) -> Self {
        let name = common_name(shards.iter().map(|s| s.name()));
        let addresses = shards.iter().map(|s| s.describe()).collect();
        Sharded {
            ring: Ring::new(keys, addresses),
            shards: shards.into(),
            name,
        }
    }

    /// The shard keys, in order.
    pub fn keys(&self) -> &[String] {
        match &self.ring {
            Ok(r) => &r.keys,
            Err(_) => &[],
        }
    }

    /// The fingerprint of the shards (see [`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        match &self.ring {
            Ok(r) => r.fingerprint(),
            Err(_) => fingerprint::<&str, &str>(&[], &[]),
        }
    }

    /// The index of the shard holding `group`.
    pub fn shard_of_group(&self, group: &GroupName) -> usize {
        shard_of(self.keys(), group.as_str()).unwrap_or(0)
    }
}

/// The shards' common name ("redis"), or "sharded" when they differ.
fn common_name(mut names: impl Iterator<Item = &'static str>) -> &'static str {
    match names.next() {
        Some(first) if names.all(|n| n == first) => first,
        _ => "sharded",
    }
}

impl GroupProvider for Sharded {
    fn name(&self) -> &'static str {
        self.name
    }

    fn bind(&self, ctx: BindContext) -> Result<Arc<dyn Backplane>, GroupError> {
        let ring = self.ring.clone().map_err(invalid)?;
        ring.log("binding a sharded backplane", ctx.hub);
        let shards = self
            .shards
            .iter()
            .map(|p| p.bind(ctx.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(ShardedBackplane {
            ring,
            shards,
            name: self.name,
        }))
    }
}

/// One hub's backplane over the backplanes of every shard.
struct ShardedBackplane {
    ring: Ring,
    shards: Vec<Arc<dyn Backplane>>,
    name: &'static str,
}

impl ShardedBackplane {
    fn of(&self, group: &GroupName) -> &Arc<dyn Backplane> {
        &self.shards[self.ring.group(group)]
    }
}

impl Backplane for ShardedBackplane {
    fn name(&self) -> &'static str {
        self.name
    }

    fn joined<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        first: bool,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        self.of(group).joined(group, member, first)
    }

    fn left<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        last: bool,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        self.of(group).left(group, member, last)
    }

    fn publish<'a>(
        &'a self,
        dest: &'a Destination,
        frame: &'a Bytes,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        match dest {
            Destination::Group { group, .. } => self.of(group).publish(dest, frame),
            Destination::Connections(ids) => {
                // One destination per shard, with the connections of the servers whose
                // node key that shard holds.
                let mut by_shard: Vec<Vec<ConnectionId>> = vec![Vec::new(); self.shards.len()];
                for id in ids.iter() {
                    by_shard[self.ring.node(id.node)].push(*id);
                }
                let dests: Vec<(usize, Destination)> = by_shard
                    .into_iter()
                    .enumerate()
                    .filter(|(_, ids)| !ids.is_empty())
                    .map(|(i, ids)| (i, Destination::Connections(ids.into())))
                    .collect();
                if let [(i, _)] = dests.as_slice() {
                    return self.shards[*i].publish(dest, frame);
                }
                Some(Box::pin(async move {
                    let sends = dests
                        .iter()
                        .filter_map(|(i, d)| self.shards[*i].publish(d, frame));
                    futures_util::future::try_join_all(sends).await.map(|_| ())
                }))
            }
        }
    }

    fn member_count<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Result<u64, GroupError>>> {
        self.of(group).member_count(group)
    }

    fn members<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Result<Vec<MemberInfo>, GroupError>>> {
        self.of(group).members(group)
    }

    fn ask<'a>(
        &'a self,
        node: NodeId,
        ids: &'a [ConnectionId],
        ask: &'a crate::proto::Ask,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        // On the asked server's node shard, as sends to its connections.
        self.shards[self.ring.node(node)].ask(node, ids, ask)
    }

    fn answer<'a>(
        &'a self,
        node: NodeId,
        answer: &'a crate::proto::Answer,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        // On the asking server's node shard.
        self.shards[self.ring.node(node)].answer(node, answer)
    }

    fn command<'a>(
        &'a self,
        node: NodeId,
        ids: &'a [ConnectionId],
        command: &'a crate::proto::Command,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        // On the server's node shard, as sends to its connections.
        self.shards[self.ring.node(node)].command(node, ids, command)
    }

    fn echoes_own_pushes(&self, group: &GroupName) -> bool {
        self.of(group).echoes_own_pushes(group)
    }

    fn group_position<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Result<(u64, u64), GroupError>>> {
        self.of(group).group_position(group)
    }

    fn hold_group<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Option<crate::remote::ReplayHold>>> {
        self.of(group).hold_group(group)
    }

    // Sends to a server's connections go to its node shard only: a server holding a
    // connection whose id names another server listens on that server's channel
    // there.
    fn adopt<'a>(&'a self, node: NodeId) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        self.shards[self.ring.node(node)].adopt(node)
    }

    fn release<'a>(&'a self, node: NodeId) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        self.shards[self.ring.node(node)].release(node)
    }

    fn shares_sessions(&self) -> bool {
        self.shards.iter().all(|s| s.shares_sessions())
    }

    // A session's record lives on the shard of the node that issued its id, wherever
    // the session is held now.
    fn save_session<'a>(
        &'a self,
        record: &'a crate::session::SessionRecord,
        ttl: std::time::Duration,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        self.shards[self.ring.node(record.connection.node)].save_session(record, ttl)
    }

    fn claim_session<'a>(
        &'a self,
        record: &'a crate::session::SessionRecord,
        from: NodeId,
        ttl: std::time::Duration,
    ) -> Option<BoxFuture<'a, Result<bool, GroupError>>> {
        self.shards[self.ring.node(record.connection.node)].claim_session(record, from, ttl)
    }

    fn load_session<'a>(
        &'a self,
        connection: ConnectionId,
    ) -> Option<BoxFuture<'a, Result<Option<crate::session::SessionRecord>, GroupError>>> {
        self.shards[self.ring.node(connection.node)].load_session(connection)
    }

    fn drop_session<'a>(
        &'a self,
        connection: ConnectionId,
        server: NodeId,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        self.shards[self.ring.node(connection.node)].drop_session(connection, server)
    }

    fn server_alive<'a>(&'a self, node: NodeId) -> Option<BoxFuture<'a, Result<bool, GroupError>>> {
        self.shards[self.ring.node(node)].server_alive(node)
    }

    fn max_frame_bytes(&self) -> Option<usize> {
        self.shards.iter().filter_map(|s| s.max_frame_bytes()).min()
    }

    fn shutdown(&self) -> Option<BoxFuture<'_, ()>> {
        let all: Vec<_> = self.shards.iter().filter_map(|s| s.shutdown()).collect();
        if all.is_empty() {
            return None;
        }
        Some(Box::pin(async move {
            futures_util::future::join_all(all).await;
        }))
    }
}

/// An [`Emit`] backend over several, routing each envelope as [`Sharded`] does: a
/// group's to its group's shard, a server's to the shard of its node key. Give it the
/// same shards, with the same keys, as the servers.
pub struct ShardedEmit {
    ring: Ring,
    shards: Vec<Arc<dyn Emit>>,
    name: &'static str,
}

impl std::fmt::Debug for ShardedEmit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedEmit")
            .field("ring", &self.ring)
            .field("name", &self.name)
            .finish()
    }
}

impl ShardedEmit {
    /// Shards keyed by position, as [`Sharded::new`]. Fails without shards.
    pub fn new(shards: Vec<Arc<dyn Emit>>) -> Result<Self, GroupError> {
        let keys = Ring::positional(shards.len());
        Self::build(keys, shards)
    }

    /// Shards keyed by name, as [`Sharded::named`]. Fails without shards or with
    /// names repeated.
    pub fn named<S: Into<String>>(shards: Vec<(S, Arc<dyn Emit>)>) -> Result<Self, GroupError> {
        let (keys, shards): (Vec<String>, Vec<_>) =
            shards.into_iter().map(|(k, p)| (k.into(), p)).unzip();
        Self::build(keys, shards)
    }

    fn build(keys: Vec<String>, shards: Vec<Arc<dyn Emit>>) -> Result<Self, GroupError> {
        let addresses = shards.iter().map(|s| s.describe()).collect();
        let ring = Ring::new(keys, addresses).map_err(invalid)?;
        let name = common_name(shards.iter().map(|s| s.name()));
        ring.log("a sharded emitter", "");
        Ok(ShardedEmit { ring, shards, name })
    }

    /// The fingerprint of the shard keys (see [`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        self.ring.fingerprint()
    }
}

impl Emit for ShardedEmit {
    fn name(&self) -> &'static str {
        self.name
    }

    fn publish<'a>(
        &'a self,
        hub: &'a str,
        channel: Channel<'a>,
        envelope: Bytes,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        let i = match channel {
            Channel::Group(g) => self.ring.group(g),
            Channel::Node(n) => self.ring.node(n),
        };
        self.shards[i].publish(hub, channel, envelope)
    }

    fn numbers_pushes(&self) -> bool {
        self.shards.iter().all(|s| s.numbers_pushes())
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), GroupError>> {
        Box::pin(async move {
            futures_util::future::try_join_all(self.shards.iter().map(|s| s.flush()))
                .await
                .map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fixed() {
        // FNV-1a 64 of "a": the published test vector.
        assert_eq!(fnv1a64(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        // Pinned: a change here moves every group of every deployment.
        let keys = ["0", "1", "2"];
        let pinned: Vec<usize> = [
            "lobby",
            "room-1",
            "room-2",
            "$user/ann",
            "$node/0000000000000001",
        ]
        .iter()
        .map(|k| shard_of(&keys, k).expect("shards"))
        .collect();
        assert_eq!(pinned, PINNED);
        assert_eq!(fingerprint(&keys, &["x", "y", "z"]), PINNED_FINGERPRINT);
    }

    // Cross-checked with an independent implementation of the same formula.
    const PINNED: [usize; 5] = [1, 2, 2, 0, 1];
    const PINNED_FINGERPRINT: &str = "78946fe1acffe232";

    #[test]
    fn groups_spread_and_move_little_when_a_shard_is_added() {
        let three = ["a", "b", "c"];
        let four = ["a", "b", "c", "d"];
        let mut per = [0usize; 3];
        let mut moved = 0;
        for i in 0..3000 {
            let g = format!("room-{i}");
            let s3 = shard_of(&three, &g).expect("shards");
            per[s3] += 1;
            let s4 = shard_of(&four, &g).expect("shards");
            if s4 != s3 {
                assert_eq!(s4, 3, "a group only moves to the new shard");
                moved += 1;
            }
        }
        assert!(per.iter().all(|n| (800..1200).contains(n)), "{per:?}");
        assert!((550..950).contains(&moved), "{moved} of 3000 moved");
        // The order of named shards does not matter.
        let shuffled = ["c", "a", "b"];
        for i in 0..100 {
            let g = format!("room-{i}");
            let a = three[shard_of(&three, &g).expect("shards")];
            let b = shuffled[shard_of(&shuffled, &g).expect("shards")];
            assert_eq!(a, b);
        }
        // Named: the order does not change the fingerprint; positional: it does.
        assert_eq!(
            fingerprint(&three, &["ha", "hb", "hc"]),
            fingerprint(&shuffled, &["hc", "ha", "hb"])
        );
        assert_ne!(
            fingerprint(&["0", "1"], &["ha", "hb"]),
            fingerprint(&["0", "1"], &["hb", "ha"])
        );
    }

    #[test]
    fn keys_must_be_distinct_and_present() {
        let two = || vec![String::new(), String::new()];
        assert!(Ring::new(vec![], vec![]).is_err());
        assert!(Ring::new(vec!["a".into(), "a".into()], two()).is_err());
        assert!(Ring::new(vec!["a".into(), "b".into()], two()).is_ok());
    }
}
