//! The link supervisor: connects, subscribes, keeps presence alive, notices a lost
//! connection, and reconnects with backoff, resubscribing and re-registering.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Release};
use std::time::Duration;

use hub_core::{GroupError, GroupName, HubMetrics, NodeId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use crate::conn::Conn;
use crate::envelope::{Inbound, LossSignal};
use crate::presence;
use crate::shared::{Link, Shared, copy_error, unavailable};
use crate::wire::SubHandle;

/// A channel this hub subscribes to besides its own server's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Sub {
    /// A group's channel: subscribed while the group has members here.
    Group(GroupName),
    /// Another server's channel: subscribed while this server holds a connection
    /// whose id names that server (a session restored here).
    Node(NodeId),
}

impl Sub {
    /// Its Redis channel.
    fn channel(&self, shared: &Shared) -> String {
        match self {
            Sub::Group(g) => shared.keys.group_channel(g.as_str()),
            Sub::Node(n) => shared.keys.node_channel(*n),
        }
    }

    /// Whether this server still wants it: the group has local members, or the
    /// server is still adopted.
    fn wanted(&self, shared: &Shared) -> bool {
        match self {
            Sub::Group(g) => shared.local.count(g.as_str()) > 0,
            Sub::Node(n) => shared.inbox.is_adopted(*n),
        }
    }
}

/// What this hub should be subscribed to besides its own channel: the groups with
/// local members and the servers adopted.
fn wanted(shared: &Shared) -> HashSet<Sub> {
    let mut subs: HashSet<Sub> = shared.local.groups().into_iter().map(Sub::Group).collect();
    subs.extend(shared.inbox.adopted().into_iter().map(Sub::Node));
    subs
}

/// A request to subscribe to (or unsubscribe from) a group's channel or another
/// server's.
pub(crate) struct SubOp {
    /// The channel.
    pub(crate) sub: Sub,
    /// Subscribe (a member joined, a session was restored) or unsubscribe (the last
    /// local member left, the last such session ended).
    pub(crate) subscribe: bool,
    /// Answered once Redis confirmed it.
    pub(crate) done: oneshot::Sender<Result<(), GroupError>>,
}

/// Why serving a connection ended.
enum Ended {
    /// The backplane is shutting down.
    Cancelled,
    /// The connection is gone or unhealthy; reconnect.
    Lost(String),
}

/// Runs until the backplane is cancelled: one connection "epoch" after another.
pub(crate) async fn supervise(shared: Arc<Shared>, mut ops: mpsc::Receiver<SubOp>) {
    // Disconnection notices of each epoch's connections (bounded: one per epoch is
    // enough; the health checks catch a notice that did not fit).
    let (events_tx, mut events) = mpsc::channel::<u64>(64);
    let mut epoch = 0u64;
    let mut failures = 0u32;
    let mut was_up = false;
    // The provider's connections this hub saw fail last (replaced at the next attempt).
    let mut failed: Option<u64> = None;
    'outer: loop {
        epoch += 1;
        let attempt = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            r = establish(&shared, epoch, &events_tx, failed.take()) => r,
        };
        match attempt {
            Ok((cmd, sub, mut subscribed)) => {
                failures = 0;
                shared.link.send_replace(Link::Up {
                    cmd: cmd.clone(),
                    loss: LossSignal {
                        epoch,
                        tx: events_tx.clone(),
                    },
                });
                if was_up {
                    HubMetrics::incr(&shared.metrics.backplane_reconnects);
                    // What the groups' channels carried while the subscriptions were
                    // down: read from history where kept (else their next push shows
                    // the gap).
                    for sub in &subscribed {
                        if let Sub::Group(group) = sub {
                            shared.inbox.catch_up(group.as_str());
                        }
                    }
                    tracing::info!(
                        hub = shared.hub,
                        redis = %shared.cfg.deployment.describe(),
                        groups = shared.local.groups().len(),
                        "reconnected to Redis; resubscribed and re-registered"
                    );
                } else {
                    tracing::info!(hub = shared.hub, redis = %shared.cfg.deployment.describe(), "connected to Redis");
                }
                was_up = true;
                match serve(
                    &shared,
                    epoch,
                    &cmd,
                    &sub,
                    &mut subscribed,
                    &mut ops,
                    &mut events,
                )
                .await
                {
                    Ended::Cancelled => {
                        // Unsubscribe what only this hub used on the shared connection.
                        let _ = tokio::time::timeout(
                            shared.cfg.command_timeout,
                            sub.release(shared.cfg.sharded),
                        )
                        .await;
                        break;
                    }
                    Ended::Lost(reason) => {
                        // Condemned for every hub sharing it, now.
                        shared.wire.condemn(sub.pair_number());
                        failed = Some(sub.pair_number());
                        tracing::warn!(hub = shared.hub, %reason, "lost the connection to Redis; reconnecting");
                        // Asks waiting on other servers end now, not at their timeout.
                        shared
                            .inbox
                            .events()
                            .link_down(format!("redis backplane down: {reason}"));
                        shared.link.send_replace(Link::Down {
                            reason: reason.into(),
                        });
                    }
                }
            }
            Err(e) => {
                failures += 1;
                HubMetrics::incr(&shared.metrics.backplane_errors);
                if failures == 1 || failures % 20 == 0 {
                    tracing::warn!(hub = shared.hub, error = %e, failures, "cannot connect to Redis; retrying");
                } else {
                    tracing::debug!(hub = shared.hub, error = %e, failures, "cannot connect to Redis; retrying");
                }
                shared.link.send_replace(Link::Down {
                    reason: e.to_string().into(),
                });
            }
        }
        // Back off, failing subscriptions meanwhile (joins fail fast while down).
        let sleep = tokio::time::sleep(backoff(&shared, failures, epoch));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = shared.cancel.cancelled() => break 'outer,
                _ = &mut sleep => break,
                Some(op) = ops.recv() => refuse(op),
                Some(_) = events.recv() => {} // from a connection already given up
            }
        }
    }
    shared.link.send_replace(Link::Closed);
    ops.close();
    while let Ok(op) = ops.try_recv() {
        let _ = op.done.send(Err(unavailable("the hub is shut down")));
    }
}

/// Answers a (un)subscribe request while there is no connection.
fn refuse(op: SubOp) {
    let answer = if op.subscribe {
        Err(unavailable("subscribe: not connected to Redis"))
    } else {
        Ok(())
    };
    let _ = op.done.send(answer);
}

/// The delay before reconnect attempt `failures` (0 after a loss): doubling from the
/// minimum to the maximum, with ±25% jitter so servers do not reconnect in lockstep.
fn backoff(shared: &Shared, failures: u32, epoch: u64) -> Duration {
    let cfg = &shared.cfg;
    let base = cfg
        .backoff_min
        .saturating_mul(1u32 << failures.min(16))
        .min(cfg.backoff_max);
    // A cheap, per-server, per-attempt pseudo-random factor in [0.75, 1.25).
    let mut x = shared.node.0 ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    let factor = 0.75 + (x % 1000) as f64 / 2000.0;
    base.mul_f64(factor)
}

/// Takes the provider's command and subscriber connections for one epoch (opening
/// them if no hub has), subscribes to this server's channel and every group with
/// local members, and registers presence. Returns the command connection, this hub's
/// subscriptions and the groups subscribed. `failed`: the connections this hub saw
/// fail, replaced first.
async fn establish(
    shared: &Arc<Shared>,
    epoch: u64,
    events: &mpsc::Sender<u64>,
    failed: Option<u64>,
) -> Result<(Conn, SubHandle, HashSet<Sub>), GroupError> {
    let cfg = &shared.cfg;
    let loss = LossSignal {
        epoch,
        tx: events.clone(),
    };
    let inbound = Inbound {
        keys: shared.keys.clone(),
        node_channel: shared.node_channel.clone(),
        inbox: shared.inbox.clone(),
    };
    let limit = cfg.connect_timeout;
    let pair = shared
        .timed("connect", limit, shared.wire.acquire(failed, limit))
        .await?;
    let cmd = pair.cmd().clone();
    let sub = pair.join(shared.hub_id, loss, inbound);
    let ready = async {
        let groups = wanted(shared);
        let mut channels = vec![shared.node_channel.clone()];
        channels.extend(groups.iter().map(|s| s.channel(shared)));
        let after = cfg.command_timeout * (1 + (channels.len() / 1024) as u32);
        shared
            .timed("subscribe", after, sub.subscribe(&channels, cfg.sharded))
            .await?;
        presence::register(shared, &cmd).await?;
        Ok::<_, GroupError>(groups)
    };
    match ready.await {
        Ok(groups) => Ok((cmd, sub, groups)),
        Err(e) => {
            shared.wire.condemn(pair.number());
            Err(e)
        }
    }
}

/// Serves one connected epoch: subscription requests, health checks, heartbeats.
async fn serve(
    shared: &Arc<Shared>,
    epoch: u64,
    cmd: &Conn,
    sub: &SubHandle,
    subscribed: &mut HashSet<Sub>,
    ops: &mut mpsc::Receiver<SubOp>,
    events: &mut mpsc::Receiver<u64>,
) -> Ended {
    let every = shared.cfg.heartbeat_interval();
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failed_beats = 0u32;
    // Leaves while the link was down were not sent here; catch up at once.
    if let Err(e) = reconcile(shared, sub, subscribed).await {
        return Ended::Lost(format!("subscription failed: {e}"));
    }
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return Ended::Cancelled,
            ev = events.recv() => {
                if ev == Some(epoch) {
                    return Ended::Lost("the connection to Redis closed or stopped answering".into());
                }
            }
            op = ops.recv() => {
                let Some(op) = op else { return Ended::Cancelled };
                let mut batch = vec![op];
                while batch.len() < 512 {
                    match ops.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
                if let Err(e) = apply(shared, sub, subscribed, batch).await {
                    return Ended::Lost(format!("subscription failed: {e}"));
                }
            }
            _ = tick.tick() => {
                // PING the subscriber connection: a half-open socket shows up here.
                if let Err(e) = shared.timed("ping", shared.cfg.command_timeout, sub.ping()).await {
                    HubMetrics::incr(&shared.metrics.backplane_errors);
                    return Ended::Lost(format!("subscriber connection unhealthy: {e}"));
                }
                if let Err(e) = reconcile(shared, sub, subscribed).await {
                    HubMetrics::incr(&shared.metrics.backplane_errors);
                    return Ended::Lost(format!("subscription failed: {e}"));
                }
                match presence::heartbeat(shared, cmd).await {
                    Ok(beat) => {
                        failed_beats = 0;
                        if !beat.alive {
                            tracing::warn!(hub = shared.hub, "presence expired (heartbeats were missed); registering again");
                            if let Err(e) = presence::register(shared, cmd).await {
                                HubMetrics::incr(&shared.metrics.backplane_errors);
                                return Ended::Lost(format!("presence registration failed: {e}"));
                            }
                        }
                        if !beat.dead.is_empty() {
                            janitor(shared, cmd, beat.dead);
                        }
                        if let Err(e) = presence::refresh_sessions(shared, cmd).await {
                            HubMetrics::incr(&shared.metrics.backplane_errors);
                            tracing::warn!(hub = shared.hub, error = %e, "could not extend the session records");
                        }
                    }
                    Err(e) => {
                        HubMetrics::incr(&shared.metrics.backplane_errors);
                        failed_beats += 1;
                        tracing::warn!(hub = shared.hub, error = %e, "presence heartbeat failed");
                        // One miss is tolerated (a slow moment); two mean trouble.
                        if failed_beats >= 2 {
                            return Ended::Lost(format!("presence heartbeats failing: {e}"));
                        }
                    }
                }
            }
        }
    }
}

/// Applies a batch of subscription requests with one command each way.
///
/// Every join asks for the subscription (not only a group's first one), and is
/// answered once it is confirmed: a member that joins while the first member's
/// subscription is still pending must not be told "joined" before pushes can reach
/// it. Groups already subscribed are answered at once, without a command.
///
/// An unsubscribe is skipped when the group has local members again (a join raced the
/// last leave), so concurrent joins and leaves cannot leave a group with members but
/// no subscription.
async fn apply(
    shared: &Shared,
    sub: &SubHandle,
    subscribed: &mut HashSet<Sub>,
    batch: Vec<SubOp>,
) -> Result<(), GroupError> {
    let (subs, unsubs): (Vec<SubOp>, Vec<SubOp>) = batch.into_iter().partition(|op| op.subscribe);
    let wanted: HashSet<&Sub> = subs.iter().map(|op| &op.sub).collect();
    let mut adding: Vec<Sub> = wanted
        .iter()
        .filter(|g| !subscribed.contains(**g))
        .map(|g| (*g).clone())
        .collect();
    adding.sort();
    let mut dropping: Vec<Sub> = unsubs
        .iter()
        .map(|op| &op.sub)
        .filter(|g| !wanted.contains(g) && subscribed.contains(*g) && !g.wanted(shared))
        .cloned()
        .collect();
    dropping.sort();
    dropping.dedup();
    let timeout = shared.cfg.command_timeout;
    let channels =
        |subs: &[Sub]| -> Vec<String> { subs.iter().map(|s| s.channel(shared)).collect() };
    let added = shared
        .timed(
            "subscribe",
            timeout,
            sub.subscribe(&channels(&adding), shared.cfg.sharded),
        )
        .await;
    if added.is_ok() {
        subscribed.extend(adding.iter().cloned());
    }
    let dropped = shared
        .timed(
            "unsubscribe",
            timeout,
            sub.unsubscribe(&channels(&dropping), shared.cfg.sharded),
        )
        .await;
    if dropped.is_ok() {
        for g in &dropping {
            subscribed.remove(g);
        }
    }
    if !adding.is_empty() || !dropping.is_empty() {
        tracing::debug!(
            hub = shared.hub,
            subscribed = adding.len(),
            unsubscribed = dropping.len(),
            "subscriptions updated"
        );
    }
    for op in subs {
        let _ = op.done.send(added.as_ref().map(|_| ()).map_err(copy_error));
    }
    for op in unsubs {
        let _ = op
            .done
            .send(dropped.as_ref().map(|_| ()).map_err(copy_error));
    }
    added.and(dropped)
}

/// Makes the subscriptions match the local registry: subscribes groups with local
/// members that are not subscribed, and unsubscribes groups without any (and the
/// same for the other servers' channels adopted). A safety net
/// (runs after every connect and heartbeat) for anything the join/leave requests
/// missed, e.g. a last member leaving while the link was down.
async fn reconcile(
    shared: &Shared,
    sub: &SubHandle,
    subscribed: &mut HashSet<Sub>,
) -> Result<(), GroupError> {
    let local = wanted(shared);
    let missing: Vec<Sub> = local.difference(subscribed).cloned().collect();
    let stale: Vec<Sub> = subscribed.difference(&local).cloned().collect();
    if missing.is_empty() && stale.is_empty() {
        return Ok(());
    }
    let channels =
        |subs: &[Sub]| -> Vec<String> { subs.iter().map(|s| s.channel(shared)).collect() };
    let timeout = shared.cfg.command_timeout;
    shared
        .timed(
            "subscribe",
            timeout,
            sub.subscribe(&channels(&missing), shared.cfg.sharded),
        )
        .await?;
    subscribed.extend(missing.iter().cloned());
    shared
        .timed(
            "unsubscribe",
            timeout,
            sub.unsubscribe(&channels(&stale), shared.cfg.sharded),
        )
        .await?;
    for g in &stale {
        subscribed.remove(g);
    }
    tracing::debug!(
        hub = shared.hub,
        subscribed = missing.len(),
        unsubscribed = stale.len(),
        "subscriptions reconciled"
    );
    Ok(())
}

/// Cleans up after dead servers in the background, one clean-up at a time.
fn janitor(shared: &Arc<Shared>, cmd: &Conn, dead: Vec<String>) {
    if shared.janitor_busy.swap(true, AcqRel) {
        return;
    }
    let shared = shared.clone();
    let cmd = cmd.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shared.cancel.cancelled() => {}
            r = presence::purge(&shared, &cmd, dead) => {
                if let Err(e) = r {
                    HubMetrics::incr(&shared.metrics.backplane_errors);
                    tracing::warn!(hub = shared.hub, error = %e, "clean-up of dead servers' presence failed");
                }
            }
        }
        shared.janitor_busy.store(false, Release);
    });
}
