//! The connections of one provider, shared by every hub bound to it: one command
//! connection (publishes, presence, counts) and one subscriber connection, whose
//! messages are routed to the hubs that subscribed each channel.
//!
//! Each hub keeps its own link supervisor (`link.rs`): it asks the wire for the
//! current pair of connections, subscribes its channels on it, and serves its own
//! heartbeats and health checks. A failure any hub notices (a connection closed, a
//! publish pipeline not answered in time, failing heartbeats) condemns the pair for
//! every hub: the wire tells each hub using it, and the first hub to reconnect opens
//! the next pair, which the others then share.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hub_core::HubMetrics;
use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind, RedisResult, Value};

use crate::Config;
use crate::conn::{self, Conn};
use crate::envelope::{Inbound, LossSignal};

/// Locks a mutex, whatever a panicking holder left.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The provider's connections, opened on demand and replaced when condemned.
pub(crate) struct Wire {
    cfg: Arc<Config>,
    /// The current pair, if one was opened and not condemned.
    current: Mutex<Option<Arc<Pair>>>,
    /// Held while a pair is being opened (one at a time).
    opening: tokio::sync::Mutex<()>,
    /// The next pair's number.
    next: std::sync::atomic::AtomicU64,
    /// The next hub's number.
    next_hub: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("pair", &lock(&self.current).as_ref().map(|p| p.number))
            .finish()
    }
}

/// The hubs subscribed to one channel, by hub number.
type Subscribers = Vec<(u64, Arc<Inbound>)>;

/// What the pair's push senders and its users share.
#[derive(Default)]
struct PairState {
    /// Set when the pair is condemned.
    broken: AtomicBool,
    /// Channel -> the hubs subscribed to it here.
    routes: Mutex<HashMap<Vec<u8>, Subscribers>>,
    /// The loss signals of the hubs using the pair (their current epoch).
    users: Mutex<Vec<(u64, LossSignal)>>,
}

impl PairState {
    /// Condemns the pair and tells every hub using it (once).
    fn condemn(&self) {
        if !self.broken.swap(true, AcqRel) {
            for (_, loss) in lock(&self.users).iter() {
                loss.fire();
            }
        }
    }
}

/// One command and one subscriber connection.
pub(crate) struct Pair {
    number: u64,
    cmd: Conn,
    sub: Conn,
    state: Arc<PairState>,
    /// Subscription changes, one at a time, so that a subscribe and an unsubscribe of
    /// one channel by two hubs reach Redis in the order their routes changed.
    changes: tokio::sync::Mutex<()>,
}

/// Tells the pair when its command connection closes.
struct CmdPushes(Arc<PairState>);

impl AsyncPushSender for CmdPushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        if info.kind == PushKind::Disconnection {
            self.0.condemn();
        }
        Ok(())
    }
}

/// Routes what the subscriber connection receives to the hubs subscribed.
struct SubPushes(Arc<PairState>);

impl AsyncPushSender for SubPushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = info.data.into_iter();
                match (data.next(), data.next()) {
                    (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) => {
                        let payload = Bytes::from(payload);
                        let routes = lock(&self.0.routes);
                        if let Some(hubs) = routes.get(&channel) {
                            for (_, inbound) in hubs {
                                inbound.receive(&channel, payload.clone());
                            }
                        }
                    }
                    _ => {
                        // Whose it was is unknown: count it on every hub here.
                        let routes = lock(&self.0.routes);
                        if let Some((_, inbound)) = routes.values().flatten().next() {
                            HubMetrics::incr(&inbound.inbox.metrics().backplane_malformed);
                        }
                    }
                }
            }
            PushKind::Disconnection => self.0.condemn(),
            other => tracing::trace!(kind = ?other, data = ?info.data, "push"),
        }
        Ok(())
    }
}

impl Wire {
    /// The wire of a provider with these options; opens nothing yet.
    pub(crate) fn new(cfg: Arc<Config>) -> Self {
        Wire {
            cfg,
            current: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            next: 1.into(),
            next_hub: 1.into(),
        }
    }

    /// A number for a newly bound hub.
    pub(crate) fn hub_id(&self) -> u64 {
        self.next_hub
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The current pair if it is sound, else a new one. `failed` is the number of the
    /// pair the caller saw fail: that one is condemned first (for every hub).
    pub(crate) async fn acquire(
        &self,
        failed: Option<u64>,
        limit: Duration,
    ) -> RedisResult<Arc<Pair>> {
        if let Some(n) = failed {
            self.condemn(n);
        }
        if let Some(p) = self.sound() {
            return Ok(p);
        }
        let _one = self.opening.lock().await;
        if let Some(p) = self.sound() {
            return Ok(p);
        }
        let state = Arc::new(PairState::default());
        let cmd = conn::open(&self.cfg.deployment, limit, CmdPushes(state.clone())).await?;
        let sub = conn::open(&self.cfg.deployment, limit, SubPushes(state.clone())).await?;
        let number = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pair = Arc::new(Pair {
            number,
            cmd,
            sub,
            state,
            changes: tokio::sync::Mutex::new(()),
        });
        *lock(&self.current) = Some(pair.clone());
        Ok(pair)
    }

    fn sound(&self) -> Option<Arc<Pair>> {
        lock(&self.current)
            .as_ref()
            .filter(|p| !p.state.broken.load(Acquire))
            .cloned()
    }

    /// Condemns pair `n` if it is still the current one (every hub using it is told).
    pub(crate) fn condemn(&self, n: u64) {
        let mut current = lock(&self.current);
        if let Some(p) = current.as_ref()
            && p.number == n
        {
            p.state.condemn();
            *current = None;
        }
    }
}

impl Pair {
    /// The pair's number (a hub reports a failure of this pair by it).
    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// The command connection.
    pub(crate) fn cmd(&self) -> &Conn {
        &self.cmd
    }

    /// Hub `hub` uses this pair with this epoch's loss signal, receiving through
    /// `inbound`. Its loss fires at once if the pair is already condemned.
    pub(crate) fn join(
        self: &Arc<Self>,
        hub: u64,
        loss: LossSignal,
        inbound: Inbound,
    ) -> SubHandle {
        {
            let mut users = lock(&self.state.users);
            users.retain(|(h, _)| *h != hub);
            users.push((hub, loss.clone()));
        }
        if self.state.broken.load(Acquire) {
            loss.fire();
        }
        SubHandle {
            pair: self.clone(),
            hub,
            inbound: Arc::new(inbound),
        }
    }
}

/// One hub's subscriptions on a pair: the subscriber connection as the hub sees it.
pub(crate) struct SubHandle {
    pair: Arc<Pair>,
    hub: u64,
    inbound: Arc<Inbound>,
}

impl SubHandle {
    /// Subscribes this hub to `channels`; resolves once Redis confirmed every one
    /// (also those other hubs had subscribed already: a confirmation arrives after
    /// the earlier ones on the same connection).
    pub(crate) async fn subscribe(&self, channels: &[String], sharded: bool) -> RedisResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        let _one = self.pair.changes.lock().await;
        {
            let mut routes = lock(&self.pair.state.routes);
            for ch in channels {
                let hubs = routes.entry(ch.as_bytes().to_vec()).or_default();
                if !hubs.iter().any(|(h, _)| *h == self.hub) {
                    hubs.push((self.hub, self.inbound.clone()));
                }
            }
        }
        self.pair.sub.subscribe(channels, sharded).await
    }

    /// Unsubscribes this hub from `channels`; Redis is asked only for the channels
    /// no other hub here is subscribed to.
    pub(crate) async fn unsubscribe(&self, channels: &[String], sharded: bool) -> RedisResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        let _one = self.pair.changes.lock().await;
        let unused = self.drop_routes(channels.iter().map(|c| c.as_bytes()));
        self.pair.sub.unsubscribe(&unused, sharded).await
    }

    /// Removes this hub's routes of `channels`; returns the channels left without any.
    fn drop_routes<'a>(&self, channels: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
        let mut routes = lock(&self.pair.state.routes);
        let mut unused = Vec::new();
        for ch in channels {
            if let Some(hubs) = routes.get_mut(ch) {
                hubs.retain(|(h, _)| *h != self.hub);
                if hubs.is_empty() {
                    routes.remove(ch);
                    unused.push(String::from_utf8_lossy(ch).into_owned());
                }
            }
        }
        unused
    }

    /// Stops using the pair (the hub shuts down): unsubscribes what only it used.
    pub(crate) async fn release(&self, sharded: bool) -> RedisResult<()> {
        let _one = self.pair.changes.lock().await;
        let mine: Vec<Vec<u8>> = lock(&self.pair.state.routes)
            .iter()
            .filter(|(_, hubs)| hubs.iter().any(|(h, _)| *h == self.hub))
            .map(|(ch, _)| ch.clone())
            .collect();
        let unused = self.drop_routes(mine.iter().map(Vec::as_slice));
        lock(&self.pair.state.users).retain(|(h, _)| *h != self.hub);
        if self.pair.state.broken.load(Acquire) {
            return Ok(());
        }
        self.pair.sub.unsubscribe(&unused, sharded).await
    }

    /// The number of the pair these subscriptions are on.
    pub(crate) fn pair_number(&self) -> u64 {
        self.pair.number
    }

    /// `PING` on the subscriber connection.
    pub(crate) async fn ping(&self) -> RedisResult<()> {
        self.pair.sub.ping().await
    }
}

impl Drop for SubHandle {
    fn drop(&mut self) {
        // The hub moved to another pair or stopped: deliver it nothing more from this
        // one (what Redis still sends for those channels is dropped here).
        let mut routes = lock(&self.pair.state.routes);
        routes.retain(|_, hubs| {
            hubs.retain(|(h, _)| *h != self.hub);
            !hubs.is_empty()
        });
        drop(routes);
        lock(&self.pair.state.users).retain(|(h, _)| *h != self.hub);
    }
}
