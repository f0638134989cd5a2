//! The per-hub backplane: what the runtime calls, and the state its tasks share.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::time::Duration;

use bytes::Bytes;
use hub_core::remote::{self, Inbox};
use hub_core::{
    Backplane, BindContext, BoxFuture, Destination, GroupError, GroupName, HubMetrics, LocalGroups,
    MemberInfo, NodeId,
};
use redis::{RedisError, RedisResult};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::Config;
use crate::conn::Conn;
use crate::envelope::LossSignal;
use crate::keys::Keys;
use crate::link::{self, SubOp};
use crate::presence::{self, Registration};
use crate::publish::{self, PubReq};

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
    /// Stops every task of this backplane.
    pub(crate) cancel: CancellationToken,
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

    /// The presence registration, shared; waits (within the command timeout) while
    /// a re-registration rewrites this server's entries.
    pub(crate) async fn registration(
        &self,
        op: &'static str,
    ) -> Result<tokio::sync::RwLockReadGuard<'_, Registration>, GroupError> {
        let after = self.cfg.command_timeout;
        tokio::time::timeout(after, self.presence.read())
            .await
            .map_err(|_| GroupError::Timeout {
                backplane: BACKPLANE,
                op,
                after,
            })
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
        match tokio::time::timeout(after, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(redis_error(op, e)),
            Err(_) => Err(GroupError::Timeout {
                backplane: BACKPLANE,
                op,
                after,
            }),
        }
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

/// The Redis backplane of one hub. Its tasks (link supervisor, publisher) stop when
/// it is dropped or shut down.
pub(crate) struct RedisBackplane {
    /// State shared with the tasks.
    shared: Arc<Shared>,
    /// Subscribe/unsubscribe requests to the supervisor (bounded: 1024; senders wait).
    ops: mpsc::Sender<SubOp>,
    /// Publishes to the publisher task (bounded by `publish_queue`; senders wait,
    /// within the publish timeout).
    publishes: mpsc::Sender<PubReq>,
    /// Cancels the tasks when the backplane goes away.
    _stop: DropGuard,
}

impl RedisBackplane {
    /// Starts the tasks of one hub on the current Tokio runtime.
    pub(crate) fn start(cfg: Arc<Config>, ctx: BindContext) -> Result<Self, GroupError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| unavailable("the Redis provider must be bound inside a Tokio runtime"))?;
        let node = ctx.local.node();
        let keys = Keys::new(&cfg.prefix, ctx.hub);
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            hub: ctx.hub,
            node_channel: keys.node_channel(node),
            keys,
            node,
            origin: node.to_string(),
            inbox: Inbox::new(ctx.hub, ctx.local.clone(), ctx.metrics.clone(), ctx.events),
            local: ctx.local,
            metrics: ctx.metrics,
            link: watch::Sender::new(Link::Connecting),
            presence: tokio::sync::RwLock::new(Registration::default()),
            next_inc: AtomicU32::new(1),
            janitor_busy: AtomicBool::new(false),
            cancel: cancel.clone(),
            cfg,
        });
        let (ops_tx, ops_rx) = mpsc::channel(1024);
        let (pub_tx, pub_rx) = mpsc::channel(shared.cfg.publish_queue);
        runtime.spawn(link::supervise(shared.clone(), ops_rx));
        runtime.spawn(publish::run(shared.clone(), pub_rx));
        Ok(RedisBackplane {
            shared,
            ops: ops_tx,
            publishes: pub_tx,
            _stop: cancel.drop_guard(),
        })
    }

    /// Asks the supervisor to (un)subscribe a group's channel; resolves once done.
    async fn subscription(&self, group: &GroupName, subscribe: bool) -> Result<(), GroupError> {
        let op = if subscribe {
            "subscribe"
        } else {
            "unsubscribe"
        };
        if subscribe {
            self.shared.conn(op).await?;
        } else if !self.shared.is_up() {
            // Nothing is subscribed on a lost connection, and a reconnect only
            // resubscribes groups that still have members here.
            return Ok(());
        }
        let after = self.shared.cfg.command_timeout;
        let (done, rx) = oneshot::channel();
        let request = SubOp {
            group: group.clone(),
            subscribe,
            done,
        };
        let wait = async {
            self.ops
                .send(request)
                .await
                .map_err(|_| unavailable("the hub is shut down"))?;
            rx.await.map_err(|_| unavailable("the hub is shut down"))?
        };
        tokio::time::timeout(after, wait)
            .await
            .map_err(|_| GroupError::Timeout {
                backplane: BACKPLANE,
                op,
                after,
            })?
    }

    /// Publishes one envelope: queued for the publisher, which pipelines it with others.
    async fn publish_one(&self, channel: String, payload: Bytes) -> Result<(), GroupError> {
        let max = self.shared.cfg.max_payload;
        if payload.len() > max {
            return Err(GroupError::TooLarge {
                backplane: BACKPLANE,
                size: payload.len(),
                max,
            });
        }
        let after = self.shared.cfg.publish_timeout;
        let timed_out = || GroupError::Timeout {
            backplane: BACKPLANE,
            op: "publish",
            after,
        };
        let enqueue = async {
            // Fails at once while the link is down; waits while first connecting.
            if !self.shared.is_up() {
                self.shared.conn("publish").await?;
            }
            let (done, rx) = oneshot::channel();
            self.publishes
                .send(PubReq {
                    channel,
                    payload,
                    done,
                })
                .await
                .map_err(|_| unavailable("publish: the hub is shut down"))?;
            Ok::<_, GroupError>(rx)
        };
        let rx = tokio::time::timeout(after, enqueue)
            .await
            .map_err(|_| timed_out())??;
        if !self.shared.cfg.confirm_publishes {
            // The publisher counts a later failure (nobody waits for the answer).
            return Ok(());
        }
        // The publisher answers within its own pipeline deadline, and on a timeout marks
        // the link down *before* it answers, so the next publish fails fast. (A deadline
        // of our own here would race it.) The bound only guards against a publisher held
        // up behind earlier pipelines, each of which has the same deadline.
        tokio::time::timeout(after.saturating_mul(2), rx)
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| unavailable("publish: the hub is shut down"))?
    }
}

impl Backplane for RedisBackplane {
    fn name(&self) -> &'static str {
        BACKPLANE
    }

    fn joined<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        first: bool,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        Some(Box::pin(async move {
            // Every join waits for the subscription (answered at once when the group is
            // already subscribed), so a push sent after any join reaches the member.
            let (sub, entry) = tokio::join!(
                self.subscription(group, true),
                presence::join(&self.shared, group, member, first)
            );
            sub.and(entry)
        }))
    }

    fn left<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        last: bool,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        Some(Box::pin(async move {
            if last {
                let (unsub, entry) = tokio::join!(
                    self.subscription(group, false),
                    presence::leave(&self.shared, group, member, true)
                );
                unsub.and(entry)
            } else {
                presence::leave(&self.shared, group, member, false).await
            }
        }))
    }

    fn publish<'a>(
        &'a self,
        dest: &'a Destination,
        frame: &'a Bytes,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        Some(Box::pin(async move {
            let shared = &self.shared;
            match dest {
                Destination::Group { group: g, target } => {
                    let payload = shared.inbox.writer().group(g, target, frame);
                    self.publish_one(shared.keys.group_channel(g.as_str()), payload)
                        .await
                }
                Destination::Connections(ids) => {
                    // One envelope per server named, on that server's own channel.
                    let sends =
                        remote::by_server(shared.node, ids)
                            .into_iter()
                            .map(|(node, list)| {
                                let payload = shared.inbox.writer().connections(&list, frame);
                                self.publish_one(shared.keys.node_channel(node), payload)
                            });
                    futures_util::future::try_join_all(sends).await.map(|_| ())
                }
            }
        }))
    }

    fn max_frame_bytes(&self) -> Option<usize> {
        // Room for the envelope of a group push naming up to 16 connections.
        Some(
            self.shared
                .cfg
                .max_payload
                .saturating_sub(self.shared.inbox.writer().overhead(16)),
        )
    }

    fn member_count<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Result<u64, GroupError>>> {
        Some(Box::pin(presence::count(&self.shared, group)))
    }

    fn members<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Result<Vec<MemberInfo>, GroupError>>> {
        Some(Box::pin(presence::members(&self.shared, group)))
    }

    fn shutdown(&self) -> Option<BoxFuture<'_, ()>> {
        Some(Box::pin(async move {
            if let Err(e) = presence::unregister(&self.shared).await {
                HubMetrics::incr(&self.shared.metrics.backplane_errors);
                tracing::warn!(hub = self.shared.hub, error = %e, "could not remove presence entries at shutdown");
            }
            self.shared.cancel.cancel();
        }))
    }
}
