//! A group's subscriptions on this server (its envelopes and its membership changes),
//! made on its first local member and dropped with its last, and the membership
//! changes this server announces.

use std::sync::{Arc, Mutex};

use async_nats::Subscriber;
use bytes::Bytes;
use futures_util::StreamExt;
use hub_core::remote::{Inbox, Via};
use hub_core::{GroupError, GroupName, HubMetrics, MemberInfo};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use crate::BACKPLANE;
use crate::history::NatsHistory;
use crate::members::Whereabouts;
use crate::proto;
use crate::roll_call;
use crate::state::{Inner, Slot, lock};

/// Reads one group's subjects until cancelled: envelopes to local members, membership
/// changes into the whereabouts.
async fn read_group(
    mut frames: Subscriber,
    mut changes: Subscriber,
    group: GroupName,
    inbox: Inbox,
    whereabouts: Arc<Mutex<Whereabouts>>,
    history: Option<Arc<NatsHistory>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            // Stopped first: once the group is released, nothing more of it is read,
            // even what NATS sent before it processed the unsubscribe. Then the
            // seldom member changes, so a stream of frames never holds them back.
            biased;
            _ = stop.cancelled() => return,
            msg = changes.next() => match msg {
                Some(msg) => member_change(&inbox, &whereabouts, &group, msg.payload),
                None => return,
            },
            msg = frames.next() => match msg {
                Some(msg) => match (&history, sequence(&msg)) {
                    (Some(h), Some((offset, prev))) => {
                        inbox.receive_chained(msg.payload, group.as_str(), offset, prev, h.epoch());
                    }
                    _ => {
                        inbox.receive(msg.payload, Via::Group(group.as_str()));
                    }
                },
                None => return,
            },
        }
    }
}

/// The stream sequence of a republished message and its subject's previous one.
fn sequence(msg: &async_nats::Message) -> Option<(u64, u64)> {
    let headers = msg.headers.as_ref()?;
    let number = |name: &str| headers.get(name)?.as_str().parse::<u64>().ok();
    Some((
        number("Nats-Sequence")?,
        number("Nats-Last-Sequence").unwrap_or(0),
    ))
}

fn member_change(
    inbox: &Inbox,
    whereabouts: &Mutex<Whereabouts>,
    group: &GroupName,
    payload: Bytes,
) {
    let change = proto::MemberChange::decode(payload).ok();
    let member = change.as_ref().and_then(|c| {
        let m = c.member.as_ref()?;
        Some(MemberInfo {
            connection: m.connection.parse().ok()?,
            user: m.user.clone(),
        })
    });
    match (change, member) {
        (Some(c), Some(m)) if c.node != inbox.writer().origin() => {
            lock(whereabouts).change(group, &c.node, m, c.joined, c.seq);
        }
        (Some(_), Some(_)) => {}
        _ => HubMetrics::incr(&inbox.metrics().backplane_malformed),
    }
}

impl Inner {
    fn slot_is_current(&self, group: &GroupName, slot: &Arc<Slot>) -> bool {
        lock(&self.groups)
            .get(group)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
    }

    /// Whether `group` is subscribed here (without waiting).
    pub(crate) fn is_subscribed(&self, group: &GroupName) -> bool {
        let slot = lock(&self.groups).get(group).cloned();
        slot.is_some_and(|s| s.reader.try_lock().is_ok_and(|r| r.is_some()))
    }

    /// Subscribes to a group's subjects unless it already is, and waits until our
    /// NATS server has registered the subscriptions. A new subscription starts
    /// keeping the group's whereabouts, seeded by a roll call in the background.
    pub(crate) async fn ensure_subscribed(
        self: &Arc<Self>,
        group: &GroupName,
    ) -> Result<(), GroupError> {
        loop {
            let slot = lock(&self.groups).entry(group.clone()).or_default().clone();
            let mut reader = slot.reader.lock().await;
            if !self.slot_is_current(group, &slot) {
                // Released meanwhile: start over with a fresh entry.
                continue;
            }
            if reader.is_some() {
                return Ok(());
            }
            self.wait_ready().await?;
            self.check_connected("join")?;
            let subject = match &self.history {
                Some(h) => {
                    h.ensure().await?;
                    self.subjects.republished(group.as_str())
                }
                None => self.subjects.group(group.as_str()),
            };
            let members = self.subjects.members(group.as_str());
            let subscribe = |subject: String| async move {
                self.client.subscribe(subject.clone()).await.map_err(|e| {
                    GroupError::unavailable(BACKPLANE, format!("subscribe to {subject} failed"), e)
                })
            };
            let (frames, changes) = self
                .bounded("subscribe", self.config.op_timeout, async {
                    Ok((subscribe(subject.clone()).await?, subscribe(members).await?))
                })
                .await?;
            lock(&self.whereabouts).track(group);
            let stop = self.cancel.child_token();
            tokio::spawn(read_group(
                frames,
                changes,
                group.clone(),
                self.inbox.clone(),
                self.whereabouts.clone(),
                self.history.clone(),
                stop.clone(),
            ));
            let guard = stop.drop_guard();
            // On error the guard is dropped here, which unsubscribes.
            self.round_trip("subscribe", self.config.op_timeout).await?;
            *reader = Some(guard);
            tracing::debug!(hub = self.hub, %group, %subject, "subscribed");
            self.seed(group.clone());
            return Ok(());
        }
    }

    /// Learns who the other servers' members of `group` are (a roll call), in the
    /// background; membership changes keep it current from then on.
    pub(crate) fn seed(self: &Arc<Self>, group: GroupName) {
        let inner = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = inner.cancel.cancelled() => {}
                // The answers update the whereabouts as they come.
                tally = roll_call::ask(&inner, &group, false) => if let Err(e) = tally {
                    tracing::debug!(hub = inner.hub, %group, error = %e, "could not learn the group's members elsewhere");
                },
            }
        });
    }

    /// Tells the other servers with members of `group` that `member` joined or left.
    /// Best effort: a change not sent (NATS down) is corrected by the next roll call
    /// of a server that subscribes or reconnects.
    pub(crate) async fn announce(&self, group: &GroupName, member: &MemberInfo, joined: bool) {
        let seq = self
            .changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let change = proto::MemberChange {
            seq,
            node: self.origin().to_owned(),
            member: Some(proto::Member {
                connection: member.connection.to_string(),
                user: member.user.clone(),
            }),
            joined,
        };
        let payload = Bytes::from(change.encode_to_vec());
        if let Err(e) = self
            .send(
                "member change",
                self.subjects.members(group.as_str()),
                payload,
            )
            .await
        {
            HubMetrics::incr(&self.metrics().backplane_errors);
            tracing::debug!(hub = self.hub, %group, error = %e, "membership change not sent");
        }
    }

    /// Unsubscribes from a group's subjects if the group has no local member.
    pub(crate) async fn release(&self, group: &GroupName) {
        let Some(slot) = lock(&self.groups).get(group).cloned() else {
            return;
        };
        let mut reader = slot.reader.lock().await;
        if self.inbox.local().count(group.as_str()) > 0 {
            // Someone joined again meanwhile: keep it.
            return;
        }
        if reader.take().is_some() {
            lock(&self.whereabouts).untrack(group);
            tracing::debug!(hub = self.hub, %group, "unsubscribed");
        }
        let mut groups = lock(&self.groups);
        if groups.get(group).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
            groups.remove(group);
        }
    }

    /// After a reconnect: every group with local members is subscribed, no other is,
    /// and the whereabouts are learned again (changes may have been missed).
    pub(crate) async fn resync(self: &Arc<Self>) {
        if let Some(h) = &self.history {
            // The stream may have been made again (a server that lost its store).
            h.unbind();
            if let Err(e) = h.ensure().await {
                HubMetrics::incr(&self.metrics().backplane_errors);
                tracing::warn!(hub = self.hub, error = %e, "group history stream not bound after a reconnect");
            }
        }
        let local = self.inbox.local().groups();
        for group in &local {
            if !self.is_subscribed(group) {
                tracing::warn!(hub = self.hub, %group, "group with local members was not subscribed; subscribing");
                if let Err(e) = self.ensure_subscribed(group).await {
                    HubMetrics::incr(&self.metrics().backplane_errors);
                    tracing::warn!(hub = self.hub, %group, error = %e, "resubscribe failed");
                }
            } else {
                self.seed(group.clone());
            }
            // What the group's stream holds since the last push delivered here.
            self.inbox.catch_up(group.as_str());
        }
        let stale: Vec<GroupName> = lock(&self.groups)
            .keys()
            .filter(|g| self.inbox.local().count(g.as_str()) == 0)
            .cloned()
            .collect();
        for group in stale {
            self.release(&group).await;
        }
    }

    /// Groups subscribed here.
    #[cfg(test)]
    pub(crate) fn subscribed_groups(&self) -> Vec<GroupName> {
        let slots: Vec<(GroupName, Arc<Slot>)> = lock(&self.groups)
            .iter()
            .map(|(g, s)| (g.clone(), s.clone()))
            .collect();
        slots
            .into_iter()
            .filter(|(_, s)| s.reader.try_lock().map_or(true, |r| r.is_some()))
            .map(|(g, _)| g)
            .collect()
    }
}
