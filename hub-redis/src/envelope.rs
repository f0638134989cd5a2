//! What the subscriber connection receives for one hub: envelopes handed to the
//! hub's [`Inbox`] (the codec and delivery live in `hub_core::remote`); and the signal
//! that tells a hub's supervisor its connections failed.

use bytes::Bytes;
use hub_core::remote::{Inbox, Received, Via};
use tokio::sync::mpsc;

use crate::keys::Keys;

/// Tells the link supervisor that the connection of one epoch is gone.
#[derive(Clone, Debug)]
pub(crate) struct LossSignal {
    /// Which connection generation this sender belongs to (stale signals are ignored).
    pub(crate) epoch: u64,
    /// The supervisor's event queue (bounded; a full queue already holds a signal).
    pub(crate) tx: mpsc::Sender<u64>,
}

impl LossSignal {
    /// Tells the supervisor (never waits; a full queue already holds a signal).
    pub(crate) fn fire(&self) {
        let _ = self.tx.try_send(self.epoch);
    }
}

/// Delivers the messages of one hub's channels to its local members, right on the
/// subscriber connection's reader (the `wire` module routes them by channel): delivery
/// only queues into bounded outboxes and never waits, so no queue is needed between
/// Redis and the members.
pub(crate) struct Inbound {
    /// This hub's channel names.
    pub(crate) keys: Keys,
    /// This server's own channel (another server's is subscribed while this one
    /// holds a session restored from there).
    pub(crate) node_channel: String,
    /// Delivery, own-origin skipping, counters.
    pub(crate) inbox: Inbox,
}

impl Inbound {
    /// Handles one pub/sub message; `None` for a channel that is not this hub's.
    pub(crate) fn receive(&self, channel: &[u8], payload: Bytes) -> Option<Received> {
        let via = match self.keys.group_of_channel(channel) {
            Some(group) => Via::Group(std::str::from_utf8(group).ok()?),
            None if channel == self.node_channel.as_bytes() => Via::Node,
            // Another server's channel, subscribed while a session restored here has
            // an id naming it.
            None if self.keys.is_node_channel(channel) => Via::Node,
            None => return None,
        };
        Some(self.inbox.receive(payload, via))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::remote::EnvelopeWriter;
    use hub_core::{BackplaneEvents, ConnectionId, HubMetrics, LocalGroups, NodeId, Target};
    use std::sync::Arc;

    #[test]
    fn channels_map_to_groups_and_this_server() {
        let local = Arc::new(LocalGroups::new(NodeId(2)));
        let keys = Keys::new("hub", "t.v1.T");
        let inbound = Inbound {
            node_channel: keys.node_channel(NodeId(2)),
            keys,
            inbox: Inbox::new(
                "t.v1.T",
                local,
                Arc::new(HubMetrics::default()),
                BackplaneEvents::ignored(),
            ),
        };
        let other = EnvelopeWriter::new(NodeId(9));
        let room = hub_core::GroupName::new("room").expect("valid");
        let env = other.group(&room, &Target::All, &Bytes::new());
        let channel = inbound.keys.group_channel("room");
        assert_eq!(
            inbound.receive(channel.as_bytes(), env.clone()),
            Some(Received::Delivered)
        );
        // A group envelope on another group's channel is refused.
        let hall = inbound.keys.group_channel("hall");
        assert!(matches!(
            inbound.receive(hall.as_bytes(), env),
            Some(Received::Malformed(_))
        ));
        let id = ConnectionId {
            node: NodeId(2),
            local: 1,
        };
        let direct = other.connections(&[id], &Bytes::new());
        let node = inbound.node_channel.clone();
        assert_eq!(
            inbound.receive(node.as_bytes(), direct),
            Some(Received::Delivered)
        );
        assert_eq!(inbound.receive(b"elsewhere", Bytes::new()), None);
    }
}
