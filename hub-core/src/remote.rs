//! What crosses a backplane, written once for every backend: the versioned
//! `hub.v1.Envelope` codec, the skipping of a server's own envelopes, the split of a
//! send to named connections by server, and the delivery of received envelopes into
//! [`LocalGroups`], with the counters.
//!
//! A backend only moves the bytes this module makes (publish to a channel or subject,
//! subscribe, unsubscribe) and keeps its presence store; see `docs/backends.md`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint};

use crate::command::{Action, Commanded};
use crate::proto;
mod gaps;

pub use gaps::{ReplayHold, Replayed};

use crate::{
    BackplaneEvents, ConnectionId, GroupName, HubMetrics, LocalGroups, MemberInfo, MembersLost,
    NodeId, Target,
};

/// The `hub.v1.Envelope` version written and read.
pub const ENVELOPE_VERSION: u32 = 1;

/// Field numbers of `hub.v1.Envelope`.
const VERSION: u32 = 1;
const ORIGIN: u32 = 2;
const GROUP: u32 = 3;
const TARGET: u32 = 4;
const FRAME: u32 = 5;
const ORIGIN_SEQ: u32 = 12;

/// The most groups a writer keeps a push number of (the most recently published to);
/// one evicted starts again at 1, which receivers take as a new start, not a loss.
pub(crate) const MAX_NUMBERED_GROUPS: usize = 65_536;
/// The most origins an [`Inbox`] keeps the last push number of, per group (the most
/// recently seen).
pub(crate) const MAX_ORIGINS_PER_GROUP: usize = 1_024;
/// Shards of a writer's numbering: pushes to groups of different shards are numbered
/// and published without waiting for each other.
const NUMBER_SHARDS: usize = 64;

/// A map that keeps about the `cap` most recently used keys: two generations, the
/// older dropped whole when the newer is full (an approximate LRU in O(1)).
#[derive(Debug)]
pub(crate) struct Recent<V> {
    cap: usize,
    new: HashMap<Box<str>, V>,
    old: HashMap<Box<str>, V>,
}

impl<V> Recent<V> {
    /// An empty map of at most `cap` keys (at least 2).
    pub(crate) fn new(cap: usize) -> Self {
        Recent {
            cap: cap.max(2),
            new: HashMap::new(),
            old: HashMap::new(),
        }
    }

    /// The value of `key`, now the most recently used.
    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        if !self.new.contains_key(key) {
            let v = self.old.remove(key)?;
            self.insert(key, v);
        }
        self.new.get_mut(key)
    }

    /// Sets `key`, now the most recently used; may drop the least recently used.
    pub(crate) fn insert(&mut self, key: &str, value: V) {
        if let Some(v) = self.new.get_mut(key) {
            *v = value;
            return;
        }
        self.old.remove(key);
        if self.new.len() >= self.cap / 2 {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(Box::from(key), value);
    }

    /// How many keys are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.new.len() + self.old.len()
    }
}

/// The next push number of each group a writer published to recently, by shard.
#[derive(Debug)]
struct Numbering {
    shards: Box<[tokio::sync::Mutex<Recent<u64>>]>,
}

impl Numbering {
    fn new() -> Self {
        Numbering {
            shards: (0..NUMBER_SHARDS)
                .map(|_| tokio::sync::Mutex::new(Recent::new(MAX_NUMBERED_GROUPS / NUMBER_SHARDS)))
                .collect(),
        }
    }

    fn shard(&self, group: &str) -> &tokio::sync::Mutex<Recent<u64>> {
        use std::hash::{BuildHasher, Hasher};
        static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        let mut h = SEED.get_or_init(Default::default).build_hasher();
        h.write(group.as_bytes());
        &self.shards[(h.finish() as usize) % self.shards.len()]
    }
}

/// Writes the envelopes of one server. Its first fields (version and origin) never
/// change, so they are encoded once and copied; the frame is copied once, into the
/// message, and never decoded.
#[derive(Clone, Debug)]
pub struct EnvelopeWriter {
    /// Fields 1 and 2, encoded.
    head: Bytes,
    /// The origin as text.
    origin: Arc<str>,
    /// The push numbers (`origin_seq`) of the groups published to, shared by clones.
    numbers: Arc<Numbering>,
}

impl EnvelopeWriter {
    /// The writer of server `node`.
    pub fn new(node: NodeId) -> Self {
        Self::with_origin(Arc::from(node.to_string()))
    }

    /// The writer of a publisher that is not a hub server (an emitter): its origin is
    /// `emitter/<name>/<16 random hex digits>`, which no server's (16 hex digits)
    /// equals. Receivers only compare origins, so the name is for logs.
    pub fn emitter(name: &str) -> Self {
        let origin = format!("emitter/{name}/{:016x}", rand::random::<u64>());
        Self::with_origin(Arc::from(origin))
    }

    fn with_origin(origin: Arc<str>) -> Self {
        let mut b = BytesMut::with_capacity(8 + origin.len());
        encode_key(VERSION, WireType::Varint, &mut b);
        encode_varint(u64::from(ENVELOPE_VERSION), &mut b);
        put_bytes(ORIGIN, origin.as_bytes(), &mut b);
        EnvelopeWriter {
            head: b.freeze(),
            origin,
            numbers: Arc::new(Numbering::new()),
        }
    }

    /// The origin envelopes carry (a server's node id as 16 hex digits, or an
    /// emitter's `emitter/<name>/<random>`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether `payload` was written by this writer (its own envelopes come back on
    /// the group channels it is subscribed to): a prefix check, no decoding.
    pub fn is_own(&self, payload: &[u8]) -> bool {
        payload.starts_with(&self.head)
    }

    /// A push to the selected members of `group`: the same bytes prost writes.
    pub fn group(&self, group: &GroupName, target: &Target, frame: &Bytes) -> Bytes {
        self.frame(group.as_str(), target, frame)
    }

    /// A push to the selected members of `group` numbered with the group's next
    /// `origin_seq` of this writer, published by `send` before the group's next push
    /// is numbered: the numbers go out in order. When `send` fails the number is
    /// taken back (the push did not go out), so receivers see no gap for it.
    pub async fn numbered<F, Fut>(
        &self,
        group: &str,
        target: &Target,
        frame: &Bytes,
        send: F,
    ) -> Result<(), crate::GroupError>
    where
        F: FnOnce(Bytes) -> Fut,
        Fut: std::future::Future<Output = Result<(), crate::GroupError>>,
    {
        if group.is_empty() {
            return send(self.frame(group, target, frame)).await;
        }
        let mut numbers = self.numbers.shard(group).lock().await;
        let seq = numbers.get_mut(group).map_or(1, |n| *n + 1);
        numbers.insert(group, seq);
        let r = send(self.frame_seq(group, target, frame, seq)).await;
        if r.is_err() {
            numbers.insert(group, seq - 1);
        }
        r
    }

    /// A push to connections of one server, without a group.
    pub fn connections(&self, ids: &[ConnectionId], frame: &Bytes) -> Bytes {
        self.frame("", &Target::Only(Arc::from(ids)), frame)
    }

    /// A push to the selected members of `group`, or (empty group) to the connections
    /// of a [`Target::Only`].
    pub(crate) fn frame(&self, group: &str, target: &Target, frame: &Bytes) -> Bytes {
        self.frame_seq(group, target, frame, 0)
    }

    /// [`Self::frame`] with `origin_seq` (0: none).
    fn frame_seq(&self, group: &str, target: &Target, frame: &Bytes, seq: u64) -> Bytes {
        let spec = target.to_proto();
        let spec_len = spec.encoded_len();
        let head = &self.head;
        let mut b = BytesMut::with_capacity(head.len() + group.len() + spec_len + frame.len() + 36);
        b.put_slice(head);
        if seq != 0 {
            encode_key(ORIGIN_SEQ, WireType::Varint, &mut b);
            encode_varint(seq, &mut b);
        }
        if !group.is_empty() {
            put_bytes(GROUP, group.as_bytes(), &mut b);
        }
        encode_key(TARGET, WireType::LengthDelimited, &mut b);
        encode_varint(spec_len as u64, &mut b);
        spec.encode_raw(&mut b);
        if !frame.is_empty() {
            put_bytes(FRAME, frame, &mut b);
        }
        b.freeze()
    }

    /// A command for the connections `target` selects in `group` (or, with an empty
    /// group, the connections of a [`Target::Only`]).
    pub fn command(&self, group: &str, target: &Target, command: &proto::Command) -> Bytes {
        let env = proto::Envelope {
            version: ENVELOPE_VERSION,
            origin: self.origin.to_string(),
            group: group.to_owned(),
            target: Some(target.to_proto()),
            command: Some(command.clone()),
            ..Default::default()
        };
        Bytes::from(env.encode_to_vec())
    }

    /// An ask to connections of one server (its node channel).
    pub fn ask(&self, ids: &[ConnectionId], ask: &proto::Ask) -> Bytes {
        let env = proto::Envelope {
            version: ENVELOPE_VERSION,
            origin: self.origin.to_string(),
            target: Some(Target::Only(Arc::from(ids)).to_proto()),
            ask: Some(ask.clone()),
            ..Default::default()
        };
        Bytes::from(env.encode_to_vec())
    }

    /// One connection's answer, for the asking server's node channel.
    pub fn answer(&self, answer: &proto::Answer) -> Bytes {
        let env = proto::Envelope {
            version: ENVELOPE_VERSION,
            origin: self.origin.to_string(),
            answer: Some(answer.clone()),
            ..Default::default()
        };
        Bytes::from(env.encode_to_vec())
    }

    /// A notice that members of a group were lost with their server.
    pub fn lost(&self, lost: &MembersLost) -> Bytes {
        let env = proto::Envelope {
            version: ENVELOPE_VERSION,
            origin: self.origin.to_string(),
            group: lost.group.to_string(),
            lost: Some(proto::MembersLost {
                server: lost.server.to_string(),
                members: lost
                    .members
                    .iter()
                    .map(|m| proto::LostMember {
                        connection: m.connection.to_string(),
                        user: m.user.clone(),
                    })
                    .collect(),
            }),
            ..Default::default()
        };
        Bytes::from(env.encode_to_vec())
    }

    /// The most bytes an envelope adds to a frame of a group push whose target names
    /// `ids` connections: what a backend with a message size limit subtracts.
    pub fn overhead(&self, ids: usize) -> usize {
        // Head, origin_seq (key, varint), group (key, length, name), target (key, length, kind, ids of at most
        // 40 bytes each with their key and length), frame key and length.
        self.head.len() + 11 + 3 + crate::MAX_GROUP_NAME_BYTES + 6 + ids * 42 + 6
    }
}

fn put_bytes(tag: u32, value: &[u8], b: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, b);
    encode_varint(value.len() as u64, b);
    b.put_slice(value);
}

/// Where a received envelope came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via<'a> {
    /// A group's channel or subject: the envelope must name this group.
    Group(&'a str),
    /// This server's own channel or subject: sends to its connections.
    Node,
}

/// What became of one received envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Delivered to the selected local members (maybe none).
    Delivered,
    /// A loss notice, reported to the hub.
    Lost,
    /// A command, handed to the hub for the local connections it selects (maybe none).
    Command,
    /// An ask for connections of this server, handed to the hub.
    Ask,
    /// An answer to an ask of this server, handed to the hub.
    Answer,
    /// Published by this server: skipped.
    Own,
    /// After a gap in its group's offsets that is being filled from history: held
    /// back, delivered once the gap is filled or told.
    Held,
    /// Its group offset was already delivered (or told lost): skipped.
    Duplicate,
    /// Not a readable envelope of this version for this channel: counted and dropped.
    Malformed(&'static str),
}

/// Reads what other servers publish and delivers it here: one per bound hub,
/// shared by a backend's reader tasks.
#[derive(Clone, Debug)]
pub struct Inbox {
    /// The hub's full name, for logs.
    hub: &'static str,
    /// This server's writer (its own envelopes are skipped).
    writer: EnvelopeWriter,
    /// Where frames are delivered.
    local: Arc<LocalGroups>,
    /// `backplane_received`, `backplane_malformed`.
    metrics: Arc<HubMetrics>,
    /// Where loss notices go.
    events: BackplaneEvents,
    /// The sequence of offsets of each subscribed group (envelopes that carry one: a
    /// backplane with group offsets), and the fill of a gap running.
    groups: Arc<Mutex<HashMap<String, Arc<gaps::GroupSeq>>>>,
    /// The history gaps are filled from, once the transport gave one.
    history: Arc<std::sync::OnceLock<gaps::HistorySource>>,
    /// Per subscribed group, the last `origin_seq` seen of each origin (envelopes
    /// without a broker offset).
    origins: Arc<Mutex<HashMap<String, Recent<u64>>>>,
    /// Set when group offsets are a shared sequence, not contiguous per group.
    shared_offsets: Arc<std::sync::atomic::AtomicBool>,
    /// The other servers whose channel this server listens on, each with the number
    /// of connections it holds whose ids name that server (sessions restored here).
    adopted: Arc<Mutex<HashMap<NodeId, usize>>>,
}

/// `envelope` as a broker with group offsets hands it over: `offset` (field 8) and
/// `epoch` (field 9), varints, in front (what [`split_offset`] reads back).
pub fn with_offset(offset: u64, epoch: u64, envelope: &Bytes) -> Bytes {
    let mut b = BytesMut::with_capacity(envelope.len() + 22);
    encode_key(8, WireType::Varint, &mut b);
    encode_varint(offset, &mut b);
    encode_key(9, WireType::Varint, &mut b);
    encode_varint(epoch, &mut b);
    b.put_slice(envelope);
    b.freeze()
}

/// The group offset and epoch a broker prepended to an envelope (`offset = 8`,
/// `epoch = 9`, varints, in that order, before `version`), and the envelope after them.
pub fn split_offset(payload: &Bytes) -> (Option<(u64, u64)>, Bytes) {
    fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*at)?;
            *at += 1;
            n |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(n);
            }
        }
        None
    }
    let b = &payload[..];
    if b.first() != Some(&0x40) {
        return (None, payload.clone());
    }
    let mut at = 1;
    let Some(offset) = varint(b, &mut at) else {
        return (None, payload.clone());
    };
    if b.get(at) != Some(&0x48) {
        return (None, payload.clone());
    }
    at += 1;
    let Some(epoch) = varint(b, &mut at) else {
        return (None, payload.clone());
    };
    (Some((offset, epoch)), payload.slice(at..))
}

/// A push frame with its group position appended (`control.position`; protobuf
/// merges the two encodings, so the push keeps its own fields).
pub fn positioned(frame: &Bytes, group: &str, offset: u64, epoch: u64) -> Bytes {
    let position =
        crate::frame::control_frame(proto::server_control::Kind::Position(proto::Position {
            group: group.to_owned(),
            offset,
            epoch,
        }));
    let mut b = BytesMut::with_capacity(frame.len() + position.len());
    b.extend_from_slice(frame);
    b.extend_from_slice(&position);
    b.freeze()
}

impl Inbox {
    /// The inbox of one hub on this server.
    pub fn new(
        hub: &'static str,
        local: Arc<LocalGroups>,
        metrics: Arc<HubMetrics>,
        events: BackplaneEvents,
    ) -> Self {
        Inbox {
            hub,
            writer: EnvelopeWriter::new(local.node()),
            local,
            metrics,
            events,
            groups: Arc::default(),
            history: Arc::default(),
            origins: Arc::default(),
            shared_offsets: Arc::default(),
            adopted: Arc::default(),
        }
    }

    /// Counts one more connection held here whose id names server `node`, another
    /// server (a session restored here): this server listens on `node`'s channel
    /// while it holds any. Returns whether it is the first (the transport subscribes
    /// now).
    pub fn adopt_node(&self, node: NodeId) -> bool {
        let mut adopted = gaps::lock(&self.adopted);
        let n = adopted.entry(node).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Counts one connection fewer of those [`Inbox::adopt_node`] counted (it ended here or
    /// moved on). Returns whether it was the last (the transport unsubscribes now,
    /// unless [`Inbox::is_adopted`] says a new one came meanwhile).
    pub fn release_node(&self, node: NodeId) -> bool {
        let mut adopted = gaps::lock(&self.adopted);
        match adopted.get_mut(&node) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                adopted.remove(&node);
                true
            }
            None => false,
        }
    }

    /// Whether this server holds a connection whose id names server `node` (another
    /// server): whether it listens on `node`'s channel.
    pub fn is_adopted(&self, node: NodeId) -> bool {
        gaps::lock(&self.adopted).contains_key(&node)
    }

    /// The other servers whose channel this server listens on, in node order (a
    /// transport resubscribes them after a reconnect).
    pub fn adopted(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = gaps::lock(&self.adopted).keys().copied().collect();
        nodes.sort();
        nodes
    }

    /// This server's envelope writer.
    pub fn writer(&self) -> &EnvelopeWriter {
        &self.writer
    }

    /// The hub's local members.
    pub fn local(&self) -> &Arc<LocalGroups> {
        &self.local
    }

    /// The hub's counters.
    pub fn metrics(&self) -> &Arc<HubMetrics> {
        &self.metrics
    }

    /// Where a backend reports what its presence store learns (members lost).
    pub fn events(&self) -> &BackplaneEvents {
        &self.events
    }

    /// Handles one received message: skips this server's own, delivers frames to the
    /// selected local members byte for byte, reports loss notices, counts the rest
    /// as malformed.
    ///
    /// A group envelope with an offset goes through the group's sequence first: one
    /// after a gap waits for the gap to be filled from history, or told
    /// ([`Received::Held`]), one already delivered is skipped ([`Received::Duplicate`]).
    pub fn receive(&self, payload: Bytes, via: Via<'_>) -> Received {
        let (offset, payload) = split_offset(&payload);
        if let (Some((offset, epoch)), Via::Group(group)) = (offset, via) {
            // Own envelopes too: they take offsets of the group like any other.
            return self.sequenced(group, offset, offset.saturating_sub(1), epoch, payload);
        }
        self.dispatch_numbered(payload, via, true)
    }

    /// Delivers one group envelope that came with offset `offset` of `epoch`, in the
    /// group's order, and counts it. With a history, this server's own envelopes are
    /// delivered here too (its members get their group's pushes in offset order, from
    /// the backplane) and the frames carry their position (`ServerControl.position`).
    fn dispatch(&self, payload: Bytes, group: &str, offset: u64, epoch: u64) -> Received {
        let at = self.history.get().is_some().then_some((offset, epoch));
        self.dispatch_at(payload, Via::Group(group), false, at)
    }

    /// Delivers one envelope and counts it; `numbered`: checks its `origin_seq` (no
    /// broker offset numbered it).
    fn dispatch_numbered(&self, payload: Bytes, via: Via<'_>, numbered: bool) -> Received {
        self.dispatch_at(payload, via, numbered, None)
    }

    /// [`Self::dispatch_numbered`]; `at`: the group position its frames carry (and
    /// this server's own envelope is delivered, not skipped).
    fn dispatch_at(
        &self,
        payload: Bytes,
        via: Via<'_>,
        numbered: bool,
        at: Option<(u64, u64)>,
    ) -> Received {
        let outcome = self.handle(payload, via, numbered, at);
        match outcome {
            Received::Delivered
            | Received::Lost
            | Received::Command
            | Received::Ask
            | Received::Answer => HubMetrics::incr(&self.metrics.backplane_received),
            Received::Malformed(why) => {
                HubMetrics::incr(&self.metrics.backplane_malformed);
                tracing::debug!(hub = self.hub, ?via, why, "dropped a malformed envelope");
            }
            Received::Own | Received::Held | Received::Duplicate => {}
        }
        outcome
    }

    fn handle(
        &self,
        payload: Bytes,
        via: Via<'_>,
        numbered: bool,
        at: Option<(u64, u64)>,
    ) -> Received {
        if at.is_none() && self.writer.is_own(&payload) {
            return Received::Own;
        }
        let Ok(env) = proto::Envelope::decode(payload) else {
            return Received::Malformed("not a hub.v1.Envelope");
        };
        if env.version != ENVELOPE_VERSION {
            return Received::Malformed("unknown envelope version");
        }
        // This server's own envelope: applied here already, unless it is a group push
        // whose members get it from the backplane, in the group's order (`at`).
        if *env.origin == *self.writer.origin
            && (at.is_none()
                || env.group.is_empty()
                || env.lost.is_some()
                || env.ask.is_some()
                || env.answer.is_some()
                || env.command.is_some())
        {
            return Received::Own;
        }
        if let Via::Group(group) = via
            && env.group != group
        {
            return Received::Malformed("envelope group does not match its channel");
        }
        if numbered
            && env.origin_seq != 0
            && let Via::Group(group) = via
        {
            self.check_origin_seq(group, &env.origin, env.origin_seq);
        }
        if let Some(lost) = env.lost {
            return self.lost(&env.group, lost);
        }
        if let Some(ask) = env.ask {
            return self.asked(env.target.as_ref(), ask);
        }
        if let Some(answer) = env.answer {
            self.events
                .ask_event(crate::ask::AskEvent::Answered(answer));
            return Received::Answer;
        }
        if let Some(command) = env.command {
            return self.command(&env.group, env.target.as_ref(), command);
        }
        let target = Target::from_proto(env.target.as_ref());
        if env.group.is_empty() {
            let Target::Only(ids) = &target else {
                return Received::Malformed("a send without a group must name its connections");
            };
            // Connections gone meanwhile miss it: delivery is at-most-once.
            let _ = self.local.deliver_to(ids, &env.frame);
        } else if let Some((offset, epoch)) = at {
            let frame = positioned(&env.frame, &env.group, offset, epoch);
            self.local.deliver(&env.group, &target, &frame);
        } else {
            self.local.deliver(&env.group, &target, &env.frame);
        }
        Received::Delivered
    }

    /// Records `seq` as the last push number of `origin` in `group`; one that skips
    /// numbers tells the group's members how many were lost.
    fn check_origin_seq(&self, group: &str, origin: &str, seq: u64) {
        let last = {
            let mut groups = gaps::lock(&self.origins);
            let origins = match groups.get_mut(group) {
                Some(o) => o,
                None => groups
                    .entry(group.to_owned())
                    .or_insert_with(|| Recent::new(MAX_ORIGINS_PER_GROUP)),
            };
            let last = origins.get_mut(origin).map(|l| *l);
            origins.insert(origin, seq);
            last
        };
        // Not seen before: nothing known. Not above the last: its numbering restarted.
        if let Some(last) = last
            && seq > last + 1
        {
            let missed = seq - last - 1;
            self.tell_lost(
                group,
                missed,
                format!(
                    "{missed} push(es) of one publisher to the group (its numbers {} to {}) never reached this server",
                    last + 1,
                    seq - 1
                ),
            );
        }
    }

    /// Hands a command to the hub with the local connections it selects: the members
    /// of the group `target` selects, or (without a group) the connections named
    /// that are on this server.
    fn command(
        &self,
        group: &str,
        target: Option<&proto::TargetSpec>,
        command: proto::Command,
    ) -> Received {
        use proto::command::Kind;
        let (action, user) = match command.kind {
            Some(Kind::Disconnect(d)) => (
                Action::Disconnect {
                    code: tonic::Code::from(d.code),
                    reason: d.reason,
                },
                None,
            ),
            Some(Kind::Leave(l)) => match GroupName::new(group) {
                Ok(group) => (Action::Leave { group }, l.user),
                Err(_) => {
                    return Received::Malformed(
                        "a leave command needs a group that is not reserved",
                    );
                }
            },
            Some(Kind::Takeover(t)) => match u64::from_str_radix(&t.server, 16) {
                Ok(server) if group.is_empty() => (
                    Action::Takeover {
                        server: NodeId(server),
                    },
                    None,
                ),
                _ => {
                    return Received::Malformed(
                        "a takeover names its connections and the server taking them",
                    );
                }
            },
            None => return Received::Malformed("a command of an unknown kind"),
        };
        let target = Target::from_proto(target);
        let mut members: Vec<MemberInfo> = if group.is_empty() {
            let Target::Only(ids) = &target else {
                return Received::Malformed("a command without a group must name its connections");
            };
            ids.iter()
                .filter_map(|id| self.local.member(*id))
                .map(|m| MemberInfo {
                    connection: m.id,
                    user: m.user.as_deref().map(str::to_owned),
                })
                .collect()
        } else {
            self.local
                .members(group)
                .into_iter()
                .filter(|m| target.selects(&m.connection))
                .collect()
        };
        if let Some(user) = user {
            members.retain(|m| m.user.as_deref() == Some(user.as_str()));
        }
        members.sort();
        members.dedup();
        if !members.is_empty() {
            tracing::debug!(
                hub = self.hub,
                ?action,
                connections = members.len(),
                "command received"
            );
            self.events.commanded(Commanded { action, members });
        }
        Received::Command
    }

    /// Hands an ask for connections of this server to the runtime.
    fn asked(&self, target: Option<&proto::TargetSpec>, ask: proto::Ask) -> Received {
        let (Target::Only(ids), Ok(node)) = (
            Target::from_proto(target),
            u64::from_str_radix(&ask.reply_to, 16),
        ) else {
            return Received::Malformed("an ask must name its connections and its asker");
        };
        // The connections this server answers for: those it holds (an id of another
        // server too, a session restored here), and its own ids that did not move to
        // another server (answered "not connected"). The others are another server's.
        let connections: Vec<ConnectionId> = ids
            .iter()
            .filter(|id| self.local.answers_for(**id))
            .copied()
            .collect();
        if connections.is_empty() {
            return Received::Ask;
        }
        self.events
            .ask_event(crate::ask::AskEvent::Asked(crate::ask::RemoteAsk {
                id: ask.id,
                reply_to: NodeId(node),
                timeout: std::time::Duration::from_millis(ask.timeout_ms),
                frame: ask.frame,
                connections,
            }));
        Received::Ask
    }

    fn lost(&self, group: &str, lost: proto::MembersLost) -> Received {
        let (Ok(group), Ok(server)) = (
            GroupName::from_wire(group),
            u64::from_str_radix(&lost.server, 16),
        ) else {
            return Received::Malformed("a loss notice without a valid group and server");
        };
        let mut members: Vec<MemberInfo> = lost
            .members
            .into_iter()
            .filter_map(|m| {
                Some(MemberInfo {
                    connection: m.connection.parse().ok()?,
                    user: m.user,
                })
            })
            .collect();
        members.sort();
        // Whoever waits for answers from that server stops waiting.
        self.events.server_dead(NodeId(server));
        if self.local.count(group.as_str()) > 0 {
            self.events.members_lost(MembersLost {
                group,
                server: NodeId(server),
                members,
            });
        }
        Received::Lost
    }
}

/// The connections of `ids` on other servers than `me`, by server, in node order:
/// a send to named connections is one message per server holding some of them.
pub fn by_server(me: NodeId, ids: &[ConnectionId]) -> BTreeMap<NodeId, Vec<ConnectionId>> {
    let mut out: BTreeMap<NodeId, Vec<ConnectionId>> = BTreeMap::new();
    for id in ids.iter().filter(|id| id.node != me) {
        out.entry(id.node).or_default().push(*id);
    }
    out
}

/// [`by_server`], with the ids of this server that moved to another server (their
/// session was restored there, [`LocalGroups::moved_to`]) kept, under this server's
/// own channel, which the server holding them listens on.
pub fn by_server_moved(
    local: &LocalGroups,
    ids: &[ConnectionId],
) -> BTreeMap<NodeId, Vec<ConnectionId>> {
    let me = local.node();
    let mut out = by_server(me, ids);
    let moved: Vec<ConnectionId> = ids
        .iter()
        .filter(|id| id.node == me && local.moved_to(**id).is_some())
        .copied()
        .collect();
    if !moved.is_empty() {
        out.insert(me, moved);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Member, Next, Outbox, OutboxReceiver, SlowConsumerPolicy};
    use std::future::poll_fn;
    use std::sync::Mutex;

    fn inbox(node: u64) -> (Inbox, Arc<Mutex<Vec<MembersLost>>>) {
        let local = Arc::new(LocalGroups::new(NodeId(node)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let events = {
            let seen = seen.clone();
            BackplaneEvents::new(move |l| seen.lock().expect("lock").push(l))
        };
        let inbox = Inbox::new("t.v1.T", local, Arc::new(HubMetrics::default()), events);
        (inbox, seen)
    }

    fn member(local: &LocalGroups, n: u64) -> (ConnectionId, OutboxReceiver) {
        let id = ConnectionId {
            node: local.node(),
            local: n,
        };
        let (outbox, rx) = Outbox::new(
            8,
            SlowConsumerPolicy::Disconnect,
            Arc::new(HubMetrics::default()),
        );
        local.register(Member {
            id,
            user: None,
            outbox,
        });
        (id, rx)
    }

    async fn frame(rx: &mut OutboxReceiver) -> Option<Bytes> {
        let next = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            poll_fn(|cx| rx.poll_next(cx)),
        )
        .await;
        match next {
            Ok(Some(Next::Frame(f, _))) => Some(f.bytes),
            _ => None,
        }
    }

    fn room() -> GroupName {
        GroupName::new("room").expect("valid")
    }

    #[test]
    fn the_writer_writes_what_prost_reads() {
        let w = EnvelopeWriter::new(NodeId(9));
        let id = ConnectionId {
            node: NodeId(3),
            local: 4,
        };
        let bytes = w.group(
            &room(),
            &Target::Except(Arc::from([id])),
            &Bytes::from_static(b"f"),
        );
        let env = proto::Envelope::decode(bytes.clone()).expect("decodes");
        assert_eq!(env.version, ENVELOPE_VERSION);
        assert_eq!(env.origin, NodeId(9).to_string());
        assert_eq!(env.group, "room");
        assert_eq!(&env.frame[..], b"f");
        assert_eq!(
            Target::from_proto(env.target.as_ref()),
            Target::Except(Arc::from([id]))
        );
        // prost writes the same bytes.
        assert_eq!(&env.encode_to_vec()[..], &bytes[..]);
        assert!(w.is_own(&bytes));
        assert!(!EnvelopeWriter::new(NodeId(8)).is_own(&bytes));
        assert!(bytes.len() - 1 <= w.overhead(1));
    }

    fn pushes_lost(f: &Bytes) -> Option<proto::PushesLost> {
        #[derive(Clone, PartialEq, prost::Message)]
        struct Control {
            #[prost(message, optional, tag = "15")]
            control: Option<proto::ServerControl>,
        }
        match Control::decode(f.clone()).ok()?.control?.kind? {
            proto::server_control::Kind::PushesLost(p) => Some(p),
            _ => None,
        }
    }

    /// A history in memory: the envelopes of one epoch by offset, or a failure.
    struct FakeHistory {
        epoch: u64,
        /// (offset, prev, envelope).
        entries: Mutex<Vec<(u64, u64, Bytes)>>,
        fail: bool,
    }

    impl crate::history::GroupHistory for FakeHistory {
        fn read<'a>(
            &'a self,
            _group: &'a GroupName,
            q: crate::history::HistoryQuery,
        ) -> crate::BoxFuture<'a, Result<crate::history::HistoryPage, crate::GroupError>> {
            Box::pin(async move {
                if self.fail {
                    return Err(crate::GroupError::Unavailable {
                        backplane: "fake",
                        message: "down".into(),
                        source: None,
                    });
                }
                let all = self.entries.lock().expect("lock");
                let latest = all.iter().map(|e| e.0).max().unwrap_or(0);
                let entries = if q.epoch == self.epoch {
                    all.iter()
                        .filter(|e| e.0 > q.after)
                        .take(q.limit)
                        .map(|(offset, prev, envelope)| crate::history::HistoryEntry {
                            offset: *offset,
                            prev: *prev,
                            envelope: envelope.clone(),
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                Ok(crate::history::HistoryPage {
                    epoch: self.epoch,
                    latest,
                    entries,
                })
            })
        }
    }

    /// An inbox with a history, a member of `room`, and the envelope of each offset
    /// (its frame says the offset).
    fn with_history(
        epoch: u64,
        held: &[u64],
        fail: bool,
    ) -> (Inbox, OutboxReceiver, impl Fn(u64) -> Bytes) {
        let (inbox, _) = inbox(2);
        let (a, ra) = member(inbox.local(), 1);
        inbox.local().join(&room(), a);
        let other = EnvelopeWriter::new(NodeId(9));
        let env = move |n: u64| other.group(&room(), &Target::All, &Bytes::from(vec![n as u8]));
        let history = FakeHistory {
            epoch,
            entries: Mutex::new(held.iter().map(|&n| (n, n - 1, env(n))).collect()),
            fail,
        };
        inbox.set_history(Arc::new(history));
        (inbox, ra, env)
    }

    /// An inbox whose offsets are a shared sequence (as on NATS JetStream), with a
    /// history holding `held` (offset, prev) of `room`, or none.
    fn with_chain(held: Option<&[(u64, u64)]>) -> (Inbox, OutboxReceiver, impl Fn(u64) -> Bytes) {
        let (inbox, _) = inbox(2);
        let (a, ra) = member(inbox.local(), 1);
        inbox.local().join(&room(), a);
        inbox.set_shared_offsets();
        let other = EnvelopeWriter::new(NodeId(9));
        let env = move |n: u64| other.group(&room(), &Target::All, &Bytes::from(vec![n as u8]));
        if let Some(held) = held {
            let history = FakeHistory {
                epoch: 7,
                entries: Mutex::new(held.iter().map(|&(n, p)| (n, p, env(n))).collect()),
                fail: false,
            };
            inbox.set_history(Arc::new(history));
        }
        (inbox, ra, env)
    }

    #[tokio::test]
    async fn chained_offsets_in_order_duplicates_and_a_gap_filled_from_history() {
        // The group's offsets in a sequence shared with other groups: 3, 10, 17, 25, 30.
        let chain = [(3, 0), (10, 3), (17, 10), (25, 17), (30, 25)];
        let (inbox, mut ra, env) = with_chain(Some(&chain));
        let got = |n: u64| Some(positioned(&Bytes::from(vec![n as u8]), "room", n, 7));
        let recv = |n: u64, prev: u64| inbox.receive_chained(env(n), "room", n, prev, 7);
        assert_eq!(recv(3, 0), Received::Delivered);
        // In order: its prev is the last delivered, however far the offset.
        assert_eq!(recv(10, 3), Received::Delivered);
        assert_eq!(recv(10, 3), Received::Duplicate);
        assert_eq!(recv(3, 0), Received::Duplicate);
        // 17 and 25 never came: 30 waits for the fill, which reads them.
        assert_eq!(recv(30, 25), Received::Held);
        for n in [3, 10, 17, 25, 30] {
            assert_eq!(frame(&mut ra).await, got(n), "offset {n}");
        }
        let m = inbox.metrics().snapshot();
        assert_eq!(
            (
                m.backplane_gaps,
                m.backplane_gaps_filled,
                m.backplane_pushes_recovered
            ),
            (0, 1, 2)
        );
        assert_eq!(inbox.position("room"), Some((30, 7)));
    }

    #[tokio::test]
    async fn chained_offsets_trimmed_from_history_are_told_count_unknown() {
        // 17 is gone from history: 25's prev does not chain to 10.
        let (inbox, mut ra, env) = with_chain(Some(&[(25, 17), (30, 25)]));
        let got = |n: u64| Some(positioned(&Bytes::from(vec![n as u8]), "room", n, 7));
        let recv = |n: u64, prev: u64| inbox.receive_chained(env(n), "room", n, prev, 7);
        // The first of a subscription starts the sequence, whatever its prev.
        assert_eq!(recv(10, 3), Received::Delivered);
        assert_eq!(recv(30, 25), Received::Held);
        assert_eq!(frame(&mut ra).await, got(10));
        let notice = pushes_lost(&frame(&mut ra).await.expect("notice")).expect("pushes_lost");
        assert_eq!(notice.missed, 0, "{notice:?}");
        assert_eq!(frame(&mut ra).await, got(25));
        assert_eq!(frame(&mut ra).await, got(30));
        let m = inbox.metrics().snapshot();
        assert_eq!(
            (
                m.backplane_gaps,
                m.backplane_pushes_missed,
                m.backplane_pushes_recovered
            ),
            (1, 0, 1)
        );

        // Without a history: told at once, count unknown, and delivered.
        let (inbox, mut ra, env) = with_chain(None);
        assert_eq!(
            inbox.receive_chained(env(10), "room", 10, 3, 7),
            Received::Delivered
        );
        assert_eq!(
            inbox.receive_chained(env(30), "room", 30, 25, 7),
            Received::Delivered
        );
        assert_eq!(frame(&mut ra).await, Some(Bytes::from(vec![10])));
        let notice = pushes_lost(&frame(&mut ra).await.expect("notice")).expect("pushes_lost");
        assert_eq!(notice.missed, 0, "{notice:?}");
        assert_eq!(frame(&mut ra).await, Some(Bytes::from(vec![30])));
    }

    #[tokio::test]
    async fn a_resumed_member_is_replayed_along_the_chain() {
        let chain = [(3, 0), (10, 3), (17, 10), (25, 17)];
        let (inbox, mut ra, env) = with_chain(Some(&chain));
        let got = |n: u64| Some(positioned(&Bytes::from(vec![n as u8]), "room", n, 7));
        assert_eq!(
            inbox.receive_chained(env(25), "room", 25, 17, 7),
            Received::Delivered
        );
        assert_eq!(frame(&mut ra).await, got(25));
        // A member back after 3: replayed 10 and 17, then 30 live (held meanwhile).
        let (b, mut rb) = member(inbox.local(), 2);
        let hold = inbox.hold(&room()).await.expect("a hold");
        inbox.local().join(&room(), b);
        assert_eq!(
            inbox.receive_chained(env(30), "room", 30, 25, 7),
            Received::Held
        );
        let r = hold.replay(b, (3, 7)).await;
        assert_eq!((r.replayed, r.lost), (3, false), "{r:?}");
        for n in [10, 17, 25, 30] {
            assert_eq!(frame(&mut rb).await, got(n), "offset {n}");
        }
        assert_eq!(frame(&mut ra).await, got(30));
    }

    #[tokio::test]
    async fn gaps_are_filled_from_history_before_later_pushes() {
        let (inbox, mut ra, env) = with_history(7, &[1, 2, 3, 4], false);
        // With a history, frames carry their position.
        let got = |n: u64| Some(positioned(&Bytes::from(vec![n as u8]), "room", n, 7));
        assert_eq!(
            inbox.receive(with_offset(1, 7, &env(1)), Via::Group("room")),
            Received::Delivered
        );
        // 2 and 3 never came: 4 and 5 wait for the fill (which runs on the runtime,
        // not here).
        assert_eq!(
            inbox.receive(with_offset(4, 7, &env(4)), Via::Group("room")),
            Received::Held
        );
        assert_eq!(
            inbox.receive(with_offset(5, 7, &env(5)), Via::Group("room")),
            Received::Held
        );
        for n in 1..=5 {
            assert_eq!(frame(&mut ra).await, got(n), "offset {n}");
        }
        // Later pushes flow again; one already delivered is skipped.
        assert_eq!(
            inbox.receive(with_offset(6, 7, &env(6)), Via::Group("room")),
            Received::Delivered
        );
        assert_eq!(
            inbox.receive(with_offset(6, 7, &env(6)), Via::Group("room")),
            Received::Duplicate
        );
        assert_eq!(frame(&mut ra).await, got(6));
        let m = inbox.metrics().snapshot();
        assert_eq!(
            (
                m.backplane_gaps,
                m.backplane_gaps_filled,
                m.backplane_pushes_recovered,
                m.backplane_received
            ),
            (0, 1, 2, 6)
        );
    }

    #[tokio::test]
    async fn what_history_does_not_hold_is_told_with_its_count() {
        // Offsets 2 and 3 trimmed, 4 held: 2 told, then 4 and 5, in order.
        let (inbox, mut ra, env) = with_history(7, &[4, 5, 6], false);
        // With a history, frames carry their position.
        let got = |n: u64| Some(positioned(&Bytes::from(vec![n as u8]), "room", n, 7));
        inbox.receive(with_offset(1, 7, &env(1)), Via::Group("room"));
        assert_eq!(
            inbox.receive(with_offset(5, 7, &env(5)), Via::Group("room")),
            Received::Held
        );
        assert_eq!(frame(&mut ra).await, got(1));
        let notice = pushes_lost(&frame(&mut ra).await.expect("notice")).expect("pushes_lost");
        assert_eq!(notice.missed, 2, "{notice:?}");
        assert_eq!(frame(&mut ra).await, got(4));
        assert_eq!(frame(&mut ra).await, got(5));
        let m = inbox.metrics().snapshot();
        assert_eq!(
            (
                m.backplane_gaps,
                m.backplane_pushes_missed,
                m.backplane_pushes_recovered
            ),
            (1, 2, 1)
        );

        // A history that cannot be read: the whole gap is told.
        let (inbox, mut ra, env) = with_history(7, &[], true);
        inbox.receive(with_offset(1, 7, &env(1)), Via::Group("room"));
        inbox.receive(with_offset(4, 7, &env(4)), Via::Group("room"));
        assert_eq!(frame(&mut ra).await, got(1));
        let notice = pushes_lost(&frame(&mut ra).await.expect("notice")).expect("pushes_lost");
        assert_eq!(notice.missed, 2);
        assert_eq!(frame(&mut ra).await, got(4));

        // The broker restarted (another epoch in history): told, missed unknown, and the
        // new epoch's sequence starts with what is held.
        let (inbox, mut ra, env) = with_history(8, &[], false);
        inbox.receive(with_offset(1, 7, &env(1)), Via::Group("room"));
        inbox.receive(with_offset(4, 7, &env(4)), Via::Group("room"));
        assert_eq!(frame(&mut ra).await, got(1));
        let notice = pushes_lost(&frame(&mut ra).await.expect("notice")).expect("pushes_lost");
        assert_eq!(notice.missed, 0);
        // 4, received before the restart was known, is delivered; epoch 8 starts at 1.
        assert_eq!(frame(&mut ra).await, got(4));
        assert_eq!(
            inbox.receive(with_offset(1, 8, &env(9)), Via::Group("room")),
            Received::Delivered
        );
        assert_eq!(
            frame(&mut ra).await,
            Some(positioned(&Bytes::from(vec![9]), "room", 1, 8))
        );
        assert_eq!(inbox.metrics().snapshot().backplane_gaps, 1);
    }

    #[tokio::test]
    async fn a_subscription_back_catches_up_from_history() {
        let (inbox, mut ra, env) = with_history(7, &[1, 2, 3], false);
        // With a history, frames carry their position.
        let got = |n: u64| Some(positioned(&Bytes::from(vec![n as u8]), "room", n, 7));
        inbox.receive(with_offset(1, 7, &env(1)), Via::Group("room"));
        assert_eq!(frame(&mut ra).await, got(1));
        // 2 and 3 were published while the subscription was down.
        inbox.catch_up("room");
        // A live one that came meanwhile waits for the catch-up.
        assert_eq!(
            inbox.receive(with_offset(4, 7, &env(4)), Via::Group("room")),
            Received::Held
        );
        for n in 2..=4 {
            assert_eq!(frame(&mut ra).await, got(n));
        }
        // Forgotten (a new subscription): nothing to catch up from.
        inbox.forget("room");
        inbox.catch_up("room");
        assert_eq!(
            inbox.receive(with_offset(9, 7, &env(9)), Via::Group("room")),
            Received::Delivered
        );
        assert_eq!(frame(&mut ra).await, got(9));
        assert_eq!(inbox.metrics().snapshot().backplane_gaps, 0);
    }

    #[tokio::test]
    async fn a_resumed_member_gets_what_it_missed_then_the_live_pushes_once_in_order() {
        let (inbox, mut ra, env) = with_history(7, &[1, 2, 3, 4, 5], false);
        let got = |n: u64| Some(positioned(&Bytes::from(vec![n as u8]), "room", n, 7));
        for n in 1..=3 {
            inbox.receive(with_offset(n, 7, &env(n)), Via::Group("room"));
            assert_eq!(frame(&mut ra).await, got(n));
        }
        assert_eq!(inbox.position("room"), Some((3, 7)));
        // A session that last saw 1 resumes here: the group is held while it joins
        // and reads; 4 comes live meanwhile and waits.
        let hold = inbox.hold(&room()).await.expect("a hold");
        let (b, mut rb) = member(inbox.local(), 2);
        inbox.local().join(&room(), b);
        assert_eq!(
            inbox.receive(with_offset(4, 7, &env(4)), Via::Group("room")),
            Received::Held
        );
        let report = hold.replay(b, (1, 7)).await;
        assert_eq!(
            report,
            Replayed {
                replayed: 2,
                missed: 0,
                lost: false
            }
        );
        // Replayed up to where the others were (2, 3), then the live one, each once.
        for n in 2..=4 {
            assert_eq!(frame(&mut rb).await, got(n), "offset {n}");
        }
        assert_eq!(frame(&mut rb).await, None);
        assert_eq!(frame(&mut ra).await, got(4));
        assert_eq!(frame(&mut ra).await, None);
        // A hold dropped without a replay lets the group go on.
        let hold = inbox.hold(&room()).await.expect("a hold");
        assert_eq!(
            inbox.receive(with_offset(5, 7, &env(5)), Via::Group("room")),
            Received::Held
        );
        drop(hold);
        assert_eq!(frame(&mut ra).await, got(5));
        assert_eq!(frame(&mut rb).await, got(5));
        // A hold on a group nobody here joins leaves nothing behind once dropped.
        let other = GroupName::new("elsewhere").expect("name");
        drop(inbox.hold(&other).await.expect("a hold"));
        assert_eq!(inbox.position("elsewhere"), None);
        assert!(!gaps::lock(&inbox.groups).contains_key("elsewhere"));
    }

    #[tokio::test]
    async fn a_hold_waits_for_the_gap_fill_running_and_replays_after_it() {
        let (inbox, mut ra, env) = with_history(7, &[1, 2, 3, 4], false);
        let got = |n: u64| Some(positioned(&Bytes::from(vec![n as u8]), "room", n, 7));
        inbox.receive(with_offset(1, 7, &env(1)), Via::Group("room"));
        // 2 and 3 never came: a fill starts (on a task) and 4 waits behind it.
        assert_eq!(
            inbox.receive(with_offset(4, 7, &env(4)), Via::Group("room")),
            Received::Held
        );
        // The hold waits for that fill, then replays from where the fill left off.
        let hold = inbox.hold(&room()).await.expect("a hold");
        assert_eq!(inbox.position("room"), Some((4, 7)));
        let (b, mut rb) = member(inbox.local(), 2);
        inbox.local().join(&room(), b);
        let report = hold.replay(b, (2, 7)).await;
        assert_eq!((report.replayed, report.missed), (2, 0));
        for n in 1..=4 {
            assert_eq!(frame(&mut ra).await, got(n), "offset {n}");
        }
        for n in 3..=4 {
            assert_eq!(frame(&mut rb).await, got(n), "offset {n}");
        }
        assert_eq!(frame(&mut rb).await, None);
    }

    #[tokio::test]
    async fn a_resumed_member_of_a_new_subscription_is_replayed_up_to_the_first_live_push() {
        let (inbox, mut ra, env) = with_history(7, &[1, 2, 3, 4, 5], false);
        let got = |n: u64| Some(positioned(&Bytes::from(vec![n as u8]), "room", n, 7));
        let hold = inbox.hold(&room()).await.expect("a hold");
        // The join subscribes anew: the hold stays, the sequence starts afresh.
        inbox.forget("room");
        let (b, mut rb) = member(inbox.local(), 2);
        inbox.local().join(&room(), b);
        assert_eq!(
            inbox.receive(with_offset(5, 7, &env(5)), Via::Group("room")),
            Received::Held
        );
        let report = hold.replay(b, (2, 7)).await;
        assert_eq!((report.replayed, report.missed), (2, 0));
        for n in 3..=5 {
            assert_eq!(frame(&mut rb).await, got(n), "offset {n}");
        }
        assert_eq!(frame(&mut rb).await, None);
        // The member already here gets the live one only.
        assert_eq!(frame(&mut ra).await, got(5));
        assert_eq!(inbox.position("room"), Some((5, 7)));
    }

    #[tokio::test]
    async fn a_replay_history_no_longer_covers_is_told_to_that_member_only() {
        // 2 and 3 trimmed.
        let (inbox, mut ra, env) = with_history(7, &[4, 5], false);
        for n in 1..=5 {
            inbox.receive(with_offset(n, 7, &env(n)), Via::Group("room"));
        }
        for _ in 1..=5 {
            assert!(frame(&mut ra).await.is_some());
        }
        let hold = inbox.hold(&room()).await.expect("a hold");
        let (b, mut rb) = member(inbox.local(), 2);
        inbox.local().join(&room(), b);
        let report = hold.replay(b, (1, 7)).await;
        assert_eq!((report.replayed, report.missed, report.lost), (2, 2, true));
        let frames: Vec<Bytes> = [
            frame(&mut rb).await,
            frame(&mut rb).await,
            frame(&mut rb).await,
        ]
        .into_iter()
        .map(|f| f.expect("a frame"))
        .collect();
        assert_eq!(
            frames[..2],
            [
                positioned(&Bytes::from(vec![4]), "room", 4, 7),
                positioned(&Bytes::from(vec![5]), "room", 5, 7)
            ]
        );
        let notice = pushes_lost(&frames[2]).expect("pushes_lost");
        assert_eq!((notice.group.as_str(), notice.missed), ("room", 2));
        assert_eq!(frame(&mut ra).await, None);
        // Another epoch than the one the session saw: told, missed unknown.
        let hold = inbox.hold(&room()).await.expect("a hold");
        let report = hold.replay(b, (3, 6)).await;
        assert!(report.lost && report.replayed == 0, "{report:?}");
        let notice = pushes_lost(&frame(&mut rb).await.expect("notice")).expect("pushes_lost");
        assert_eq!(notice.missed, 0);
    }

    #[tokio::test]
    async fn with_history_own_group_pushes_come_back_in_the_groups_order() {
        let (inbox, mut ra, env) = with_history(7, &[], false);
        let own = inbox
            .writer()
            .group(&room(), &Target::All, &Bytes::from(vec![2]));
        inbox.receive(with_offset(1, 7, &env(1)), Via::Group("room"));
        assert_eq!(
            inbox.receive(with_offset(2, 7, &own), Via::Group("room")),
            Received::Delivered
        );
        inbox.receive(with_offset(3, 7, &env(3)), Via::Group("room"));
        for n in 1..=3u8 {
            assert_eq!(
                frame(&mut ra).await,
                Some(positioned(&Bytes::from(vec![n]), "room", u64::from(n), 7))
            );
        }
    }

    #[tokio::test]
    async fn skipped_group_offsets_are_told_to_the_members() {
        let (inbox, _) = inbox(2);
        let (a, mut ra) = member(inbox.local(), 1);
        inbox.local().join(&room(), a);
        let other = EnvelopeWriter::new(NodeId(9));
        let f = Bytes::from_static(b"\x08\x01");
        let env = other.group(&room(), &Target::All, &f);
        let own = inbox.writer().group(&room(), &Target::All, &f);
        // The envelope with its offset decodes as prost reads it, offset and all.
        let decoded = proto::Envelope::decode(with_offset(3, 7, &env)).expect("decodes");
        assert_eq!(
            (decoded.offset, decoded.epoch, decoded.group.as_str()),
            (3, 7, "room")
        );
        for (offset, payload) in [(1, &env), (2, &own), (3, &env)] {
            inbox.receive(with_offset(offset, 7, payload), Via::Group("room"));
        }
        // Own envelopes take offsets too: no gap so far.
        assert_eq!(frame(&mut ra).await, Some(f.clone()));
        assert_eq!(frame(&mut ra).await, Some(f.clone()));
        assert!(frame(&mut ra).await.is_none());
        assert_eq!(inbox.metrics().snapshot().backplane_gaps, 0);
        // Offsets 4 and 5 never came: the member hears of it before the next push.
        inbox.receive(with_offset(6, 7, &env), Via::Group("room"));
        let notice = pushes_lost(&frame(&mut ra).await.expect("notice")).expect("pushes_lost");
        assert_eq!((notice.group.as_str(), notice.missed), ("room", 2));
        assert_eq!(frame(&mut ra).await, Some(f.clone()));
        // A new epoch: the offsets restarted, and that is told too (missed unknown).
        inbox.receive(with_offset(1, 8, &env), Via::Group("room"));
        let notice = pushes_lost(&frame(&mut ra).await.expect("notice")).expect("pushes_lost");
        assert_eq!(notice.missed, 0);
        assert_eq!(frame(&mut ra).await, Some(f.clone()));
        // A new subscription starts afresh.
        inbox.forget("room");
        inbox.receive(with_offset(40, 8, &env), Via::Group("room"));
        assert_eq!(frame(&mut ra).await, Some(f.clone()));
        let m = inbox.metrics().snapshot();
        assert_eq!((m.backplane_gaps, m.backplane_pushes_missed), (2, 2));
    }

    fn seq_of(env: &Bytes) -> u64 {
        proto::Envelope::decode(env.clone())
            .expect("decodes")
            .origin_seq
    }

    #[tokio::test]
    async fn the_writer_numbers_each_groups_pushes_in_order() {
        let w = EnvelopeWriter::new(NodeId(9));
        let f = Bytes::from_static(b"\x08\x01");
        let sent = Mutex::new(Vec::new());
        let send = |env: Bytes| {
            sent.lock().expect("lock").push(env);
            async { Ok(()) }
        };
        for group in ["a", "b", "a", "a", "b"] {
            w.numbered(group, &Target::All, &f, send)
                .await
                .expect("sent");
        }
        // A clone shares the numbers; a failed send gives its number back.
        let clone = w.clone();
        let failed = clone
            .numbered("a", &Target::All, &f, |_| async {
                Err(crate::GroupError::Unavailable {
                    backplane: "test",
                    message: "down".into(),
                    source: None,
                })
            })
            .await;
        assert!(failed.is_err());
        clone
            .numbered("a", &Target::All, &f, send)
            .await
            .expect("sent");
        let got: Vec<(String, u64)> = sent
            .lock()
            .expect("lock")
            .iter()
            .map(|e| {
                let env = proto::Envelope::decode(e.clone()).expect("decodes");
                assert_eq!(env.frame, f);
                (env.group, env.origin_seq)
            })
            .collect();
        let want = [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2), ("a", 4)];
        assert_eq!(
            got,
            want.map(|(g, n)| (g.to_owned(), n)).to_vec(),
            "numbers per group"
        );
        // Own envelopes are still recognised by their head.
        assert!(w.is_own(&w.frame_seq("a", &Target::All, &f, 7)));
        // Unnumbered writes carry no origin_seq.
        assert_eq!(seq_of(&w.group(&room(), &Target::All, &f)), 0);
    }

    #[tokio::test]
    async fn skipped_origin_numbers_are_told_with_their_count() {
        let (inbox, _) = inbox(2);
        let (a, mut ra) = member(inbox.local(), 1);
        inbox.local().join(&room(), a);
        let other = EnvelopeWriter::new(NodeId(9));
        let emitter = EnvelopeWriter::emitter("game");
        let f = Bytes::from_static(b"\x08\x01");
        let of = |w: &EnvelopeWriter, n: u64| w.frame_seq("room", &Target::All, &f, n);
        // First sight of an origin (here at 5): nothing known, just recorded.
        for n in [5, 6] {
            inbox.receive(of(&other, n), Via::Group("room"));
            assert_eq!(frame(&mut ra).await, Some(f.clone()));
        }
        // 7 and 8 never came: told with the count, before the push that shows it.
        inbox.receive(of(&other, 9), Via::Group("room"));
        let notice = pushes_lost(&frame(&mut ra).await.expect("notice")).expect("pushes_lost");
        assert_eq!((notice.group.as_str(), notice.missed), ("room", 2));
        assert_eq!(frame(&mut ra).await, Some(f.clone()));
        // Each origin has its own numbers; own envelopes are skipped as before, and
        // unnumbered ones (0) are not checked.
        inbox.receive(of(&emitter, 1), Via::Group("room"));
        inbox.receive(of(inbox.writer(), 50), Via::Group("room"));
        inbox.receive(of(&other, 0), Via::Group("room"));
        inbox.receive(of(&other, 10), Via::Group("room"));
        for _ in 0..3 {
            assert_eq!(frame(&mut ra).await, Some(f.clone()));
        }
        assert!(frame(&mut ra).await.is_none());
        // A number not above the last: the origin's numbering restarted, not a loss.
        inbox.receive(of(&other, 1), Via::Group("room"));
        inbox.receive(of(&other, 2), Via::Group("room"));
        inbox.receive(of(&emitter, 4), Via::Group("room"));
        assert_eq!(frame(&mut ra).await, Some(f.clone()));
        assert_eq!(frame(&mut ra).await, Some(f.clone()));
        let notice = pushes_lost(&frame(&mut ra).await.expect("notice")).expect("pushes_lost");
        assert_eq!(notice.missed, 2);
        assert_eq!(frame(&mut ra).await, Some(f.clone()));
        // A group forgotten (unsubscribed) starts afresh.
        inbox.forget("room");
        inbox.receive(of(&other, 40), Via::Group("room"));
        assert_eq!(frame(&mut ra).await, Some(f.clone()));
        assert!(frame(&mut ra).await.is_none());
        let m = inbox.metrics().snapshot();
        assert_eq!((m.backplane_gaps, m.backplane_pushes_missed), (2, 4));
    }

    #[tokio::test]
    async fn broker_offsets_take_precedence_over_origin_numbers() {
        let (inbox, _) = inbox(2);
        let (a, mut ra) = member(inbox.local(), 1);
        inbox.local().join(&room(), a);
        let other = EnvelopeWriter::new(NodeId(9));
        let f = Bytes::from_static(b"\x08\x01");
        let of = |n: u64| other.frame_seq("room", &Target::All, &f, n);
        // The offsets follow each other while the origin's numbers skip: no notice.
        for (offset, n) in [(1, 1), (2, 5), (3, 9)] {
            inbox.receive(with_offset(offset, 7, &of(n)), Via::Group("room"));
            assert_eq!(frame(&mut ra).await, Some(f.clone()));
        }
        // The offsets skip: told once, by the offsets' count, not the numbers'.
        inbox.receive(with_offset(5, 7, &of(10)), Via::Group("room"));
        let notice = pushes_lost(&frame(&mut ra).await.expect("notice")).expect("pushes_lost");
        assert_eq!(notice.missed, 1);
        assert_eq!(frame(&mut ra).await, Some(f.clone()));
        assert!(frame(&mut ra).await.is_none());
        let m = inbox.metrics().snapshot();
        assert_eq!((m.backplane_gaps, m.backplane_pushes_missed), (1, 1));
    }

    #[tokio::test]
    async fn origins_kept_per_group_are_bounded() {
        let (inbox, _) = inbox(2);
        let (a, mut ra) = member(inbox.local(), 1);
        inbox.local().join(&room(), a);
        let f = Bytes::from_static(b"\x08\x01");
        let first = EnvelopeWriter::emitter("first");
        inbox.receive(
            first.frame_seq("room", &Target::All, &f, 1),
            Via::Group("room"),
        );
        for i in 0..3 * MAX_ORIGINS_PER_GROUP {
            let w = EnvelopeWriter::emitter(&format!("e{i}"));
            inbox.receive(w.frame_seq("room", &Target::All, &f, 1), Via::Group("room"));
            let kept = gaps::lock(&inbox.origins)["room"].len();
            assert!(kept <= MAX_ORIGINS_PER_GROUP, "{kept} origins kept");
        }
        // The least recently seen was dropped: coming back, it is a first sight.
        inbox.receive(
            first.frame_seq("room", &Target::All, &f, 9),
            Via::Group("room"),
        );
        assert_eq!(inbox.metrics().snapshot().backplane_gaps, 0);
        while frame(&mut ra).await.is_some() {}
        // The most recently seen are kept.
        let mut r = Recent::new(8);
        for i in 0..20u64 {
            r.insert(&i.to_string(), i);
            assert!(r.len() <= 8);
        }
        assert_eq!(r.get_mut("19").copied(), Some(19));
        assert_eq!(r.get_mut("0"), None);
    }

    #[tokio::test]
    async fn delivers_group_envelopes_and_skips_own() {
        let (inbox, _) = inbox(2);
        let (a, mut ra) = member(inbox.local(), 1);
        let (b, mut rb) = member(inbox.local(), 2);
        inbox.local().join(&room(), a);
        inbox.local().join(&room(), b);
        let other = EnvelopeWriter::new(NodeId(9));
        let f = Bytes::from_static(b"\x08\x01");
        let env = other.group(&room(), &Target::Except(Arc::from([b])), &f);
        assert_eq!(inbox.receive(env, Via::Group("room")), Received::Delivered);
        assert_eq!(frame(&mut ra).await, Some(f.clone()));
        assert!(frame(&mut rb).await.is_none());

        let own = inbox.writer().group(&room(), &Target::All, &f);
        assert_eq!(inbox.receive(own, Via::Group("room")), Received::Own);
        assert!(frame(&mut ra).await.is_none());
        assert_eq!(inbox.metrics().snapshot().backplane_received, 1);

        let direct = other.connections(&[a], &f);
        assert_eq!(inbox.receive(direct, Via::Node), Received::Delivered);
        assert_eq!(frame(&mut ra).await, Some(f));
    }

    #[test]
    fn malformed_envelopes_are_counted() {
        let (inbox, _) = inbox(2);
        let other = EnvelopeWriter::new(NodeId(9));
        let bad = [
            Bytes::from_static(b"\xff\xff\xff"),
            Bytes::from(
                proto::Envelope {
                    version: 2,
                    origin: "x".into(),
                    group: "room".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            other.group(
                &GroupName::new("other").expect("valid"),
                &Target::All,
                &Bytes::new(),
            ),
        ];
        for b in bad {
            assert!(matches!(
                inbox.receive(b, Via::Group("room")),
                Received::Malformed(_)
            ));
        }
        let node_all = other.frame("", &Target::All, &Bytes::new());
        assert!(matches!(
            inbox.receive(node_all, Via::Node),
            Received::Malformed(_)
        ));
        assert_eq!(inbox.metrics().snapshot().backplane_malformed, 4);
        assert_eq!(inbox.metrics().snapshot().backplane_received, 0);
    }

    #[test]
    fn asks_for_moved_and_adopted_connections_go_to_their_holder() {
        use crate::ask::AskEvent;
        let local = Arc::new(LocalGroups::new(NodeId(2)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let events = {
            let seen = seen.clone();
            BackplaneEvents::ignored().with_asks(move |e| seen.lock().expect("lock").push(e))
        };
        let inbox = Inbox::new(
            "t.v1.T",
            local.clone(),
            Arc::new(HubMetrics::default()),
            events,
        );
        let id = |node, n| ConnectionId {
            node: NodeId(node),
            local: n,
        };
        // Held here with an id of server 7 (a session restored here); 7's other one.
        let (outbox, _rx) = Outbox::new(
            8,
            SlowConsumerPolicy::Disconnect,
            Arc::new(HubMetrics::default()),
        );
        local.register(Member {
            id: id(7, 1),
            user: None,
            outbox,
        });
        // Ours, moved to server 9; ours, gone.
        local.moved_away(id(2, 1), NodeId(9));
        assert_eq!(local.moved_to(id(2, 1)), Some(NodeId(9)));
        let other = EnvelopeWriter::new(NodeId(5));
        let ask = proto::Ask {
            id: 1,
            reply_to: NodeId(5).to_string(),
            timeout_ms: 100,
            frame: Bytes::new(),
        };
        let all = [id(7, 1), id(7, 2), id(2, 1), id(2, 2)];
        assert_eq!(
            inbox.receive(other.ask(&all, &ask), Via::Node),
            Received::Ask
        );
        // Only others' connections: nothing for the runtime.
        assert_eq!(
            inbox.receive(other.ask(&[id(7, 2), id(2, 1)], &ask), Via::Node),
            Received::Ask
        );
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 1, "{seen:?}");
        match &seen[0] {
            AskEvent::Asked(a) => assert_eq!(a.connections, vec![id(7, 1), id(2, 2)]),
            other => panic!("{other:?}"),
        }
        // Sends to ours that moved go to our own channel (the holder listens there).
        let split = by_server_moved(&local, &all);
        assert_eq!(split.get(&NodeId(2)), Some(&vec![id(2, 1)]));
        assert_eq!(split.get(&NodeId(7)), Some(&vec![id(7, 1), id(7, 2)]));
        // Back here: no longer moved.
        let (outbox, _rx2) = Outbox::new(
            8,
            SlowConsumerPolicy::Disconnect,
            Arc::new(HubMetrics::default()),
        );
        local.register(Member {
            id: id(2, 1),
            user: None,
            outbox,
        });
        assert_eq!(local.moved_to(id(2, 1)), None);
        // Adoptions count per server: the first subscribes, the last unsubscribes.
        assert!(inbox.adopt_node(NodeId(7)));
        assert!(!inbox.adopt_node(NodeId(7)));
        assert_eq!(inbox.adopted(), vec![NodeId(7)]);
        assert!(!inbox.release_node(NodeId(7)));
        assert!(inbox.is_adopted(NodeId(7)));
        assert!(inbox.release_node(NodeId(7)));
        assert!(!inbox.is_adopted(NodeId(7)));
        assert!(!inbox.release_node(NodeId(7)));
    }

    #[test]
    fn asks_answers_and_deaths_reach_the_runtime() {
        use crate::ask::AskEvent;
        let local = Arc::new(LocalGroups::new(NodeId(2)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let events = {
            let seen = seen.clone();
            BackplaneEvents::ignored().with_asks(move |e| seen.lock().expect("lock").push(e))
        };
        let inbox = Inbox::new("t.v1.T", local, Arc::new(HubMetrics::default()), events);
        let other = EnvelopeWriter::new(NodeId(9));
        let mine = ConnectionId {
            node: NodeId(2),
            local: 1,
        };
        let elsewhere = ConnectionId {
            node: NodeId(7),
            local: 1,
        };
        let ask = proto::Ask {
            id: 5,
            reply_to: NodeId(9).to_string(),
            timeout_ms: 1500,
            frame: Bytes::from_static(b"q"),
        };
        assert_eq!(
            inbox.receive(other.ask(&[mine, elsewhere], &ask), Via::Node),
            Received::Ask
        );
        let answer = proto::Answer {
            id: 5,
            connection: mine.to_string(),
            outcome: proto::AnswerOutcome::Answered as i32,
            frame: Bytes::from_static(b"a"),
            ..Default::default()
        };
        assert_eq!(
            inbox.receive(other.answer(&answer), Via::Node),
            Received::Answer
        );
        // An ask that names no asker is malformed.
        let bad = proto::Ask {
            reply_to: "not hex".into(),
            ..ask.clone()
        };
        assert!(matches!(
            inbox.receive(other.ask(&[mine], &bad), Via::Node),
            Received::Malformed(_)
        ));
        // A loss notice says its server died, even with no local member to tell.
        let lost = MembersLost {
            group: room(),
            server: NodeId(7),
            members: vec![MemberInfo {
                connection: elsewhere,
                user: None,
            }],
        };
        assert_eq!(
            inbox.receive(other.lost(&lost), Via::Group("room")),
            Received::Lost
        );
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 3, "{seen:?}");
        match &seen[0] {
            AskEvent::Asked(a) => {
                assert_eq!(
                    (a.id, a.reply_to, a.timeout.as_millis()),
                    (5, NodeId(9), 1500)
                );
                assert_eq!(&a.frame[..], b"q");
                // Only this server's connections.
                assert_eq!(a.connections, vec![mine]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&seen[1], AskEvent::Answered(a) if *a == answer));
        assert!(matches!(seen[2], AskEvent::ServerDead(NodeId(7))));
    }

    #[test]
    fn loss_notices_reach_servers_with_members() {
        let (inbox, seen) = inbox(2);
        let other = EnvelopeWriter::new(NodeId(9));
        let gone = |n| MemberInfo {
            connection: ConnectionId {
                node: NodeId(5),
                local: n,
            },
            user: Some(format!("u{n}")),
        };
        let lost = MembersLost {
            group: room(),
            server: NodeId(5),
            members: vec![gone(1), gone(2)],
        };
        // No local member of the group: nothing to tell.
        assert_eq!(
            inbox.receive(other.lost(&lost), Via::Group("room")),
            Received::Lost
        );
        assert!(seen.lock().expect("lock").is_empty());
        let (a, _ra) = member(inbox.local(), 1);
        inbox.local().join(&room(), a);
        assert_eq!(
            inbox.receive(other.lost(&lost), Via::Group("room")),
            Received::Lost
        );
        assert_eq!(*seen.lock().expect("lock"), vec![lost]);
    }

    #[test]
    fn commands_reach_the_hub_with_the_local_connections_they_select() {
        let local = Arc::new(LocalGroups::new(NodeId(2)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let events = {
            let seen = seen.clone();
            BackplaneEvents::ignored().with_commands(move |c| seen.lock().expect("lock").push(c))
        };
        let inbox = Inbox::new(
            "t.v1.T",
            local.clone(),
            Arc::new(HubMetrics::default()),
            events,
        );
        let (a, _ra) = member(&local, 1);
        let (b, _rb) = member(&local, 2);
        let (c, _rc) = member(&local, 3);
        local.set_user(a, Some(Arc::from("ann")));
        local.set_user(b, Some(Arc::from("bob")));
        for id in [a, b, c] {
            local.join(&room(), id);
        }
        let em = EnvelopeWriter::emitter("test");
        assert!(em.origin().starts_with("emitter/test/"));
        let bye = proto::Command {
            kind: Some(proto::command::Kind::Disconnect(proto::Disconnect {
                code: tonic::Code::PermissionDenied as i32,
                reason: "banned".into(),
            })),
        };
        let leave = |user: Option<&str>| proto::Command {
            kind: Some(proto::command::Kind::Leave(proto::Leave {
                user: user.map(str::to_owned),
            })),
        };
        let info = |id: ConnectionId, user: Option<&str>| MemberInfo {
            connection: id,
            user: user.map(str::to_owned),
        };
        let disconnect = Action::Disconnect {
            code: tonic::Code::PermissionDenied,
            reason: "banned".into(),
        };
        // All but c in the group.
        let env = em.command("room", &Target::Except(Arc::from([c])), &bye);
        assert_eq!(inbox.receive(env, Via::Group("room")), Received::Command);
        // Named connections on the node channel (one of another server: skipped).
        let elsewhere = ConnectionId {
            node: NodeId(7),
            local: 1,
        };
        let env = em.command("", &Target::Only(Arc::from([c, elsewhere])), &bye);
        assert_eq!(inbox.receive(env, Via::Node), Received::Command);
        // A user's members of the group.
        let env = em.command("room", &Target::All, &leave(Some("bob")));
        assert_eq!(inbox.receive(env, Via::Group("room")), Received::Command);
        // Nobody selected here: nothing reaches the hub.
        let env = em.command("room", &Target::All, &leave(Some("nobody")));
        assert_eq!(inbox.receive(env, Via::Group("room")), Received::Command);
        assert_eq!(
            *seen.lock().expect("lock"),
            vec![
                Commanded {
                    action: disconnect.clone(),
                    members: vec![info(a, Some("ann")), info(b, Some("bob"))]
                },
                Commanded {
                    action: disconnect,
                    members: vec![info(c, None)]
                },
                Commanded {
                    action: Action::Leave { group: room() },
                    members: vec![info(b, Some("bob"))]
                },
            ]
        );
        // Malformed: leave of a reserved group, a group-less command to everyone.
        let user_group = GroupName::reserved("user", "ann").expect("valid");
        let env = em.command(user_group.as_str(), &Target::All, &leave(None));
        assert!(matches!(
            inbox.receive(env, Via::Group(user_group.as_str())),
            Received::Malformed(_)
        ));
        let env = em.command("", &Target::All, &bye);
        assert!(matches!(
            inbox.receive(env, Via::Node),
            Received::Malformed(_)
        ));
        assert_eq!(inbox.metrics().snapshot().backplane_received, 4);
        assert_eq!(inbox.metrics().snapshot().backplane_malformed, 2);
    }

    #[test]
    fn sends_split_by_server() {
        let id = |node, local| ConnectionId {
            node: NodeId(node),
            local,
        };
        let split = by_server(NodeId(1), &[id(3, 1), id(1, 1), id(2, 1), id(3, 2)]);
        assert_eq!(
            split.into_iter().collect::<Vec<_>>(),
            vec![
                (NodeId(2), vec![id(2, 1)]),
                (NodeId(3), vec![id(3, 1), id(3, 2)])
            ]
        );
    }
}
