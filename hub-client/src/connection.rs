//! The connection's reader task: reads the stream, matches replies to calls by id,
//! hands pushes to the [`PushHandler`], answers and sends pings, and notices a server
//! that went silent.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use std::future::Future;
use std::task::Poll;

use futures_util::StreamExt;
use hub_core::proto::{self, client_control, server_control};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::{ClientError, CloseStatus};
use crate::shared::Shared;
use crate::spec::{ClientSpec, PushHandler};

/// Why the stream ended, from what its last read returned (`Ok(Some(_))` never comes here).
fn end_reason<T>(
    end: Result<Option<T>, tonic::Status>,
    goodbye: &mut Option<CloseStatus>,
) -> CloseStatus {
    goodbye.take().unwrap_or_else(|| match end {
        Err(status) => CloseStatus {
            code: status.code(),
            message: status.message().to_owned(),
        },
        Ok(_) => CloseStatus {
            code: tonic::Code::Ok,
            message: "the server closed the stream".into(),
        },
    })
}

pub(crate) struct Reader<S: ClientSpec> {
    pub(crate) shared: Arc<Shared<S>>,
    /// Weak, so that dropping every `HubClient` ends the request stream.
    pub(crate) tx: mpsc::WeakSender<S::Request>,
    pub(crate) handler: Arc<dyn PushHandler<S::Event, S::Answer>>,
    pub(crate) ping_interval: Option<Duration>,
}

/// How one stream ended.
pub(crate) struct Ended {
    /// The goodbye's status, the stream's, or the client's own (heartbeat timeout).
    pub(crate) status: CloseStatus,
    /// The server said goodbye: it closed the connection on purpose.
    pub(crate) goodbye: bool,
}

/// What one pass of the reader's poll found.
enum Step {
    /// The stream ended (`Ok(None)`) or failed.
    End(Result<Option<()>, tonic::Status>),
    /// The timer is due: pings, the watchdog, call deadlines.
    Timer,
    /// A full batch of frames was handled; more may be ready.
    More,
}

/// Frames handled in one pass before the timer is looked at.
const BATCH: usize = 64;

impl<S: ClientSpec> Reader<S> {
    /// Reads one stream until it ends, and tells how it did. The calls still waiting
    /// are left for the caller to answer.
    pub(crate) async fn run(
        &self,
        mut stream: tonic::Streaming<S::Response>,
        dead_after: Option<Duration>,
    ) -> Ended {
        // Never a zero period.
        let min = Duration::from_millis(1);
        let start = Instant::now();
        let ping_period = self.ping_interval.map(|p| p.max(min));
        let check_period = dead_after.map(|d| (d / 4).max(min));
        let mut next_ping = ping_period.map(|p| start + p);
        let mut next_check = check_period.map(|c| start + c);
        // Liveness without a clock read per frame: frames set `heard`; the watchdog
        // notes when it last saw `heard` set, and gives up once that is too long ago.
        let mut heard = false;
        let mut alive_at = start;
        let mut ping: Option<(u64, Instant)> = None;
        // Each ping gets a new nonce, so a late pong cannot match a newer ping.
        let mut nonce = 0u64;
        let mut goodbye: Option<CloseStatus> = None;
        let mut expired = Vec::new();
        // One timer for the pings, the watchdog and the calls timed by the reader. It is
        // polled once after each reset (which registers it with this task's waker: the
        // task runs unconstrained by tokio's budget, so that poll does register) and
        // then only its state is read, so a pass over ready frames costs no timer poll.
        let timer = tokio::time::sleep_until(self.next_wake(start, next_ping, next_check));
        tokio::pin!(timer);
        let mut timer_polled = false;
        let reason: (CloseStatus, bool) = loop {
            let step = std::future::poll_fn(|cx| {
                let mut more = true;
                for _ in 0..BATCH {
                    match stream.poll_next_unpin(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            heard = true;
                            self.on_frame(frame, &mut ping, &mut goodbye);
                        }
                        Poll::Ready(Some(Err(status))) => {
                            return Poll::Ready(Step::End(Err(status)));
                        }
                        Poll::Ready(None) => return Poll::Ready(Step::End(Ok(None))),
                        Poll::Pending => {
                            more = false;
                            break;
                        }
                    }
                }
                let due = if timer_polled {
                    timer.is_elapsed()
                } else {
                    timer_polled = true;
                    timer.as_mut().poll(cx).is_ready()
                };
                if due {
                    Poll::Ready(Step::Timer)
                } else if more {
                    Poll::Ready(Step::More)
                } else {
                    Poll::Pending
                }
            })
            .await;
            match step {
                Step::More => continue,
                Step::End(end) => {
                    let said_goodbye = goodbye.is_some();
                    break (end_reason(end, &mut goodbye), said_goodbye);
                }
                Step::Timer => {}
            }
            let now = Instant::now();
            if let (Some(period), Some(at)) = (ping_period, next_ping)
                && now >= at
            {
                nonce += 1;
                ping = Some((nonce, now));
                self.control(client_control::Kind::Ping(proto::Ping {
                    nonce,
                    last_rtt_us: 0,
                }));
                next_ping = Some(at + period);
            }
            if let (Some(period), Some(at), Some(limit)) = (check_period, next_check, dead_after)
                && now >= at
            {
                if std::mem::take(&mut heard) {
                    alive_at = now;
                }
                if now.duration_since(alive_at) > limit {
                    let status = CloseStatus {
                        code: tonic::Code::Unavailable,
                        message: format!(
                            "heartbeat timeout: nothing from the server for {limit:?}"
                        ),
                    };
                    break (status, false);
                }
                next_check = Some(at + period);
            }
            if let Some(t) = self.shared.call_timeout {
                self.shared
                    .calls
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .expire(now, t, &mut expired);
                for waker in expired.drain(..) {
                    waker.wake();
                }
            }
            timer
                .as_mut()
                .reset(self.next_wake(now, next_ping, next_check));
            timer_polled = false;
        };
        let (status, goodbye) = reason;
        tracing::debug!(%status, goodbye, "hub stream ended");
        Ended { status, goodbye }
    }

    /// When the timer is next due: the next ping, the next watchdog check, and the
    /// first deadline of a call timed by the reader. With none waiting, `now` plus the
    /// default call timeout: a call made later has a later deadline, so it needs no
    /// wake-up of its own.
    fn next_wake(
        &self,
        now: Instant,
        next_ping: Option<Instant>,
        next_check: Option<Instant>,
    ) -> Instant {
        let call = self.shared.call_timeout.map(|t| {
            self.shared
                .calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .next_deadline()
                .unwrap_or(now + t)
        });
        [next_ping, next_check, call]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_secs(3600))
    }

    fn control(&self, kind: client_control::Kind) {
        if let Some(tx) = self.tx.upgrade() {
            let _ = tx.try_send(S::request(
                0,
                None,
                Some(proto::ClientControl { kind: Some(kind) }),
            ));
        }
    }

    /// Runs the receiver's answer on a task of its own and sends it back: the reader
    /// goes on reading meanwhile (replies to calls the answerer makes, other asks).
    /// An answer later than the ask's timeout is not sent (the server stopped waiting).
    fn on_ask(&self, info: proto::AskInfo, event: Option<S::Event>) {
        let answering = match event {
            Some(event) => self.handler.clone().on_ask(event).ok(),
            None => None,
        };
        let tx = self.tx.clone();
        let id = info.id;
        let limit = (info.timeout_ms > 0).then(|| Duration::from_millis(info.timeout_ms));
        tokio::spawn(async move {
            let result = match answering {
                None => Err(tonic::Status::unimplemented(
                    "this client does not answer this ask",
                )),
                Some(fut) => match limit {
                    Some(limit) => match tokio::time::timeout(limit, fut).await {
                        Ok(r) => r,
                        Err(_) => return,
                    },
                    None => fut.await,
                },
            };
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(S::answer(id, result)).await;
            }
        });
    }

    fn on_frame(
        &self,
        frame: S::Response,
        ping: &mut Option<(u64, Instant)>,
        goodbye: &mut Option<CloseStatus>,
    ) {
        let parts = S::split(frame);
        let mut ask = None;
        let mut position = None;
        if let Some(kind) = parts.control.and_then(|c| c.kind) {
            match kind {
                server_control::Kind::Ask(info) => ask = Some(info),
                server_control::Kind::Position(p) => position = Some(p),
                server_control::Kind::Ping(p) => {
                    self.control(client_control::Kind::Pong(proto::Pong { nonce: p.nonce }));
                }
                server_control::Kind::Pong(p) => {
                    if let Some((nonce, sent)) = *ping
                        && nonce == p.nonce
                    {
                        *self
                            .shared
                            .latency
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(sent.elapsed());
                        *ping = None;
                    }
                }
                server_control::Kind::Goodbye(g) => {
                    *goodbye = Some(CloseStatus {
                        code: tonic::Code::from_i32(g.code),
                        message: g.reason,
                    });
                }
                server_control::Kind::Hello(_) => {}
                server_control::Kind::PushesLost(p) => {
                    tracing::warn!(group = %p.group, missed = p.missed, reason = %p.reason, "pushes to a group were lost");
                    self.handler.on_pushes_lost(&p.group, p.missed, &p.reason);
                }
            }
        }
        if let Some(info) = ask {
            return self.on_ask(info, parts.event);
        }
        // An error scoped to a frame answers no call, even with an id (a reused id: the
        // call holding it still gets its own answer).
        let frame_error = parts
            .error
            .as_ref()
            .is_some_and(|e| e.scope() == proto::ErrorScope::Frame);
        if parts.id != 0 && !frame_error {
            let result = match (parts.error, parts.event) {
                (Some(e), _) => Err(Box::new(ClientError::Status(tonic::Status::new(
                    tonic::Code::from_i32(e.code),
                    e.message,
                )))),
                (None, Some(event)) => Ok(event),
                (None, None) => Err(Box::new(ClientError::UnexpectedReply("an empty frame"))),
            };
            let answered = self
                .shared
                .calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .answer(parts.id, result);
            match answered {
                Ok(waker) => waker.into_iter().for_each(std::task::Waker::wake),
                Err(_) => tracing::debug!(id = parts.id, "reply to a call no longer waited for"),
            }
        } else if let Some(e) = parts.error {
            self.handler
                .on_error(tonic::Code::from_i32(e.code), &e.message);
        } else if let Some(event) = parts.event {
            if parts.seq != 0 {
                // A push already handed over (replayed after a resume) is not handed
                // again; the server replays only what it was told was missed, so
                // this is a defence, not a path.
                if parts.seq <= self.shared.last_seq.load(Relaxed) {
                    tracing::debug!(seq = parts.seq, "push seen already, dropped");
                    return;
                }
                self.shared.last_seq.store(parts.seq, Relaxed);
            }
            if let Some(p) = position {
                let mut positions = self
                    .shared
                    .positions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let newer = positions
                    .get(&p.group)
                    .is_none_or(|&(offset, epoch, _)| epoch != p.epoch || offset < p.offset);
                if newer {
                    positions.insert(p.group, (p.offset, p.epoch, parts.seq));
                    if positions.len() > crate::shared::MAX_POSITIONS
                        && let Some(oldest) = positions
                            .iter()
                            .min_by_key(|(_, p)| p.2)
                            .map(|(g, _)| g.clone())
                    {
                        positions.remove(&oldest);
                    }
                }
            }
            self.handler.on_push(parts.seq, event);
        }
    }
}
