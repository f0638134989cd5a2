//! [`RedisEmitter`]: pushes and commands to a hub's connections from a process that
//! is not a hub server, published on the channels the hub servers subscribe to.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hub_core::emit::Emit;
use hub_core::relay::Channel;
use hub_core::{BoxFuture, GroupError};
use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind};

use crate::conn::{self, Conn};
use crate::keys::Keys;
use crate::shared::{BACKPLANE, redis_error, unavailable};
use crate::{Config, ConnectError, RedisProvider, RedisProviderBuilder};

/// Publishes envelopes of an emitter (`hub_core::emit::Emitter`, or a generated
/// `FooHubEmitter`) to Redis: each is one `PUBLISH` (`SPUBLISH` when
/// [sharded](RedisProviderBuilder::sharded)) on `{prefix}:{hub}:g:{group}` or
/// `{prefix}:{hub}:node:{node}`, the channels of the [crate docs](crate#channels).
///
/// It takes the options of a [`RedisProvider`] (address, prefix, sharding, publish and
/// connect timeouts), so that it names the channels exactly as the hub servers do:
/// give it the same prefix. One emitter serves any number of hubs; it holds one
/// connection (per cluster node), opened at the first publish and again after Redis
/// went away. It keeps no presence and subscribes to nothing.
///
/// A publish resolves on Redis's answer, within the
/// [publish timeout](RedisProviderBuilder::publish_timeout) (connecting included):
/// `Ok` means Redis took it (delivery is still at-most-once: a server that is not
/// subscribed at that moment misses it), an error that Redis is unreachable
/// ([`GroupError::Unavailable`]) or did not answer in time ([`GroupError::Timeout`]).
/// Nothing is retried.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = hub_redis::RedisEmitter::connect("redis://127.0.0.1:6379").await?;
/// // With the generated emitter of a hub: `ChatHubEmitter::new(redis)`; or untyped:
/// let emitter = hub_core::emit::Emitter::new(std::sync::Arc::new(redis), "chat.v1.ChatHub");
/// emitter.remove_user(&hub_core::GroupName::new("lobby")?, "mallory").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisEmitter {
    inner: Arc<Inner>,
}

struct Inner {
    /// The provider's options.
    cfg: Arc<Config>,
    /// The connection, and whether Redis said it closed.
    current: Mutex<Option<(Conn, Arc<AtomicBool>)>>,
    /// Held while a connection is being opened (one at a time).
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for RedisEmitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEmitter")
            .field("redis", &self.inner.cfg.deployment.describe())
            .field("prefix", &self.inner.cfg.prefix)
            .field("sharded", &self.inner.cfg.sharded)
            .finish()
    }
}

/// Marks the connection closed when Redis (or the client) says so.
struct Closed(Arc<AtomicBool>);

impl AsyncPushSender for Closed {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        if info.kind == PushKind::Disconnection {
            self.0.store(true, Relaxed);
        }
        Ok(())
    }
}

impl RedisEmitter {
    /// An emitter with the options of `provider` (the same Redis, prefix and
    /// timeouts). Opens no connection: the first publish does.
    pub fn new(provider: &RedisProvider) -> Self {
        RedisEmitter {
            inner: Arc::new(Inner {
                cfg: provider.config.clone(),
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Connects to the Redis server at `url` with the default options (prefix `hub`)
    /// and checks that it answers.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::connect_with(RedisProvider::builder().url(url)).await
    }

    /// An emitter with the options of `builder` (see [`RedisProviderBuilder`]),
    /// after checking that Redis answers.
    pub async fn connect_with(builder: RedisProviderBuilder) -> Result<Self, ConnectError> {
        let emitter = Self::new(&builder.connect().await?);
        // Keep the connection the check did not: open the emitter's own now.
        let _ = emitter.inner.conn().await;
        Ok(emitter)
    }

    /// The channel prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.cfg.prefix
    }

    /// The Redis channel name of `channel` in hub `hub`.
    pub fn channel(&self, hub: &str, channel: Channel<'_>) -> String {
        Keys::new(&self.inner.cfg.prefix, hub).channel(channel)
    }
}

impl Inner {
    /// The open connection, or a new one.
    async fn conn(&self) -> Result<Conn, GroupError> {
        if let Some(c) = self.usable() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.usable() {
            return Ok(c);
        }
        let closed = Arc::new(AtomicBool::new(false));
        let cfg = &self.cfg;
        let conn = conn::open(&cfg.deployment, cfg.connect_timeout, Closed(closed.clone()))
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    GroupError::Timeout {
                        backplane: BACKPLANE,
                        op: "connect",
                        after: cfg.connect_timeout,
                    }
                } else {
                    redis_error("connect", e)
                }
            })?;
        *self.lock() = Some((conn.clone(), closed));
        Ok(conn)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Conn, Arc<AtomicBool>)>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn usable(&self) -> Option<Conn> {
        match &*self.lock() {
            Some((c, closed)) if !closed.load(Relaxed) => Some(c.clone()),
            _ => None,
        }
    }

    /// Drops the connection, so that the next publish opens another.
    fn forget(&self) {
        *self.lock() = None;
    }

    async fn publish(
        &self,
        channel: String,
        offsets: Option<(String, Option<String>)>,
        payload: Bytes,
    ) -> Result<(), GroupError> {
        let max = self.cfg.max_payload;
        if payload.len() > max {
            return Err(GroupError::TooLarge {
                backplane: BACKPLANE,
                size: payload.len(),
                max,
            });
        }
        let after: Duration = self.cfg.publish_timeout;
        let name = if self.cfg.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let send = async {
            let conn = self.conn().await?;
            let command = match &offsets {
                // With group offsets (and history), as a hub server publishes: the
                // group's next offset, in one script.
                Some((key, history)) => (
                    key.clone().into_bytes(),
                    crate::publish::offset_command(
                        &self.cfg,
                        key,
                        history.as_deref(),
                        &channel,
                        &payload,
                    ),
                ),
                None => {
                    let mut cmd = redis::cmd(name);
                    cmd.arg(&channel).arg(&payload[..]);
                    (channel.clone().into_bytes(), cmd)
                }
            };
            let results = conn.run_pipelined(vec![command]).await;
            match results.into_iter().next() {
                Some((_, Ok(()))) => Ok(()),
                Some((_, Err(e))) => {
                    if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                        self.forget();
                    }
                    Err(redis_error("publish", e))
                }
                None => Err(unavailable("publish: no answer")),
            }
        };
        let sent = hub_core::deadline(BACKPLANE, "publish", after, send).await;
        if let Err(GroupError::Timeout { .. }) = sent {
            // A Redis that does not answer is treated as gone: connect again next time.
            self.forget();
        }
        sent
    }
}

impl Emit for RedisEmitter {
    fn name(&self) -> &'static str {
        BACKPLANE
    }

    /// A publish waits for Redis's answer: numbering would make one emitter's pushes
    /// wait for each other's round trips. With `group_offsets` or `history` in its
    /// options, its group pushes take the group's offsets as a hub server's do (so
    /// their loss is detected, and with history recovered); without, the loss of an
    /// emitter's push on Redis is not detected.
    fn numbers_pushes(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        self.inner.cfg.deployment.describe()
    }

    fn publish<'a>(
        &'a self,
        hub: &'a str,
        channel: Channel<'a>,
        envelope: Bytes,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        let keys = Keys::new(&self.inner.cfg.prefix, hub);
        let cfg = &self.inner.cfg;
        let offsets = match channel {
            Channel::Group(g) if cfg.group_offsets => Some((
                keys.offsets(g.as_str(), cfg.sharded),
                cfg.history
                    .is_some()
                    .then(|| keys.history(g.as_str(), cfg.sharded)),
            )),
            _ => None,
        };
        let channel = keys.channel(channel);
        Box::pin(self.inner.publish(channel, offsets, envelope))
    }
}
