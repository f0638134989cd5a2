//! Sessions shared through the backplane: the record a hub server keeps of each
//! session it holds, so that another server can resume the session after its stream
//! dropped, even when the server that held it died.
//!
//! The record names the connection, its identity, its group memberships and the
//! server holding it, and a hash of the resume credential's secret (never the
//! secret). A backend keeps it with `save_session` and its siblings (methods of the
//! relay module's `Presence`), whose defaults mean "no shared sessions": another
//! server then answers a resume with `UNKNOWN`, as a server without the record must.

use prost::Message as _;
use sha2::{Digest, Sha256};

use crate::{ConnectionId, GroupName, NodeId, proto};

/// One group membership of a session, with the group's position when it joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionGroup {
    /// The group (reserved `$user:` groups included).
    pub group: GroupName,
    /// The group's offset and epoch when the session joined it (`(0, 0)`: before its
    /// first push), if the backplane keeps the group's history.
    pub joined_at: Option<(u64, u64)>,
}

/// A session as the backplane keeps it (`hub.v1.SessionRecord`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// The connection id, the same on every server that holds the session.
    pub connection: ConnectionId,
    /// [`hash_secret`] of the resume credential's secret.
    pub secret_sha256: [u8; 32],
    /// The identity the session is bound to.
    pub user: Option<String>,
    /// The hub's full service name.
    pub hub: String,
    /// The server holding the session.
    pub server: NodeId,
    /// Its group memberships, sorted by group.
    pub groups: Vec<SessionGroup>,
}

/// Why a stored session record could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed session record: {0}")]
pub struct MalformedRecord(&'static str);

impl SessionRecord {
    /// The record as `hub.v1.SessionRecord` bytes.
    pub fn encode(&self) -> Vec<u8> {
        proto::SessionRecord {
            connection: self.connection.to_string(),
            secret_sha256: self.secret_sha256.to_vec(),
            user: self.user.clone(),
            hub: self.hub.clone(),
            server: self.server.to_string(),
            groups: self
                .groups
                .iter()
                .map(|g| proto::SessionGroup {
                    group: g.group.to_string(),
                    offset: g.joined_at.map_or(0, |p| p.0),
                    epoch: g.joined_at.map_or(0, |p| p.1),
                    positioned: g.joined_at.is_some(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Reads `hub.v1.SessionRecord` bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, MalformedRecord> {
        let r = proto::SessionRecord::decode(bytes).map_err(|_| MalformedRecord("not protobuf"))?;
        let connection = r
            .connection
            .parse()
            .map_err(|_| MalformedRecord("connection id"))?;
        let secret_sha256 = r
            .secret_sha256
            .try_into()
            .map_err(|_| MalformedRecord("secret hash"))?;
        let server = u64::from_str_radix(&r.server, 16)
            .map(NodeId)
            .map_err(|_| MalformedRecord("server id"))?;
        let groups = r
            .groups
            .into_iter()
            .map(|g| {
                Ok(SessionGroup {
                    group: GroupName::from_wire(&g.group).map_err(|_| MalformedRecord("group"))?,
                    joined_at: (g.positioned || g.offset != 0).then_some((g.offset, g.epoch)),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(SessionRecord {
            connection,
            secret_sha256,
            user: r.user,
            hub: r.hub,
            server,
            groups,
        })
    }
}

/// The hash a record keeps of a credential's secret: SHA-256 of its 16 bytes,
/// big-endian. The secret is 128 random bits, so a plain hash cannot be inverted.
pub fn hash_secret(secret: u128) -> [u8; 32] {
    Sha256::digest(secret.to_be_bytes()).into()
}

/// Whether `secret` hashes to `hash`, comparing in time that does not depend on
/// where they differ.
pub fn secret_matches(secret: u128, hash: &[u8; 32]) -> bool {
    let mine = hash_secret(secret);
    let diff = mine
        .iter()
        .zip(hash.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_secrets_compare() {
        let record = SessionRecord {
            connection: ConnectionId {
                node: NodeId(0xab),
                local: 7,
            },
            secret_sha256: hash_secret(42),
            user: Some("alice".into()),
            hub: "chat.v1.ChatHub".into(),
            server: NodeId(0xcd),
            groups: vec![
                SessionGroup {
                    group: GroupName::reserved("user", "alice").expect("name"),
                    joined_at: None,
                },
                SessionGroup {
                    group: GroupName::new("room").expect("name"),
                    joined_at: Some((5, 9)),
                },
            ],
        };
        assert_eq!(
            SessionRecord::decode(&record.encode()).expect("decodes"),
            record
        );
        assert!(secret_matches(42, &record.secret_sha256));
        assert!(!secret_matches(43, &record.secret_sha256));
        assert!(SessionRecord::decode(b"\x0a\x03abc").is_err());
    }
}
