//! Subject names: the per-hub prefix and the group-name encoding.

use hub_core::NodeId;
use hub_core::relay::Channel;

/// The default first part of every subject; the hub's full name follows it.
pub const DEFAULT_PREFIX: &str = "hub";

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Encodes a group name into one NATS subject token.
///
/// Bytes that are ASCII letters, digits, `-` or `_` are kept; every other byte
/// (`.`, `*`, `>`, `$`, `/`, `%`, any byte of a non-ASCII character...) becomes `%`
/// and two uppercase hex digits. The result is never empty for a valid group name,
/// holds no character that is special in a subject, and different names give
/// different tokens (`%` itself is escaped), so one group is exactly one subject:
///
/// ```
/// assert_eq!(hub_nats::group_token("lobby"), "lobby");
/// assert_eq!(hub_nats::group_token("zone.eu/42"), "zone%2Eeu%2F42");
/// assert_eq!(hub_nats::group_token("a.*"), "a%2E%2A");
/// assert_eq!(hub_nats::group_token("$user/alice"), "%24user%2Falice");
/// assert_eq!(hub_nats::group_token("ü"), "%C3%BC");
/// ```
pub fn group_token(group: &str) -> String {
    let mut out = String::with_capacity(group.len() + 8);
    for b in group.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
    out
}

/// Decodes a [`group_token`] back into the group name (`None` if it is not one).
pub fn decode_group_token(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = token.get(i + 1..i + 3)?;
            if !hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
            {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `prefix` is usable as the start of a subject: one or more `.`-separated
/// tokens of ASCII letters, digits, `-` and `_`.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The subjects of one hub, under `<prefix>.<hub full name>`.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    /// `<prefix>.<hub>`: every subject of the hub starts with it.
    pub(crate) base: String,
    /// `<base>.g.`: group subjects are this plus the group token.
    group_prefix: String,
    /// `<base>.n.`: per-server subjects are this plus the node id.
    node_prefix: String,
    /// `<base>.m.`: a group's membership changes go to this plus the group token.
    members_prefix: String,
    /// `<base>.h.`: with history, the group history stream republishes each group's
    /// envelopes to this plus the group token.
    republish_prefix: String,
    /// `<base>.hb`: heartbeats.
    pub(crate) heartbeat: String,
    /// `<base>.rc`: roll-call queries.
    pub(crate) roll_call: String,
}

impl Subjects {
    /// The subjects of hub `hub` under `prefix`; `None` if the result is not a valid subject.
    pub(crate) fn new(prefix: &str, hub: &str) -> Option<Self> {
        let base = format!("{prefix}.{hub}");
        if !valid_prefix(&base) {
            return None;
        }
        Some(Subjects {
            group_prefix: format!("{base}.g."),
            node_prefix: format!("{base}.n."),
            members_prefix: format!("{base}.m."),
            republish_prefix: format!("{base}.h."),
            heartbeat: format!("{base}.hb"),
            roll_call: format!("{base}.rc"),
            base,
        })
    }

    /// The subject of a group.
    pub(crate) fn group(&self, group: &str) -> String {
        let mut s = String::with_capacity(self.group_prefix.len() + group.len() + 8);
        s.push_str(&self.group_prefix);
        s.push_str(&group_token(group));
        s
    }

    /// Every group subject (what the history stream captures).
    pub(crate) fn all_groups(&self) -> String {
        format!("{}>", self.group_prefix)
    }

    /// Where the history stream republishes every group subject.
    pub(crate) fn all_republished(&self) -> String {
        format!("{}>", self.republish_prefix)
    }

    /// Where the history stream republishes a group's envelopes.
    pub(crate) fn republished(&self, group: &str) -> String {
        format!("{}{}", self.republish_prefix, group_token(group))
    }

    /// The subject of a group's membership changes.
    pub(crate) fn members(&self, group: &str) -> String {
        format!("{}{}", self.members_prefix, group_token(group))
    }

    /// The subject of one server's connections.
    pub(crate) fn node(&self, node: NodeId) -> String {
        format!("{}{node}", self.node_prefix)
    }

    /// The subject of a relay [`Channel`].
    pub(crate) fn channel(&self, channel: Channel<'_>) -> String {
        match channel {
            Channel::Group(g) => self.group(g.as_str()),
            Channel::Node(node) => self.node(node),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_safe_tokens() {
        for name in [
            "lobby",
            "a.b",
            "*",
            ">",
            "a.>",
            "%41",
            "$user/bob",
            "zone:eu/42",
            "ünï",
            "x-y_z",
        ] {
            let t = group_token(name);
            assert!(!t.is_empty());
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'%'),
                "{name:?} -> {t:?}"
            );
            assert_eq!(
                decode_group_token(&t).as_deref(),
                Some(name),
                "{name:?} round trip"
            );
        }
    }

    #[test]
    fn different_names_give_different_tokens() {
        let names = ["a.b", "a%2Eb", "a_b", "a-b", "a*b", "a>b", "A.b", "a.B"];
        let tokens: std::collections::HashSet<String> =
            names.iter().map(|n| group_token(n)).collect();
        assert_eq!(tokens.len(), names.len());
    }

    #[test]
    fn bad_tokens_do_not_decode() {
        for t in ["a.b", "%4", "%zz", "%4g", "a b", "%C3"] {
            assert_eq!(decode_group_token(t), None, "{t:?}");
        }
    }

    #[test]
    fn prefixes() {
        assert!(valid_prefix("hub"));
        assert!(valid_prefix("my-app.hubs_1"));
        for p in ["", ".", "a.", ".a", "a..b", "a.*", "a.>", "a b", "a.$x"] {
            assert!(!valid_prefix(p), "{p:?}");
        }
    }

    #[test]
    fn subject_layout() {
        let s = Subjects::new("hub", "chat.v1.ChatHub").unwrap();
        assert_eq!(s.base, "hub.chat.v1.ChatHub");
        assert_eq!(s.group("room.1"), "hub.chat.v1.ChatHub.g.room%2E1");
        assert_eq!(
            s.node(NodeId(0xab)),
            "hub.chat.v1.ChatHub.n.00000000000000ab"
        );
        assert_eq!(s.republished("room.1"), "hub.chat.v1.ChatHub.h.room%2E1");
        assert_eq!(s.all_groups(), "hub.chat.v1.ChatHub.g.>");
        assert_eq!(s.all_republished(), "hub.chat.v1.ChatHub.h.>");
        assert_eq!(s.heartbeat, "hub.chat.v1.ChatHub.hb");
        assert_eq!(s.roll_call, "hub.chat.v1.ChatHub.rc");
        assert!(Subjects::new("hub", "bad name").is_none());
    }
}
