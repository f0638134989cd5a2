//! The table of this server's asks waiting for answers, by ask id and by target
//! connection, and what a running call shares with the asks it makes. State only:
//! what sends asks and routes answers is in `ask.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hub_core::ask::AskOutcome;
use hub_core::frame::MAX_SAFE_INTEGER;
use hub_core::proto;
use hub_core::{ConnectionId, HubMetrics};
use tokio::sync::oneshot;

/// What a running call shares with the asks it makes: how many of them wait on its
/// own caller's answer. While one does, the connection parks the call and runs its
/// next ones (the caller may need a call answered to answer).
#[derive(Default)]
pub(crate) struct CallState {
    pub(crate) self_asks: std::sync::atomic::AtomicUsize,
}

tokio::task_local! {
    /// The call being polled (set by the connection task around each call).
    pub(crate) static CALL: Arc<CallState>;
}

/// An untyped outcome: the answer is the client's request frame.
pub(crate) type Raw = AskOutcome<Bytes>;

/// The asks of one hub waiting on this server.
#[derive(Default)]
pub(crate) struct Asks {
    pub(crate) next: AtomicU64,
    pub(crate) state: Mutex<State>,
}

#[derive(Default)]
pub(crate) struct State {
    /// Asks sent to local connections, by wire id.
    pub(crate) local: HashMap<u64, Local>,
    /// Local asks waiting per target connection.
    pub(crate) per_target: HashMap<ConnectionId, usize>,
    /// Asks waiting on connections of other servers, by (ask id, connection).
    pub(crate) remote: HashMap<(u64, ConnectionId), oneshot::Sender<Raw>>,
}

pub(crate) struct Local {
    pub(crate) target: ConnectionId,
    pub(crate) tx: oneshot::Sender<Raw>,
}

/// Which entry a waiting ask holds, removed when it stops waiting.
#[derive(Clone, Copy)]
pub(crate) enum Key {
    Local(u64),
    Remote(u64, ConnectionId),
}

/// Removes the entries an ask still holds when it stops waiting (answered, timed out,
/// or dropped because the asking call went away).
pub(crate) struct Holding<'a> {
    pub(crate) asks: &'a Asks,
    pub(crate) keys: Vec<Key>,
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        let mut s = self.asks.lock();
        for key in self.keys.drain(..) {
            match key {
                Key::Local(id) => {
                    if let Some(l) = s.local.remove(&id) {
                        s.release(l.target);
                    }
                }
                Key::Remote(id, c) => {
                    s.remote.remove(&(id, c));
                }
            }
        }
    }
}

impl State {
    pub(crate) fn release(&mut self, target: ConnectionId) {
        if let Some(n) = self.per_target.get_mut(&target) {
            *n -= 1;
            if *n == 0 {
                self.per_target.remove(&target);
            }
        }
    }
}

impl Asks {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_id(&self) -> u64 {
        // Ids stay within 2^53-1 (they go on the wire); wrapping takes centuries.
        (self.next.fetch_add(1, Relaxed) % MAX_SAFE_INTEGER) + 1
    }

    /// Whether no ask waits (tests: nothing is left behind).
    #[cfg(test)]
    pub(crate) fn idle(&self) -> bool {
        let s = self.lock();
        s.local.is_empty() && s.remote.is_empty() && s.per_target.is_empty()
    }

    /// An answer read from `from`'s stream.
    pub(crate) fn answered(
        &self,
        metrics: &HubMetrics,
        from: ConnectionId,
        info: proto::AnswerInfo,
        frame: Bytes,
    ) {
        let waiter = {
            let mut s = self.lock();
            match s.local.get(&info.id) {
                Some(l) if l.target == from => {
                    let l = s.local.remove(&info.id).expect("present");
                    s.release(l.target);
                    Some(l.tx)
                }
                _ => None,
            }
        };
        let Some(tx) = waiter else {
            HubMetrics::incr(&metrics.answers_unmatched);
            tracing::debug!(ask = info.id, "answer to no waiting ask");
            return;
        };
        let outcome = match info.error {
            Some(e) => AskOutcome::Failed(tonic::Status::new(
                tonic::Code::from_i32(e.code),
                hub_core::quote::bound_str(&e.message),
            )),
            None => AskOutcome::Answered(frame),
        };
        let _ = tx.send(outcome);
    }

    /// A local connection ended: its asks end `Disconnected`.
    pub(crate) fn connection_closed(&self, id: ConnectionId) {
        let gone: Vec<oneshot::Sender<Raw>> = {
            let mut s = self.lock();
            let ids: Vec<u64> = s
                .local
                .iter()
                .filter(|(_, l)| l.target == id)
                .map(|(k, _)| *k)
                .collect();
            s.per_target.remove(&id);
            ids.iter()
                .filter_map(|k| s.local.remove(k))
                .map(|l| l.tx)
                .collect()
        };
        for tx in gone {
            let _ = tx.send(AskOutcome::Disconnected("the connection closed".into()));
        }
    }

    /// Ends the remote asks `which` selects with `outcome`.
    pub(crate) fn end_remote(
        &self,
        which: impl Fn(&ConnectionId) -> bool,
        outcome: impl Fn() -> Raw,
    ) {
        let gone: Vec<oneshot::Sender<Raw>> = {
            let mut s = self.lock();
            let keys: Vec<(u64, ConnectionId)> =
                s.remote.keys().filter(|(_, c)| which(c)).copied().collect();
            keys.iter().filter_map(|k| s.remote.remove(k)).collect()
        };
        for tx in gone {
            let _ = tx.send(outcome());
        }
    }
}
