//! Background tasks of a bound hub, all stopped by the hub's cancellation token:
//!
//! - a reader of this server's own subject ([`read_node`]) and one of the hub's
//!   reply inbox ([`read_replies`]): roll-call answers and round-trip probes, routed
//!   to their waiter by token (group readers are in [`crate::groups`]);
//! - the control task ([`control`]): heartbeats, the live-server list (a server
//!   presumed dead has its members reported lost), answering roll calls, and
//!   reacting to connection events (reconnects, slow consumers).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use async_nats::{Event, Message, Subscriber};
use futures_util::{FutureExt, StreamExt};
use hub_core::remote::{Inbox, Via};
use hub_core::{GroupName, HubMetrics, MembersLost, NodeId};
use prost::Message as _;
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::proto::{self, heartbeat::Kind};
use crate::roll_call;
use crate::state::{Inner, Pending, lock};

/// Reads this server's own subject (sends to its connections, without a group).
async fn read_node(mut sub: Subscriber, inbox: Inbox) {
    while let Some(msg) = sub.next().await {
        inbox.receive(msg.payload, Via::Node);
    }
}

/// Reads the hub's reply inbox (`<replies>.<token>`).
async fn read_replies(mut sub: Subscriber, replies: String, pending: Arc<Pending>) {
    let prefix = replies.len() + 1;
    while let Some(msg) = sub.next().await {
        if let Some(token) = msg
            .subject
            .get(prefix..)
            .and_then(|t| t.parse::<u64>().ok())
        {
            pending.deliver(token, msg.payload);
        }
    }
}

/// The next connection event; `None` when some were missed (look at the connection instead).
async fn next_event(events: &mut Option<broadcast::Receiver<Event>>) -> Option<Event> {
    if let Some(rx) = events {
        match rx.recv().await {
            Ok(event) => return Some(event),
            Err(broadcast::error::RecvError::Lagged(_)) => return None,
            Err(broadcast::error::RecvError::Closed) => *events = None,
        }
    }
    std::future::pending().await
}

/// The hub's own subscriptions that the control task reads.
struct Own {
    heartbeat: Subscriber,
    roll_call: Subscriber,
}

async fn subscribe_own(inner: &Inner) -> Result<Own, async_nats::SubscribeError> {
    let client = &inner.client;
    // The inbox and node subscriptions go first: a roll call or a send may need them
    // as soon as `ready` is set.
    let replies = client.subscribe(format!("{}.*", inner.replies)).await?;
    let node = client.subscribe(inner.subjects.node(inner.node)).await?;
    let heartbeat = client.subscribe(inner.subjects.heartbeat.clone()).await?;
    let roll_call = client.subscribe(inner.subjects.roll_call.clone()).await?;
    spawn_until_cancelled(
        inner,
        read_replies(replies, inner.replies.clone(), inner.pending.clone()),
    );
    spawn_until_cancelled(inner, read_node(node, inner.inbox.clone()));
    Ok(Own {
        heartbeat,
        roll_call,
    })
}

/// Runs `task` until the hub's token is cancelled.
fn spawn_until_cancelled(
    inner: &Inner,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let stop = inner.cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = task => {}
        }
    });
}

/// The control task of one hub.
pub(crate) async fn control(
    inner: Arc<Inner>,
    ready: watch::Sender<bool>,
    events: broadcast::Receiver<Event>,
) {
    let stop = inner.cancel.clone();
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = run(inner, ready, events) => {}
    }
}

async fn run(inner: Arc<Inner>, ready: watch::Sender<bool>, events: broadcast::Receiver<Event>) {
    let mut own = match subscribe_own(&inner).await {
        Ok(own) => own,
        Err(e) => {
            // Only when the connection is closed for good.
            HubMetrics::incr(&inner.metrics().backplane_errors);
            tracing::error!(hub = inner.hub, error = %e, "cannot subscribe to the hub's NATS subjects");
            return;
        }
    };
    let _ = ready.send(true);
    if let Some(store) = inner.sessions.clone() {
        spawn_until_cancelled(&inner, refresh_sessions(inner.clone(), store));
    }
    lock(&inner.peers).warm_up(Instant::now() + inner.config.roll_call_timeout);
    inner.heartbeat(Kind::Hello).await;
    let every = inner.config.heartbeat;
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut events = Some(events);
    let mut stalled = false;
    loop {
        tokio::select! {
            _ = tick.tick() => on_tick(&inner, &mut own, &mut stalled).await,
            msg = own.heartbeat.next() => {
                let Some(msg) = msg else { return };
                on_heartbeat(&inner, msg).await;
            }
            msg = own.roll_call.next() => {
                let Some(msg) = msg else { return };
                roll_call::answer(&inner, msg).await;
            }
            event = next_event(&mut events) => on_event(&inner, event).await,
        }
    }
}

/// Rewrites this server's session records at each heartbeat interval, so that they
/// outlive it by the bucket's `max_age` and no more.
async fn refresh_sessions(inner: Arc<Inner>, store: Arc<crate::sessions::SessionStore>) {
    let every = inner.config.heartbeat;
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        store.refresh(inner.metrics(), inner.hub).await;
    }
}

/// Heartbeats, and the end of servers that fell silent. Silence may be ours: before
/// presuming anyone dead, a round trip checks that NATS answers us, and heartbeats
/// that arrived meanwhile are read first. After our own stall, every server gets a
/// fresh grace period instead of being declared dead for our silence.
async fn on_tick(inner: &Arc<Inner>, own: &mut Own, stalled: &mut bool) {
    inner.heartbeat(Kind::Beat).await;
    check_reconnect(inner).await;
    if !lock(&inner.peers).any_due(Instant::now()) && !*stalled {
        return;
    }
    if let Err(e) = inner
        .round_trip("liveness", roll_call::probe_timeout(inner))
        .await
    {
        if !*stalled {
            tracing::warn!(hub = inner.hub, error = %e, "NATS does not answer: no server is presumed dead while it does not");
        }
        *stalled = true;
        return;
    }
    // Heartbeats queued behind the probe count before anything expires.
    while let Some(Some(msg)) = own.heartbeat.next().now_or_never() {
        on_heartbeat(inner, msg).await;
    }
    if std::mem::take(stalled) {
        lock(&inner.peers).grace(Instant::now());
        tracing::info!(hub = inner.hub, "NATS answers again");
        return;
    }
    let dead = lock(&inner.peers).expire(Instant::now());
    for node in dead {
        tracing::info!(hub = inner.hub, %node, "hub server presumed dead (no heartbeat)");
        report_lost(inner, &node);
    }
}

/// Reports the members a dead server had in the groups with members here.
fn report_lost(inner: &Inner, node: &str) {
    let Ok(server) = u64::from_str_radix(node, 16) else {
        return;
    };
    // Asks waiting on its connections end now.
    inner.inbox.events().server_dead(NodeId(server));
    let lost = lock(&inner.whereabouts).server_gone(node);
    for (group, mut members) in lost {
        let group: GroupName = group;
        let here = inner.inbox.local().members(group.as_str());
        if here.is_empty() {
            continue;
        }
        // A session of the dead server resumed here is not lost.
        members.retain(|m| !here.iter().any(|h| h.connection == m.connection));
        if members.is_empty() {
            continue;
        }
        inner.inbox.events().members_lost(MembersLost {
            group,
            server: NodeId(server),
            members,
        });
    }
}

async fn on_heartbeat(inner: &Inner, msg: Message) {
    let beat = match proto::Heartbeat::decode(msg.payload) {
        Ok(b) => b,
        Err(e) => {
            HubMetrics::incr(&inner.metrics().backplane_malformed);
            tracing::warn!(hub = inner.hub, error = %e, "dropped a malformed heartbeat");
            return;
        }
    };
    if beat.node == inner.origin() {
        return;
    }
    let interval = Duration::from_millis(u64::from(beat.interval_ms));
    let now = Instant::now();
    match Kind::try_from(beat.kind).unwrap_or(Kind::Beat) {
        Kind::Beat => {
            if lock(&inner.peers).beat(&beat.node, interval, now) {
                tracing::debug!(hub = inner.hub, node = %beat.node, "hub server joined");
            }
        }
        Kind::Hello => {
            lock(&inner.peers).beat(&beat.node, interval, now);
            // Tell the newcomer we are here, so its first roll calls wait for us.
            inner.heartbeat(Kind::Beat).await;
        }
        Kind::Bye => {
            // Its members left before it said goodbye: nothing is lost.
            lock(&inner.whereabouts).server_gone(&beat.node);
            if lock(&inner.peers).gone(&beat.node) {
                tracing::debug!(hub = inner.hub, node = %beat.node, "hub server left");
            }
        }
    }
}

async fn on_event(inner: &Arc<Inner>, event: Option<Event>) {
    match event {
        None | Some(Event::Connected) => check_reconnect(inner).await,
        Some(Event::Disconnected) => {
            tracing::warn!(
                hub = inner.hub,
                "lost the NATS connection: publishes, first joins and member queries fail with Unavailable until it is back"
            );
            // Asks waiting on other servers end now, not at their timeout.
            inner
                .inbox
                .events()
                .link_down("nats backplane down: lost the connection");
        }
        Some(Event::SlowConsumer(sid)) => {
            HubMetrics::incr(&inner.metrics().backplane_errors);
            tracing::warn!(
                hub = inner.hub,
                sid,
                "NATS dropped messages of a subscription that fell behind"
            );
        }
        Some(Event::ServerError(e)) => {
            HubMetrics::incr(&inner.metrics().backplane_errors);
            tracing::warn!(hub = inner.hub, error = %e, "NATS server error");
        }
        Some(Event::ClientError(e)) => {
            tracing::warn!(hub = inner.hub, error = %e, "NATS client error")
        }
        Some(Event::LameDuckMode) => {
            tracing::info!(hub = inner.hub, "NATS server entering lame duck mode")
        }
        Some(Event::Closed) => tracing::warn!(hub = inner.hub, "NATS connection closed for good"),
        Some(Event::Draining) => {}
    }
}

/// Counts and handles a reconnect: announce ourselves again, check subscriptions.
async fn check_reconnect(inner: &Arc<Inner>) {
    let now = inner.client.statistics().connects.load(Relaxed);
    if now <= inner.connects.load(Relaxed) {
        return;
    }
    // async-nats announces the connection a moment before it reports it connected:
    // wait for that (briefly; the next tick tries again otherwise).
    for _ in 0..100 {
        if inner.check_connected("reconnect").is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if inner.check_connected("reconnect").is_err() {
        return;
    }
    let before = inner.connects.swap(now, Relaxed);
    if now <= before {
        return;
    }
    for _ in before..now {
        HubMetrics::incr(&inner.metrics().backplane_reconnects);
    }
    tracing::info!(hub = inner.hub, "reconnected to NATS");
    {
        let mut peers = lock(&inner.peers);
        let now = Instant::now();
        peers.warm_up(now + inner.config.roll_call_timeout);
        // Heartbeats were missed while we were away: that silence was ours.
        peers.grace(now);
    }
    inner.heartbeat(Kind::Hello).await;
    inner.resync().await;
}
