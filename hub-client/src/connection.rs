//! The connection's reader task: reads the stream, matches replies to calls by id,
//! hands pushes to the [`PushHandler`], answers and sends pings, and notices a server
//! that went silent.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hub_core::proto::{self, client_control, server_control};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::{ClientError, DisconnectReason};
use crate::shared::Shared;
use crate::spec::{ClientSpec, PushHandler};

/// Why the stream ended, from what its last read returned (`Ok(Some(_))` never comes here).
fn end_reason<T>(
    end: Result<Option<T>, tonic::Status>,
    goodbye: &mut Option<DisconnectReason>,
) -> DisconnectReason {
    goodbye.take().unwrap_or_else(|| match end {
        Err(status) => DisconnectReason {
            code: status.code(),
            message: status.message().to_owned(),
        },
        Ok(_) => DisconnectReason {
            code: tonic::Code::Ok,
            message: "the server closed the stream".into(),
        },
    })
}

pub(crate) struct Reader<S: ClientSpec> {
    pub(crate) shared: Arc<Shared<S>>,
    /// Weak, so that dropping every `HubClient` ends the request stream.
    pub(crate) tx: mpsc::WeakSender<S::Request>,
    pub(crate) handler: Arc<dyn PushHandler<S::Event>>,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) dead_after: Option<Duration>,
}

impl<S: ClientSpec> Reader<S> {
    pub(crate) async fn run(self, mut stream: tonic::Streaming<S::Response>) {
        // Never a zero period: `interval` panics on it.
        let min = Duration::from_millis(1);
        let period = self
            .ping_interval
            .unwrap_or(Duration::from_secs(3600))
            .max(min);
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        let check = self
            .dead_after
            .map_or(Duration::from_secs(3600), |d| d / 4)
            .max(min);
        let mut watchdog = tokio::time::interval_at(Instant::now() + check, check);
        // Liveness without a clock read per frame: frames set `heard`; the watchdog
        // notes when it last saw `heard` set, and gives up once that is too long ago.
        let mut heard = false;
        let mut alive_at = Instant::now();
        let mut ping: Option<(u64, Instant)> = None;
        // Each ping gets a new nonce, so a late pong cannot match a newer ping.
        let mut nonce = 0u64;
        let mut goodbye: Option<DisconnectReason> = None;
        let reason = loop {
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(frame)) => {
                        heard = true;
                        self.on_frame(frame, &mut ping, &mut goodbye);
                        // Frames already received are handled here, not one pass of the
                        // select (and its timers) each; a bounded batch keeps timers fair.
                        let mut ended = None;
                        for _ in 0..64 {
                            match stream.message().now_or_never() {
                                Some(Ok(Some(frame))) => self.on_frame(frame, &mut ping, &mut goodbye),
                                Some(end) => {
                                    ended = Some(end);
                                    break;
                                }
                                None => break,
                            }
                        }
                        if let Some(end) = ended {
                            break end_reason(end, &mut goodbye);
                        }
                    }
                    end => break end_reason(end, &mut goodbye),
                },
                _ = ticker.tick(), if self.ping_interval.is_some() => {
                    nonce += 1;
                    ping = Some((nonce, Instant::now()));
                    self.control(client_control::Kind::Ping(proto::Ping { nonce, last_rtt_us: 0 }));
                }
                _ = watchdog.tick(), if self.dead_after.is_some() => {
                    if std::mem::take(&mut heard) {
                        alive_at = Instant::now();
                    }
                    if let Some(limit) = self.dead_after
                        && alive_at.elapsed() > limit
                    {
                        break DisconnectReason {
                            code: tonic::Code::Unavailable,
                            message: format!("heartbeat timeout: nothing from the server for {limit:?}"),
                        };
                    }
                }
            }
        };
        tracing::debug!(%reason, "hub connection ended");
        let pending = {
            let mut slot = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.closed.send_replace(Some(reason.clone()));
            slot.take()
        };
        for (_, waiter) in pending.into_iter().flatten() {
            let _ = waiter.send(Err(ClientError::Disconnected(reason.clone())));
        }
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

    fn on_frame(
        &self,
        frame: S::Response,
        ping: &mut Option<(u64, Instant)>,
        goodbye: &mut Option<DisconnectReason>,
    ) {
        let parts = S::split(frame);
        if let Some(kind) = parts.control.and_then(|c| c.kind) {
            match kind {
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
                    *goodbye = Some(DisconnectReason {
                        code: tonic::Code::from_i32(g.code),
                        message: g.reason,
                    });
                }
                server_control::Kind::Hello(_) => {}
            }
        }
        // An error scoped to a frame answers no call, even with an id (a reused id: the
        // call holding it still gets its own answer).
        let frame_error = parts
            .error
            .as_ref()
            .is_some_and(|e| e.scope() == proto::ErrorScope::Frame);
        if parts.id != 0 && !frame_error {
            let waiter = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .and_then(|p| p.remove(&parts.id));
            let Some(waiter) = waiter else {
                tracing::debug!(id = parts.id, "reply to a call no longer waited for");
                return;
            };
            let result = match (parts.error, parts.event) {
                (Some(e), _) => Err(ClientError::Status(tonic::Status::new(
                    tonic::Code::from_i32(e.code),
                    e.message,
                ))),
                (None, Some(event)) => Ok(event),
                (None, None) => Err(ClientError::UnexpectedReply("an empty frame")),
            };
            let _ = waiter.send(result);
        } else if let Some(e) = parts.error {
            self.handler
                .on_error(tonic::Code::from_i32(e.code), &e.message);
        } else if let Some(event) = parts.event {
            self.handler.on_push(parts.seq, event);
        }
    }
}
