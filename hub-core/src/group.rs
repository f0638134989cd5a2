use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use crate::quote::quote;

/// The longest group name, in bytes.
pub const MAX_GROUP_NAME_BYTES: usize = 128;

/// A validated group (room) name.
///
/// 1 to [`MAX_GROUP_NAME_BYTES`] bytes of UTF-8 with no whitespace and no control
/// characters. Names starting with `$` are reserved for the framework (for example
/// the per-user groups behind `Context::user`); [`GroupName::new`] refuses them and
/// [`GroupName::reserved`] makes them. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(Arc<str>);

/// Why a string is not a valid group name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidGroupName {
    /// The name is empty.
    #[error("group name is empty")]
    Empty,
    /// The name is longer than [`MAX_GROUP_NAME_BYTES`].
    #[error("group name is {0} bytes long; the limit is {MAX_GROUP_NAME_BYTES}")]
    TooLong(usize),
    /// The name holds whitespace or a control character. Holds the name as
    /// [`crate::quote::quote`] quotes it (a short escaped prefix).
    #[error("group name {0} contains whitespace or a control character")]
    BadCharacter(String),
    /// The name starts with `$`, which is reserved. Holds the quoted name.
    #[error("group name {0} starts with '$', which is reserved for the framework")]
    Reserved(String),
}

impl GroupName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, InvalidGroupName> {
        Self::check(name)?;
        if name.starts_with('$') {
            return Err(InvalidGroupName::Reserved(quote(name).to_string()));
        }
        Ok(GroupName(Arc::from(name)))
    }

    /// A framework-reserved name: `$` + `kind` + `/` + `name`, e.g. `$user/alice`.
    pub fn reserved(kind: &str, name: &str) -> Result<Self, InvalidGroupName> {
        let full = format!("${kind}/{name}");
        Self::check(&full)?;
        Ok(GroupName(Arc::from(full)))
    }

    /// The reserved group of one connection, `$conn/<id>`: pushes to a connection id
    /// go through it on hubs that route them so (`SessionConfig::connection_history`
    /// on the servers, `Emitter::connection_groups` on an emitter).
    pub fn of_connection(id: crate::ConnectionId) -> Self {
        // A connection id is short and has no whitespace: always a valid name.
        GroupName(Arc::from(format!("$conn/{id}")))
    }

    /// Accepts a name that came from another server over a backplane (reserved names included).
    pub fn from_wire(name: &str) -> Result<Self, InvalidGroupName> {
        Self::check(name)?;
        Ok(GroupName(Arc::from(name)))
    }

    fn check(name: &str) -> Result<(), InvalidGroupName> {
        if name.is_empty() {
            return Err(InvalidGroupName::Empty);
        }
        if name.len() > MAX_GROUP_NAME_BYTES {
            return Err(InvalidGroupName::TooLong(name.len()));
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidGroupName::BadCharacter(quote(name).to_string()));
        }
        Ok(())
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Borrow<str> for GroupName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for GroupName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for GroupName {
    type Error = InvalidGroupName;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        GroupName::new(s)
    }
}

impl TryFrom<String> for GroupName {
    type Error = InvalidGroupName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        GroupName::new(&s)
    }
}

impl TryFrom<&String> for GroupName {
    type Error = InvalidGroupName;
    fn try_from(s: &String) -> Result<Self, Self::Error> {
        GroupName::new(s)
    }
}

impl From<&GroupName> for GroupName {
    fn from(g: &GroupName) -> Self {
        g.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for n in [
            "lobby",
            "room-1",
            "a",
            "zone:eu/42",
            "ünïcødé",
            &"x".repeat(128),
        ] {
            assert_eq!(GroupName::new(n).unwrap().as_str(), n);
        }
    }

    #[test]
    fn invalid_names() {
        assert_eq!(GroupName::new(""), Err(InvalidGroupName::Empty));
        assert_eq!(
            GroupName::new(&"x".repeat(129)),
            Err(InvalidGroupName::TooLong(129))
        );
        assert!(matches!(
            GroupName::new("a b"),
            Err(InvalidGroupName::BadCharacter(_))
        ));
        assert!(matches!(
            GroupName::new("a\nb"),
            Err(InvalidGroupName::BadCharacter(_))
        ));
        assert!(matches!(
            GroupName::new("a\u{0}"),
            Err(InvalidGroupName::BadCharacter(_))
        ));
        assert!(matches!(
            GroupName::new("$user/x"),
            Err(InvalidGroupName::Reserved(_))
        ));
    }

    #[test]
    fn reserved_names() {
        let g = GroupName::reserved("user", "alice").unwrap();
        assert_eq!(g.as_str(), "$user/alice");
        assert_eq!(GroupName::from_wire("$user/alice").unwrap(), g);
        assert!(GroupName::reserved("user", "a b").is_err());
        let id = crate::ConnectionId {
            node: crate::NodeId(0x1f),
            local: 7,
        };
        let own = GroupName::of_connection(id);
        assert_eq!(own, GroupName::reserved("conn", &id.to_string()).unwrap());
        assert!(own.as_str().starts_with("$conn/") && own.as_str().ends_with("-7"));
    }
}
