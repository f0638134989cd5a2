//! Background tasks of a bound hub.
//!
//! - one reader per subscribed group ([`read_group`]) and one for this server's own
//!   subject ([`read_node`]): decode the envelope, hand the frame to local members;
//! - one reader of the hub's reply inbox ([`read_inbox`]): roll-call answers and
//!   round-trip probes, routed to their waiter by token;
//! - the control task ([`control`]): heartbeats, the live-server list, answering
//!   roll calls, and reacting to connection events (reconnects, slow consumers).
//!
//! Readers own only what delivery needs; the control task holds the hub's state
//! weakly, so dropping the backplane (or a crash of the process) stops them all.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::{Event, Message, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use hub_core::{GroupName, HubMetrics};
use prost::Message as _;
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::backplane::{AbortOnDrop, Inbound, Inner, Pending, answer_parts, lock};
use crate::proto::{self, heartbeat::Kind};

/// Reads one group's subject.
pub(crate) async fn read_group(mut sub: Subscriber, group: GroupName, inbound: Inbound) {
    while let Some(msg) = sub.next().await {
        inbound.handle(msg.payload, Some(group.as_str()));
    }
}

/// Reads this server's own subject (sends to its connections, without a group).
async fn read_node(mut sub: Subscriber, inbound: Inbound) {
    while let Some(msg) = sub.next().await {
        inbound.handle(msg.payload, None);
    }
}

/// Reads the hub's reply inbox (`<inbox>.<token>`).
async fn read_inbox(mut sub: Subscriber, inbox: String, pending: Arc<Pending>) {
    let prefix = inbox.len() + 1;
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

/// The hub's own subscriptions, made once at start.
struct Own {
    heartbeat: Subscriber,
    roll_call: Subscriber,
}

async fn subscribe_own(inner: &Inner) -> Result<Own, async_nats::SubscribeError> {
    let client = &inner.client;
    // The inbox and node subscriptions go first: a roll call or a send may need them
    // as soon as `ready` is set.
    let inbox = client.subscribe(format!("{}.*", inner.inbox)).await?;
    let node = client.subscribe(inner.subjects.node(inner.node)).await?;
    let heartbeat = client.subscribe(inner.subjects.heartbeat.clone()).await?;
    let roll_call = client.subscribe(inner.subjects.roll_call.clone()).await?;
    let mut tasks = lock(&inner.tasks);
    let t = tokio::spawn(read_inbox(
        inbox,
        inner.inbox.clone(),
        inner.pending.clone(),
    ));
    tasks.push(AbortOnDrop(t.abort_handle()));
    let t = tokio::spawn(read_node(node, inner.inbound.clone()));
    tasks.push(AbortOnDrop(t.abort_handle()));
    Ok(Own {
        heartbeat,
        roll_call,
    })
}

/// The control task of one hub.
pub(crate) async fn control(
    weak: Weak<Inner>,
    ready: watch::Sender<bool>,
    events: broadcast::Receiver<Event>,
) {
    let (mut own, heartbeat_every) = {
        let Some(inner) = weak.upgrade() else { return };
        let own = match subscribe_own(&inner).await {
            Ok(own) => own,
            Err(e) => {
                // Only when the connection is closed for good.
                HubMetrics::incr(&inner.inbound.metrics.backplane_errors);
                tracing::error!(hub = inner.hub, error = %e, "cannot subscribe to the hub's NATS subjects");
                return;
            }
        };
        let _ = ready.send(true);
        lock(&inner.peers).warm_up(Instant::now() + inner.config.roll_call_timeout);
        inner.heartbeat(Kind::Hello).await;
        (own, inner.config.heartbeat)
    };
    let mut tick = tokio::time::interval_at(Instant::now() + heartbeat_every, heartbeat_every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut events = Some(events);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let Some(inner) = weak.upgrade() else { return };
                on_tick(&inner).await;
            }
            msg = own.heartbeat.next() => {
                let (Some(msg), Some(inner)) = (msg, weak.upgrade()) else { return };
                on_heartbeat(&inner, msg).await;
            }
            msg = own.roll_call.next() => {
                let (Some(msg), Some(inner)) = (msg, weak.upgrade()) else { return };
                answer_roll_call(&inner, msg).await;
            }
            event = next_event(&mut events) => {
                let Some(inner) = weak.upgrade() else { return };
                on_event(&inner, event).await;
            }
        }
    }
}

async fn on_tick(inner: &Inner) {
    inner.heartbeat(Kind::Beat).await;
    let dead = lock(&inner.peers).expire(Instant::now());
    for node in dead {
        tracing::info!(hub = inner.hub, %node, "hub server presumed dead (no heartbeat)");
    }
    // Also catches a reconnect whose event was missed.
    check_reconnect(inner).await;
}

async fn on_heartbeat(inner: &Inner, msg: Message) {
    let beat = match proto::Heartbeat::decode(msg.payload) {
        Ok(b) => b,
        Err(e) => {
            HubMetrics::incr(&inner.inbound.metrics.backplane_malformed);
            tracing::warn!(hub = inner.hub, error = %e, "dropped a malformed heartbeat");
            return;
        }
    };
    if beat.node == *inner.inbound.origin {
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
            if lock(&inner.peers).gone(&beat.node) {
                tracing::debug!(hub = inner.hub, node = %beat.node, "hub server left");
            }
        }
    }
}

/// Answers a roll call with this server's members of the group (possibly none).
async fn answer_roll_call(inner: &Inner, msg: Message) {
    let metrics = &inner.inbound.metrics;
    let (Some(reply), Ok(query)) = (msg.reply, proto::RollCall::decode(msg.payload)) else {
        HubMetrics::incr(&metrics.backplane_malformed);
        tracing::warn!(hub = inner.hub, "dropped a malformed roll call");
        return;
    };
    if query.origin == *inner.inbound.origin || inner.check_connected("roll call").is_err() {
        return;
    }
    let local = &inner.inbound.local;
    let (count, members) = if query.count_only {
        (local.count(&query.group) as u64, Vec::new())
    } else {
        let members = local.members(&query.group);
        (members.len() as u64, members)
    };
    let limit = (inner.client.max_payload() / 2).max(4096);
    for part in answer_parts(&inner.inbound.origin, members, count, limit) {
        let payload = Bytes::from(part.encode_to_vec());
        if let Err(e) = inner
            .send("roll-call answer", reply.to_string(), payload)
            .await
        {
            HubMetrics::incr(&metrics.backplane_errors);
            tracing::warn!(hub = inner.hub, group = %query.group, error = %e, "roll call not answered");
            return;
        }
    }
}

async fn on_event(inner: &Inner, event: Option<Event>) {
    match event {
        None | Some(Event::Connected) => check_reconnect(inner).await,
        Some(Event::Disconnected) => tracing::warn!(
            hub = inner.hub,
            "lost the NATS connection: publishes, first joins and member queries fail with Unavailable until it is back"
        ),
        Some(Event::SlowConsumer(sid)) => {
            HubMetrics::incr(&inner.inbound.metrics.backplane_errors);
            tracing::warn!(
                hub = inner.hub,
                sid,
                "NATS dropped messages of a subscription that fell behind"
            );
        }
        Some(Event::ServerError(e)) => {
            HubMetrics::incr(&inner.inbound.metrics.backplane_errors);
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
async fn check_reconnect(inner: &Inner) {
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
        HubMetrics::incr(&inner.inbound.metrics.backplane_reconnects);
    }
    tracing::info!(hub = inner.hub, "reconnected to NATS");
    lock(&inner.peers).warm_up(Instant::now() + inner.config.roll_call_timeout);
    inner.heartbeat(Kind::Hello).await;
    inner.resync().await;
}
