//! The envelope on the wire, and what a server does with the ones it receives.

use std::sync::Arc;

use bytes::Bytes;
use hub_core::proto::Envelope;
use hub_core::{HubMetrics, LocalGroups, Target};
use prost::Message;
use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use crate::keys::Keys;

/// The envelope format version this crate writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// Encodes one envelope: the frame bytes are copied once into it, never decoded.
pub(crate) fn encode(origin: &str, group: &str, target: &Target, frame: &Bytes) -> Bytes {
    let env = Envelope {
        version: ENVELOPE_VERSION,
        origin: origin.to_owned(),
        group: group.to_owned(),
        target: Some(target.to_proto()),
        frame: frame.clone(),
    };
    Bytes::from(env.encode_to_vec())
}

/// Tells the link supervisor that the connection of one epoch is gone.
#[derive(Clone, Debug)]
pub(crate) struct LossSignal {
    /// Which connection generation this sender belongs to (stale signals are ignored).
    pub(crate) epoch: u64,
    /// The supervisor's event queue (bounded; a full queue already holds a signal).
    pub(crate) tx: mpsc::Sender<u64>,
}

impl LossSignal {
    fn fire(&self) {
        let _ = self.tx.try_send(self.epoch);
    }
}

impl AsyncPushSender for LossSignal {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        if info.kind == PushKind::Disconnection {
            self.fire();
        }
        Ok(())
    }
}

/// What became of one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    /// Delivered to the selected local members (maybe none).
    Delivered,
    /// Published by this server: skipped.
    Own,
    /// Not a version-1 envelope for this channel: counted and dropped.
    Malformed(&'static str),
    /// Not a channel of this hub.
    Ignored,
}

/// Receives the pushes of the subscriber connection and delivers envelopes to local
/// members right there: delivery only queues into bounded outboxes and never waits,
/// so no queue is needed between Redis and the members.
pub(crate) struct Inbound {
    /// The hub's full name (logs).
    pub(crate) hub: &'static str,
    /// This hub's channel names.
    pub(crate) keys: Keys,
    /// This server's own channel.
    pub(crate) node_channel: String,
    /// This server's id as envelopes carry it (its own envelopes are skipped).
    pub(crate) origin: String,
    /// Where envelopes are delivered.
    pub(crate) local: Arc<LocalGroups>,
    /// `backplane_received` / `backplane_malformed`.
    pub(crate) metrics: Arc<HubMetrics>,
    /// Fired when the connection closes.
    pub(crate) lost: LossSignal,
}

impl Inbound {
    /// Handles one pub/sub message.
    pub(crate) fn receive(&self, channel: &[u8], payload: Bytes) -> Received {
        let outcome = self.deliver(channel, payload);
        match outcome {
            Received::Delivered => HubMetrics::incr(&self.metrics.backplane_received),
            Received::Malformed(why) => {
                HubMetrics::incr(&self.metrics.backplane_malformed);
                tracing::debug!(
                    hub = self.hub,
                    channel = %String::from_utf8_lossy(channel),
                    why,
                    "dropped a malformed envelope"
                );
            }
            Received::Own | Received::Ignored => {}
        }
        outcome
    }

    fn deliver(&self, channel: &[u8], payload: Bytes) -> Received {
        let group = self.keys.group_of_channel(channel);
        if group.is_none() && channel != self.node_channel.as_bytes() {
            return Received::Ignored;
        }
        let Ok(env) = Envelope::decode(payload) else {
            return Received::Malformed("not an Envelope");
        };
        if env.version != ENVELOPE_VERSION {
            return Received::Malformed("unknown envelope version");
        }
        if env.origin == self.origin {
            return Received::Own;
        }
        let target = Target::from_proto(env.target.as_ref());
        match group {
            Some(group) => {
                if group != env.group.as_bytes() {
                    return Received::Malformed("envelope group does not match its channel");
                }
                self.local.deliver(&env.group, &target, &env.frame);
            }
            None if !env.group.is_empty() => {
                // A group send addressed to this server alone.
                self.local.deliver(&env.group, &target, &env.frame);
            }
            None => match target {
                Target::Only(ids) => {
                    let (_, missing) = self.local.deliver_to(&ids, &env.frame);
                    if !missing.is_empty() {
                        tracing::trace!(
                            hub = self.hub,
                            gone = missing.len(),
                            "direct send to connections no longer here"
                        );
                    }
                }
                _ => {
                    return Received::Malformed("a send without a group must name its connections");
                }
            },
        }
        Received::Delivered
    }
}

impl AsyncPushSender for Inbound {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = info.data.into_iter();
                match (data.next(), data.next()) {
                    (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) => {
                        self.receive(&channel, Bytes::from(payload));
                    }
                    _ => {
                        HubMetrics::incr(&self.metrics.backplane_malformed);
                    }
                }
            }
            PushKind::Disconnection => self.lost.fire(),
            other => tracing::trace!(hub = self.hub, kind = ?other, data = ?info.data, "push"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::{
        ConnectionId, Member, Next, NodeId, Outbox, OutboxReceiver, SlowConsumerPolicy,
    };
    use std::future::poll_fn;

    fn inbound() -> (Inbound, Arc<LocalGroups>, Arc<HubMetrics>) {
        let local = Arc::new(LocalGroups::new(NodeId(2)));
        let metrics = Arc::new(HubMetrics::default());
        let (tx, _rx) = mpsc::channel(1);
        let keys = Keys::new("hub", "t.v1.T");
        let inbound = Inbound {
            hub: "t.v1.T",
            node_channel: keys.node_channel(NodeId(2)),
            keys,
            origin: NodeId(2).to_string(),
            local: local.clone(),
            metrics: metrics.clone(),
            lost: LossSignal { epoch: 1, tx },
        };
        (inbound, local, metrics)
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

    #[tokio::test]
    async fn delivers_group_envelopes_and_skips_own() {
        let (inbound, local, metrics) = inbound();
        let (a, mut ra) = member(&local, 1);
        let (b, mut rb) = member(&local, 2);
        let g = hub_core::GroupName::new("room").expect("name");
        local.join(&g, a);
        local.join(&g, b);
        let channel = inbound.keys.group_channel("room");
        let frame_bytes = Bytes::from_static(b"\x08\x01");

        let env = encode(
            &NodeId(9).to_string(),
            "room",
            &Target::Except(Arc::from([b])),
            &frame_bytes,
        );
        assert_eq!(
            inbound.receive(channel.as_bytes(), env),
            Received::Delivered
        );
        assert!(frame(&mut ra).await.is_some());
        assert!(frame(&mut rb).await.is_none());

        let own = encode(&NodeId(2).to_string(), "room", &Target::All, &frame_bytes);
        assert_eq!(inbound.receive(channel.as_bytes(), own), Received::Own);
        assert!(frame(&mut ra).await.is_none());

        assert_eq!(metrics.snapshot().backplane_received, 1);
    }

    #[tokio::test]
    async fn direct_sends_on_the_node_channel() {
        let (inbound, local, _) = inbound();
        let (a, mut ra) = member(&local, 1);
        let env = encode(
            &NodeId(9).to_string(),
            "",
            &Target::Only(Arc::from([a])),
            &Bytes::from_static(b"x"),
        );
        assert_eq!(
            inbound.receive(inbound.node_channel.clone().as_bytes(), env),
            Received::Delivered
        );
        assert!(frame(&mut ra).await.is_some());
    }

    #[test]
    fn malformed_envelopes_are_counted() {
        let (inbound, _, metrics) = inbound();
        let channel = inbound.keys.group_channel("room");
        let garbage = Bytes::from_static(b"\xff\xff\xff");
        assert!(matches!(
            inbound.receive(channel.as_bytes(), garbage),
            Received::Malformed(_)
        ));
        let v2 = Bytes::from(
            Envelope {
                version: 2,
                origin: "x".into(),
                group: "room".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        assert!(matches!(
            inbound.receive(channel.as_bytes(), v2),
            Received::Malformed(_)
        ));
        let wrong_group = encode("x", "other", &Target::All, &Bytes::new());
        assert!(matches!(
            inbound.receive(channel.as_bytes(), wrong_group),
            Received::Malformed(_)
        ));
        let node_all = encode("x", "", &Target::All, &Bytes::new());
        assert!(matches!(
            inbound.receive(inbound.node_channel.clone().as_bytes(), node_all),
            Received::Malformed(_)
        ));
        assert_eq!(
            inbound.receive(b"elsewhere", Bytes::new()),
            Received::Ignored
        );
        assert_eq!(metrics.snapshot().backplane_malformed, 4);
        assert_eq!(metrics.snapshot().backplane_received, 0);
    }
}
