//! The state of one hub bound to NATS, shared by the backplane and its tasks, and
//! the NATS operations they all use (publish with checks, round trips, heartbeats).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use async_nats::Client;
use async_nats::connection::State;
use bytes::Bytes;
use hub_core::remote::Inbox;
use hub_core::{GroupError, GroupName, HubMetrics, NodeId};
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::members::Whereabouts;
use crate::peers::Peers;
use crate::proto::{self, heartbeat::Kind};
use crate::subject::Subjects;
use crate::{BACKPLANE, Config};

/// Locks a std mutex; a panic while it was held cannot leave our maps half-updated
/// (every update is one insert or remove), so a poisoned lock is still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waiters for messages on this hub's reply inbox (`<inbox>.<token>`), by token.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Token → where its messages go.
    waiters: Mutex<HashMap<u64, mpsc::Sender<Bytes>>>,
    /// Source of tokens.
    next: AtomicU64,
    /// Counts answers dropped because a waiter's queue was full.
    metrics: Arc<HubMetrics>,
}

/// Removes a waiter when its query ends, however it ends.
pub(crate) struct PendingGuard<'a> {
    pending: &'a Pending,
    /// The waiter's token (the last token of its reply subject).
    pub(crate) token: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.pending.waiters).remove(&self.token);
    }
}

impl Pending {
    pub(crate) fn new(metrics: Arc<HubMetrics>) -> Self {
        Pending {
            waiters: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            metrics,
        }
    }

    /// A new waiter whose queue holds `capacity` unread messages.
    pub(crate) fn register(&self, capacity: usize) -> (PendingGuard<'_>, mpsc::Receiver<Bytes>) {
        let token = self.next.fetch_add(1, Relaxed);
        let (tx, rx) = mpsc::channel(capacity);
        lock(&self.waiters).insert(token, tx);
        (
            PendingGuard {
                pending: self,
                token,
            },
            rx,
        )
    }

    /// Hands a message to the waiter of `token`, if it still waits.
    pub(crate) fn deliver(&self, token: u64, payload: Bytes) {
        let waiters = lock(&self.waiters);
        if let Some(tx) = waiters.get(&token)
            && tx.try_send(payload).is_err()
        {
            HubMetrics::incr(&self.metrics.backplane_errors);
            tracing::warn!(
                token,
                "dropped a reply: its query has too many unread answers"
            );
        }
    }
}

/// The subscription of one group on this server.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// Stops the reader task of the group's subscriptions, while subscribed (the task
    /// then drops its `Subscriber`s, which unsubscribes). An async lock because it is
    /// held across the subscribe round trip: a second joiner waits for the first
    /// one's subscription instead of returning before it is registered.
    pub(crate) reader: tokio::sync::Mutex<Option<DropGuard>>,
}

/// The state of one hub bound to NATS, shared with its background tasks, which stop
/// when [`Inner::cancel`] is cancelled (the backplane's drop guard does it).
#[derive(Debug)]
pub(crate) struct Inner {
    /// The hub's full name, for logs.
    pub(crate) hub: &'static str,
    /// The provider's NATS connection.
    pub(crate) client: Client,
    /// Timeouts and intervals.
    pub(crate) config: Arc<Config>,
    /// The hub's subjects.
    pub(crate) subjects: Subjects,
    /// This server.
    pub(crate) node: NodeId,
    /// Envelopes: this server's writer, delivery to local members, counters, events.
    pub(crate) inbox: Inbox,
    /// Group → its subscription here. Entries exist while the group has local members
    /// (and briefly around joins and leaves).
    pub(crate) groups: Mutex<HashMap<GroupName, Arc<Slot>>>,
    /// This hub's reply inbox: roll-call answers and round-trip probes come to `<replies>.<token>`.
    pub(crate) replies: String,
    /// Waiters on the reply inbox.
    pub(crate) pending: Arc<Pending>,
    /// The other live servers of this hub.
    pub(crate) peers: Mutex<Peers>,
    /// Who is a member where, for the groups with members here (to tell what a dead
    /// server's members were); shared with the group readers.
    pub(crate) whereabouts: Arc<Mutex<Whereabouts>>,
    /// Set once the hub's own subscriptions (inbox, node, heartbeat, roll call) are made.
    pub(crate) ready: watch::Receiver<bool>,
    /// NATS connections made so far, as last seen (a rise is a reconnect).
    pub(crate) connects: AtomicU64,
    /// Membership changes this server sent (each `MemberChange` carries the next).
    pub(crate) changes: AtomicU64,
    /// The largest message our NATS server takes (`max_payload` of its INFO).
    pub(crate) max_payload: usize,
    /// The group history stream, with [`crate::NatsProviderBuilder::history`].
    pub(crate) history: Option<Arc<crate::history::NatsHistory>>,
    /// Stops every task of this hub.
    pub(crate) cancel: CancellationToken,
    /// The hub's session records, when the provider shares sessions.
    pub(crate) sessions: Option<Arc<crate::sessions::SessionStore>>,
    /// The other servers whose subject this server listens on (it holds a session
    /// restored from there), each with the guard that stops its reader.
    pub(crate) adopted: tokio::sync::Mutex<HashMap<NodeId, DropGuard>>,
}

impl Inner {
    /// This server's node id as messages carry it.
    pub(crate) fn origin(&self) -> &str {
        self.inbox.writer().origin()
    }

    /// The hub's counters.
    pub(crate) fn metrics(&self) -> &HubMetrics {
        self.inbox.metrics()
    }

    /// Fails fast while NATS is unreachable: async-nats would queue the command and
    /// send it after a reconnect (or never), and the caller would not know.
    pub(crate) fn check_connected(&self, op: &str) -> Result<(), GroupError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(GroupError::Unavailable {
                backplane: BACKPLANE,
                message: format!("{op}: not connected to NATS ({state}); nothing was sent"),
                source: None,
            }),
        }
    }

    /// Runs `fut` within `after`.
    pub(crate) async fn bounded<T>(
        &self,
        op: &'static str,
        after: Duration,
        fut: impl Future<Output = Result<T, GroupError>>,
    ) -> Result<T, GroupError> {
        hub_core::deadline(BACKPLANE, op, after, fut).await
    }

    /// Publishes one message; an error if NATS is down, the message is larger than
    /// NATS takes, NATS refuses it, or does not take it in time.
    pub(crate) async fn send(
        &self,
        op: &'static str,
        subject: String,
        payload: Bytes,
    ) -> Result<(), GroupError> {
        self.check_sendable(op, &payload)?;
        let refused =
            |e| GroupError::unavailable(BACKPLANE, format!("{op}: NATS refused the message"), e);
        let mut publish = std::pin::pin!(self.client.publish(subject, payload));
        // Usually the command queue has room and the publish is done at the first
        // poll: no timer is armed then (it costs about as much as the publish).
        if let Poll::Ready(r) = futures_util::poll!(publish.as_mut()) {
            return r.map_err(refused);
        }
        self.bounded(op, self.config.op_timeout, async {
            publish.await.map_err(refused)
        })
        .await
    }

    /// Checks that a message fits and NATS is connected.
    pub(crate) fn check_sendable(&self, op: &str, payload: &Bytes) -> Result<(), GroupError> {
        if payload.len() > self.max_payload {
            return Err(GroupError::TooLarge {
                backplane: BACKPLANE,
                size: payload.len(),
                max: self.max_payload,
            });
        }
        self.check_connected(op)
    }

    /// Waits until the hub's own subscriptions are made (right after bind).
    pub(crate) async fn wait_ready(&self) -> Result<(), GroupError> {
        if *self.ready.borrow() {
            return Ok(());
        }
        let mut ready = self.ready.clone();
        self.bounded("start-up", self.config.op_timeout, async {
            ready
                .wait_for(|r| *r)
                .await
                .map(|_| ())
                .map_err(|_| GroupError::Unavailable {
                    backplane: BACKPLANE,
                    message: "the hub's NATS subscriptions could not be made".into(),
                    source: None,
                })
        })
        .await
    }

    /// Sends an empty message to our own reply inbox and waits (within `after`) for
    /// it to come back. NATS handles one connection's commands in order, so
    /// everything sent before (a new subscription) has been registered by our NATS
    /// server, and a NATS that stalls shows up here.
    pub(crate) async fn round_trip(
        &self,
        op: &'static str,
        after: Duration,
    ) -> Result<(), GroupError> {
        let (guard, mut rx) = self.pending.register(1);
        let subject = format!("{}.{}", self.replies, guard.token);
        self.bounded(op, after, async {
            self.client
                .publish(subject, Bytes::new())
                .await
                .map_err(|e| {
                    GroupError::unavailable(BACKPLANE, format!("{op}: round trip failed"), e)
                })?;
            rx.recv().await;
            Ok(())
        })
        .await
    }

    /// Publishes a heartbeat. Skipped while disconnected.
    pub(crate) async fn heartbeat(&self, kind: Kind) {
        if self.check_connected("heartbeat").is_err() {
            return;
        }
        let beat = proto::Heartbeat {
            node: self.origin().to_owned(),
            interval_ms: u32::try_from(self.config.heartbeat.as_millis()).unwrap_or(u32::MAX),
            kind: kind as i32,
        };
        let payload = Bytes::from(beat.encode_to_vec());
        if let Err(e) = self
            .send("heartbeat", self.subjects.heartbeat.clone(), payload)
            .await
        {
            HubMetrics::incr(&self.metrics().backplane_errors);
            tracing::warn!(hub = self.hub, error = %e, "heartbeat not sent");
        }
    }
}
