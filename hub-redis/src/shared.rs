//! The state of one hub's Redis backplane, shared by what the runtime calls and
//! by the background tasks (link supervisor, publisher, presence heartbeat).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::time::Duration;

use hub_core::remote::Inbox;
use hub_core::{GroupError, HubMetrics, LocalGroups, NodeId};
use redis::{RedisError, RedisResult};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::conn::Conn;
use crate::envelope::LossSignal;
use crate::keys::Keys;

/// The current registration of this server.
#[derive(Debug, Default)]
pub(crate) struct Registration {
    /// The live incarnation number, 0 before the first registration.
    pub(crate) inc: u32,
}

/// The name in errors and logs.
pub(crate) const BACKPLANE: &str = "redis";

/// The state of the connection to Redis, as the supervisor publishes it.
#[derive(Clone)]
pub(crate) enum Link {
    /// Connecting for the first time: callers wait (up to their deadline).
    Connecting,
    /// Connected, subscribed and registered.
    Up {
        /// The command connection (publishes, presence, counts); clones share it.
        cmd: Conn,
        /// Tells the supervisor this connection failed (a publish not answered in time).
        loss: LossSignal,
    },
    /// Lost, reconnecting with backoff: callers fail at once.
    Down {
        /// Why, for error messages.
        reason: Arc<str>,
    },
    /// The hub shut down.
    Closed,
}

/// What the backplane and its tasks share.
pub(crate) struct Shared {
    /// The hub's full name (logs).
    pub(crate) hub: &'static str,
    /// The provider's options.
    pub(crate) cfg: Arc<Config>,
    /// The hub's channel and key names.
    pub(crate) keys: Keys,
    /// This server.
    pub(crate) node: NodeId,
    /// This server's id as text, as envelopes carry it.
    pub(crate) origin: String,
    /// This server's own channel (direct sends to its connections).
    pub(crate) node_channel: String,
    /// The hub's local members (delivery, resubscription, presence rewrites).
    pub(crate) local: Arc<LocalGroups>,
    /// The hub's counters.
    pub(crate) metrics: Arc<HubMetrics>,
    /// Envelopes: this server's writer, and delivery of what others send (its
    /// events are where members lost with their server are reported).
    pub(crate) inbox: Inbox,
    /// The connection state: the supervisor sets it; a publisher that sees the link
    /// fail marks it down at once.
    pub(crate) link: watch::Sender<Link>,
    /// This server's presence registration. Joins and leaves hold it shared; a
    /// re-registration holds it exclusively (a tokio lock: held across awaits).
    pub(crate) presence: tokio::sync::RwLock<Registration>,
    /// The next incarnation number (incarnations are never reused).
    pub(crate) next_inc: AtomicU32,
    /// Set while a clean-up of dead servers runs (one at a time).
    pub(crate) janitor_busy: AtomicBool,
    /// The session records this server holds, with their time to live in ms: each
    /// heartbeat extends them.
    pub(crate) sessions: std::sync::Mutex<std::collections::HashMap<hub_core::ConnectionId, u64>>,
    /// Stops every task of this backplane.
    pub(crate) cancel: CancellationToken,
    /// The provider's connections, shared by every hub bound to it.
    pub(crate) wire: Arc<crate::wire::Wire>,
    /// This hub's number on the wire.
    pub(crate) hub_id: u64,
}

impl Shared {
    /// The command connection, waiting while the first connection is being made;
    /// fails at once when the link is down.
    pub(crate) async fn conn(&self, op: &'static str) -> Result<Conn, GroupError> {
        let mut rx = self.link.subscribe();
        let after = self.cfg.connect_timeout;
        let deadline = tokio::time::Instant::now() + after;
        loop {
            match &*rx.borrow_and_update() {
                Link::Up { cmd, .. } => return Ok(cmd.clone()),
                Link::Down { reason } => {
                    return Err(unavailable(format!(
                        "{op}: not connected to Redis ({reason})"
                    )));
                }
                Link::Closed => return Err(unavailable(format!("{op}: the hub is shut down"))),
                Link::Connecting => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(unavailable(format!("{op}: the hub is shut down"))),
                Err(_) => {
                    return Err(GroupError::Timeout {
                        backplane: BACKPLANE,
                        op,
                        after,
                    });
                }
            }
        }
    }

    /// The command connection, waiting up to `within` for the link to come up (also
    /// while it is down and reconnecting).
    pub(crate) async fn conn_within(
        &self,
        op: &'static str,
        within: Duration,
    ) -> Result<Conn, GroupError> {
        let mut rx = self.link.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match &*rx.borrow_and_update() {
                Link::Up { cmd, .. } => return Ok(cmd.clone()),
                Link::Closed => return Err(unavailable(format!("{op}: the hub is shut down"))),
                Link::Connecting | Link::Down { .. } => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(unavailable(format!("{op}: the hub is shut down"))),
                Err(_) => {
                    return Err(GroupError::Timeout {
                        backplane: BACKPLANE,
                        op,
                        after: within,
                    });
                }
            }
        }
    }

    /// The presence registration, shared; waits (within the command timeout) while
    /// a re-registration rewrites this server's entries.
    pub(crate) async fn registration(
        &self,
        op: &'static str,
    ) -> Result<tokio::sync::RwLockReadGuard<'_, Registration>, GroupError> {
        let read = async { Ok(self.presence.read().await) };
        hub_core::deadline(BACKPLANE, op, self.cfg.command_timeout, read).await
    }

    /// Marks the link of `loss`'s epoch down at once (later calls fail fast) and asks
    /// the supervisor to reconnect. Does nothing if that link is already gone.
    pub(crate) fn link_failed(&self, loss: &LossSignal, reason: &str) {
        let marked = self.link.send_if_modified(|link| match link {
            Link::Up { loss: current, .. } if current.epoch == loss.epoch => {
                *link = Link::Down {
                    reason: reason.into(),
                };
                true
            }
            _ => false,
        });
        if marked {
            tracing::warn!(hub = self.hub, %reason, "Redis link marked down; reconnecting");
        }
        loss.fire();
    }

    /// Whether the link is up right now.
    pub(crate) fn is_up(&self) -> bool {
        matches!(*self.link.borrow(), Link::Up { .. })
    }

    /// Runs a Redis request with a deadline, mapping failures to [`GroupError`].
    pub(crate) async fn timed<T>(
        &self,
        op: &'static str,
        after: Duration,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, GroupError> {
        let answered = async { fut.await.map_err(|e| redis_error(op, e)) };
        hub_core::deadline(BACKPLANE, op, after, answered).await
    }
}

/// An `Unavailable` error without a source.
pub(crate) fn unavailable(message: impl Into<String>) -> GroupError {
    GroupError::Unavailable {
        backplane: BACKPLANE,
        message: message.into(),
        source: None,
    }
}

/// A Redis error as a [`GroupError`].
pub(crate) fn redis_error(op: &'static str, e: RedisError) -> GroupError {
    GroupError::unavailable(BACKPLANE, format!("{op}: {e}"), e)
}

/// A copy of an error for another waiter of the same batch.
pub(crate) fn copy_error(e: &GroupError) -> GroupError {
    match e {
        GroupError::Timeout {
            backplane,
            op,
            after,
        } => GroupError::Timeout {
            backplane,
            op,
            after: *after,
        },
        other => unavailable(other.to_string()),
    }
}
