//! Names of the channels and keys one hub uses in Redis, and the cluster slot of a key.

use hub_core::NodeId;
use hub_core::relay::Channel;

/// The channels and keys of one hub, all under `{prefix}:{hub}` (the "base").
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// `{prefix}:{hub}:g:`: a group's channel is this plus the group name.
    group_channel_prefix: String,
    /// `{prefix}:{hub}:node:`: a server's channel is this plus its node id.
    node_channel_prefix: String,
    /// `{prefix}:{hub}:nodes`: the sorted set of live server incarnations.
    nodes: String,
    /// `{prefix}:{hub}`.
    base: String,
}

impl Keys {
    /// The names for `hub` under `prefix`.
    pub(crate) fn new(prefix: &str, hub: &str) -> Self {
        let base = format!("{prefix}:{hub}");
        Keys {
            group_channel_prefix: format!("{base}:g:"),
            node_channel_prefix: format!("{base}:node:"),
            nodes: format!("{base}:nodes"),
            base,
        }
    }

    /// The pub/sub channel of a group: `{base}:g:{group}`.
    pub(crate) fn group_channel(&self, group: &str) -> String {
        let mut s = String::with_capacity(self.group_channel_prefix.len() + group.len());
        s.push_str(&self.group_channel_prefix);
        s.push_str(group);
        s
    }

    /// The group a channel belongs to, if it is a group channel of this hub.
    pub(crate) fn group_of_channel<'a>(&self, channel: &'a [u8]) -> Option<&'a [u8]> {
        channel.strip_prefix(self.group_channel_prefix.as_bytes())
    }

    /// The pub/sub channel of one server (sends to its connections): `{base}:node:{node}`.
    pub(crate) fn node_channel(&self, node: NodeId) -> String {
        format!("{}{node}", self.node_channel_prefix)
    }

    /// Whether `channel` is a server's channel of this hub (`{base}:node:{node}`).
    pub(crate) fn is_node_channel(&self, channel: &[u8]) -> bool {
        channel
            .strip_prefix(self.node_channel_prefix.as_bytes())
            .is_some_and(|node| !node.is_empty() && node.iter().all(u8::is_ascii_hexdigit))
    }

    /// The Redis channel of a relay [`Channel`].
    pub(crate) fn channel(&self, channel: Channel<'_>) -> String {
        match channel {
            Channel::Group(g) => self.group_channel(g.as_str()),
            Channel::Node(node) => self.node_channel(node),
        }
    }

    /// The sorted set of live server incarnations (`{node}:{inc}`, scored by expiry time).
    pub(crate) fn nodes(&self) -> &str {
        &self.nodes
    }

    /// The hash `{node}:{inc}` -> number of members of `group` on that server.
    ///
    /// The `{g:..}` hash tag keeps a group's two keys in one cluster slot, so one
    /// script can update both.
    pub(crate) fn count(&self, group: &str) -> String {
        format!("{}:count:{{g:{group}}}", self.base)
    }

    /// The hash of `group`'s push offset (`o`) and its epoch (`e`).
    ///
    /// Its hash tag is `{g:GROUP}`; with sharded pub/sub, a tag in the slot of the
    /// group's channel instead, since a script may only `SPUBLISH` to a channel of the
    /// slot of its keys.
    pub(crate) fn offsets(&self, group: &str, sharded: bool) -> String {
        format!(
            "{}:offset:{{{}}}",
            self.base,
            self.group_tag(group, sharded)
        )
    }

    /// The stream of `group`'s recent envelopes (with history on), entry ids
    /// `<offset>-1`; same hash tag as the offset hash.
    pub(crate) fn history(&self, group: &str, sharded: bool) -> String {
        format!(
            "{}:history:{{{}}}",
            self.base,
            self.group_tag(group, sharded)
        )
    }

    /// The hash tag of a group's offset and history keys.
    fn group_tag(&self, group: &str, sharded: bool) -> String {
        if !sharded {
            return format!("g:{group}");
        }
        let channel = self.group_channel(group);
        let source = slot_source(channel.as_bytes());
        match std::str::from_utf8(source) {
            Ok(s) if !s.contains('}') && !s.is_empty() => s.to_owned(),
            // A name whose hashed part holds a `}`: any tag of the same slot.
            _ => tag_of_slot(slot(channel.as_bytes())),
        }
    }

    /// The hash connection id -> `{inc}` or `{inc}|{user}` of the members of `group`.
    pub(crate) fn members(&self, group: &str) -> String {
        format!("{}:members:{{g:{group}}}", self.base)
    }

    /// The set of groups one server incarnation has members in (for clean-up after it dies).
    pub(crate) fn node_groups(&self, node: NodeId, inc: u32) -> String {
        format!("{}:node:{node}:{inc:08x}:groups", self.base)
    }

    /// The hash of one session's record (`r`) and the server holding it (`s`). The
    /// `{s:..}` hash tag puts each session in a slot of its own choosing.
    pub(crate) fn session(&self, connection: &str) -> String {
        format!("{}:session:{{s:{connection}}}", self.base)
    }

    /// A short-lived lock so only one live server cleans up after a dead one.
    pub(crate) fn purge_lock(&self, incarnation: &str) -> String {
        format!("{}:purge:{incarnation}", self.base)
    }
}

/// The name of one registration of a server in the live set: `{node}:{inc as 8 hex digits}`.
pub(crate) fn incarnation(node: NodeId, inc: u32) -> String {
    format!("{node}:{inc:08x}")
}

/// The Redis Cluster slot of a key or sharded channel: CRC16 (XMODEM) of the key, or
/// of its hash tag (the text between the first `{` and the next `}`, if not empty),
/// modulo 16384.
pub(crate) fn slot(key: &[u8]) -> u16 {
    crc16_xmodem(slot_source(key)) % 16384
}

/// The part of a key Redis Cluster hashes: its hash tag, or all of it.
fn slot_source(key: &[u8]) -> &[u8] {
    match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(0) | None => key,
            Some(len) => &key[open + 1..open + 1 + len],
        },
        None => key,
    }
}

/// A short hash tag (`s<n>`) whose slot is `slot`: found by trying, about 16384
/// CRCs of a few bytes at worst (for group names with a `}` only).
fn tag_of_slot(slot: u16) -> String {
    (0u32..)
        .map(|n| format!("s{n}"))
        .find(|t| crc16_xmodem(t.as_bytes()) % 16384 == slot)
        .expect("every slot has a tag")
}

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0), bit by bit: keys are short.
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let k = Keys::new("hub", "chat.v1.ChatHub");
        assert_eq!(k.group_channel("lobby"), "hub:chat.v1.ChatHub:g:lobby");
        assert_eq!(
            k.node_channel(NodeId(0xab)),
            "hub:chat.v1.ChatHub:node:00000000000000ab"
        );
        assert_eq!(k.nodes(), "hub:chat.v1.ChatHub:nodes");
        assert_eq!(k.count("lobby"), "hub:chat.v1.ChatHub:count:{g:lobby}");
        assert_eq!(k.members("lobby"), "hub:chat.v1.ChatHub:members:{g:lobby}");
        assert_eq!(
            k.history("lobby", false),
            "hub:chat.v1.ChatHub:history:{g:lobby}"
        );
        assert_eq!(
            k.offsets("lobby", true),
            "hub:chat.v1.ChatHub:offset:{hub:chat.v1.ChatHub:g:lobby}"
        );
        assert_eq!(
            k.node_groups(NodeId(1), 2),
            "hub:chat.v1.ChatHub:node:0000000000000001:00000002:groups"
        );
        assert_eq!(incarnation(NodeId(1), 0x2a), "0000000000000001:0000002a");
        assert_eq!(
            k.group_of_channel(b"hub:chat.v1.ChatHub:g:$user/al:ice"),
            Some(&b"$user/al:ice"[..])
        );
        assert_eq!(k.group_of_channel(b"hub:other.Hub:g:lobby"), None);
    }

    #[test]
    fn crc16_check_value() {
        // The standard check value of CRC-16/XMODEM.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
    }

    #[test]
    fn slots_follow_hash_tags() {
        // Values Redis itself reports with CLUSTER KEYSLOT.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        // A group's count and members keys always share a slot, whatever the name.
        let k = Keys::new("hub", "chat.v1.ChatHub");
        for g in ["lobby", "}x", "a}b", "{x}", "$user/alice", "{a}b}", "{}x}"] {
            assert_eq!(
                slot(k.count(g).as_bytes()),
                slot(k.members(g).as_bytes()),
                "{g}"
            );
            assert_eq!(
                slot(k.offsets(g, false).as_bytes()),
                slot(k.history(g, false).as_bytes()),
                "{g}"
            );
            // Sharded: in the slot of the group's channel too.
            let channel = slot(k.group_channel(g).as_bytes());
            assert_eq!(slot(k.offsets(g, true).as_bytes()), channel, "{g}");
            assert_eq!(slot(k.history(g, true).as_bytes()), channel, "{g}");
        }
    }
}
