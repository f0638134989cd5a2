//! Asks: the server sends a frame to target connections and waits for each one's
//! answer, on this server or on another through the backplane.
//!
//! The answers are read by each target connection's reader (like pings, never queued
//! behind the connection's calls) and routed here by ask id. A target on another
//! server gets an `Ask` envelope on its server's node channel; its server asks it as
//! a local target and publishes the outcome back on the asker's node channel.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hub_core::ask::{AskEvent, AskOutcome, AskReply, RemoteAsk, ask_frame};
use hub_core::frame::{OutFrame, clamp_safe};
use hub_core::proto::{self, AnswerOutcome};
use hub_core::{ConnectionId, HubMetrics, NodeId};
use tokio::sync::oneshot;

use crate::ask_table::{Holding, Key, Local, Raw};
use crate::hub::HubCore;

/// Handles an ask event from the backplane (called from a backend's task: spawns).
pub(crate) fn on_event(
    core: &Arc<HubCore>,
    event: AskEvent,
    runtime: Option<&tokio::runtime::Handle>,
) {
    match event {
        AskEvent::Answered(a) => {
            let Ok(conn) = a.connection.parse::<ConnectionId>() else {
                HubMetrics::incr(&core.metrics.backplane_malformed);
                return;
            };
            let tx = core.asks.lock().remote.remove(&(a.id, conn));
            let Some(tx) = tx else {
                HubMetrics::incr(&core.metrics.answers_unmatched);
                return;
            };
            let outcome = match a.outcome() {
                AnswerOutcome::Answered => AskOutcome::Answered(a.frame),
                AnswerOutcome::Failed => AskOutcome::Failed(tonic::Status::new(
                    tonic::Code::from_i32(a.code),
                    hub_core::quote::bound_str(&a.message),
                )),
                AnswerOutcome::TimedOut => AskOutcome::TimedOut,
                AnswerOutcome::Disconnected | AnswerOutcome::Unspecified => {
                    AskOutcome::Disconnected(if a.message.is_empty() {
                        "the connection is not connected".into()
                    } else {
                        a.message
                    })
                }
            };
            let _ = tx.send(outcome);
        }
        AskEvent::ServerDead(node) => core.asks.end_remote(
            |c| c.node == node,
            || AskOutcome::Disconnected(format!("its server {node} died")),
        ),
        AskEvent::LinkDown(why) => core
            .asks
            .end_remote(|_| true, || AskOutcome::Unreachable(why.clone())),
        AskEvent::Asked(ask) => {
            let core = core.clone();
            let task = async move { serve_remote(core, ask).await };
            match runtime {
                Some(rt) => {
                    rt.spawn(task);
                }
                None => {
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(task);
                    }
                }
            }
        }
    }
}

/// Asks this server's connections what another server asks them, and sends each
/// outcome back as soon as it is known (one target waiting for its timeout does not
/// hold back the answers of the others).
async fn serve_remote(core: Arc<HubCore>, ask: RemoteAsk) {
    let timeout = ask.timeout.min(Duration::from_secs(3600));
    let each = ask.connections.iter().map(|c| {
        let (core, frame, reply_to, id) = (&core, ask.frame.clone(), ask.reply_to, ask.id);
        async move {
            let replies = core.ask(vec![(*c, None)], frame, timeout, false).await;
            for r in replies {
                send_answer(core, reply_to, id, r).await;
            }
        }
    });
    futures_util::future::join_all(each).await;
}

/// Publishes one target's outcome to the asking server.
async fn send_answer(core: &HubCore, reply_to: NodeId, id: u64, r: AskReply<Bytes>) {
    let mut answer = proto::Answer {
        id,
        connection: r.connection.to_string(),
        ..Default::default()
    };
    match r.outcome {
        AskOutcome::Answered(frame) => {
            answer.set_outcome(AnswerOutcome::Answered);
            answer.frame = frame;
        }
        AskOutcome::Failed(s) => {
            answer.set_outcome(AnswerOutcome::Failed);
            answer.code = s.code() as i32;
            answer.message = s.message().to_owned();
        }
        AskOutcome::TimedOut => answer.set_outcome(AnswerOutcome::TimedOut),
        AskOutcome::Disconnected(why) | AskOutcome::Unreachable(why) => {
            answer.set_outcome(AnswerOutcome::Disconnected);
            answer.message = why;
        }
    }
    if let Some(fut) = core.backplane.answer(reply_to, &answer)
        && let Err(e) = fut.await
    {
        HubMetrics::incr(&core.metrics.backplane_publish_failures);
        tracing::debug!(error = %e, "could not send an answer back to the asking server");
    }
}

/// What one target is waiting on.
enum Wait {
    Done(Raw),
    On(oneshot::Receiver<Raw>),
}

impl HubCore {
    /// Whether no ask waits on this hub (tests).
    #[cfg(test)]
    pub(crate) fn asks_idle(&self) -> bool {
        self.asks.idle()
    }

    /// Asks `targets` (with their users, when known) with the encoded ask `frame`,
    /// waits up to `timeout` for each, and returns every target's outcome in order.
    /// `count`: book the outcomes in the metrics (not for asks served for another
    /// server, which books them itself).
    pub(crate) async fn ask(
        &self,
        targets: Vec<(ConnectionId, Option<String>)>,
        frame: Bytes,
        timeout: Duration,
        count: bool,
    ) -> Vec<AskReply<Bytes>> {
        let metrics = &self.metrics;
        let timeout_ms = clamp_safe(timeout.as_millis());
        let mut holding = Holding {
            asks: &self.asks,
            keys: Vec::new(),
        };
        let mut waits: Vec<Wait> = Vec::with_capacity(targets.len());
        // Room for the control field each copy gets (and the sequence number margin).
        let too_large = frame.len() + 24 > self.max_outbound();
        let mut remote: std::collections::BTreeMap<NodeId, Vec<(usize, ConnectionId)>> =
            Default::default();
        for (i, (target, _)) in targets.iter().enumerate() {
            if count {
                HubMetrics::incr(&metrics.asks);
            }
            if too_large {
                waits.push(Wait::Done(AskOutcome::Failed(tonic::Status::out_of_range(
                    format!(
                        "the ask is {} bytes; the limit is {}",
                        frame.len(),
                        self.max_outbound()
                    ),
                ))));
                continue;
            }
            // Held here (a session restored here has an id of another server), or
            // an id of this server not moved away ("not connected" at once), is
            // local; the rest goes to the channel of the server the id names, which
            // the server holding it listens on.
            if !self.local.answers_for(*target) {
                remote.entry(target.node).or_default().push((i, *target));
                waits.push(Wait::Done(AskOutcome::TimedOut)); // replaced below
                continue;
            }
            waits.push(self.ask_local(*target, &frame, timeout_ms, &mut holding));
        }
        for (node, ids) in remote {
            let id = self.asks.next_id();
            let conns: Vec<ConnectionId> = ids.iter().map(|(_, c)| *c).collect();
            {
                let mut s = self.asks.lock();
                for (i, c) in &ids {
                    let (tx, rx) = oneshot::channel();
                    s.remote.insert((id, *c), tx);
                    holding.keys.push(Key::Remote(id, *c));
                    waits[*i] = Wait::On(rx);
                }
            }
            let ask = proto::Ask {
                id,
                reply_to: self.node.to_string(),
                timeout_ms,
                frame: frame.clone(),
            };
            let failed = match self.backplane.ask(node, &conns, &ask) {
                None => Some(AskOutcome::Disconnected(
                    "the connection is not connected (no backplane)".into(),
                )),
                Some(fut) => match fut.await {
                    Ok(()) => {
                        HubMetrics::incr(&metrics.backplane_published);
                        None
                    }
                    Err(e) => {
                        HubMetrics::incr(&metrics.backplane_publish_failures);
                        Some(AskOutcome::Unreachable(e.to_string()))
                    }
                },
            };
            if let Some(outcome) = failed {
                let mut s = self.asks.lock();
                for (i, c) in &ids {
                    s.remote.remove(&(id, *c));
                    waits[*i] = Wait::Done(outcome.clone());
                }
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(targets.len());
        for ((connection, user), wait) in targets.into_iter().zip(waits) {
            let outcome = match wait {
                Wait::Done(o) => o,
                Wait::On(rx) => match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(o)) => o,
                    Ok(Err(_)) => AskOutcome::Disconnected("the hub shut down".into()),
                    Err(_) => AskOutcome::TimedOut,
                },
            };
            if count {
                HubMetrics::incr(match &outcome {
                    AskOutcome::Answered(_) => &metrics.asks_answered,
                    AskOutcome::Failed(s)
                        if s.code() == tonic::Code::ResourceExhausted
                            || s.code() == tonic::Code::OutOfRange =>
                    {
                        &metrics.asks_refused
                    }
                    AskOutcome::Failed(_) => &metrics.asks_failed,
                    AskOutcome::TimedOut => &metrics.asks_timed_out,
                    AskOutcome::Disconnected(_) => &metrics.asks_disconnected,
                    AskOutcome::Unreachable(_) => &metrics.asks_unreachable,
                });
            }
            out.push(AskReply {
                connection,
                user,
                outcome,
            });
        }
        drop(holding);
        out
    }

    /// Sends the ask to a local connection and registers its waiter.
    fn ask_local(
        &self,
        target: ConnectionId,
        frame: &Bytes,
        timeout_ms: u64,
        holding: &mut Holding<'_>,
    ) -> Wait {
        let Some(member) = self.local.member(target) else {
            return Wait::Done(AskOutcome::Disconnected(
                "the connection is not connected".into(),
            ));
        };
        let id = self.asks.next_id();
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self.asks.lock();
            let n = s.per_target.entry(target).or_default();
            if *n >= self.config.max_asks_per_target {
                let max = self.config.max_asks_per_target;
                return Wait::Done(AskOutcome::Failed(tonic::Status::resource_exhausted(
                    format!("{max} asks already wait for this connection's answers"),
                )));
            }
            *n += 1;
            s.local.insert(id, Local { target, tx });
        }
        holding.keys.push(Key::Local(id));
        if member
            .outbox
            .offer(OutFrame::reply(ask_frame(frame, id, timeout_ms)))
            .is_err()
        {
            let mut s = self.asks.lock();
            if let Some(l) = s.local.remove(&id) {
                s.release(l.target);
            }
            return Wait::Done(if member.outbox.is_closed() {
                AskOutcome::Disconnected("the connection is closing".into())
            } else {
                AskOutcome::Failed(tonic::Status::resource_exhausted(
                    "the connection's outbound queue is full",
                ))
            });
        }
        Wait::On(rx)
    }
}
