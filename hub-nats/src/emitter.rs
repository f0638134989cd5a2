//! [`NatsEmitter`]: pushes and commands to a hub's connections from a process that is
//! not a hub server, published on the subjects the hub servers subscribe to.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::connection::State;
use bytes::Bytes;
use hub_core::emit::Emit;
use hub_core::relay::Channel;
use hub_core::{BoxFuture, GroupError};

use crate::history::NatsHistory;
use crate::subject::Subjects;
use crate::{BACKPLANE, ConnectError, NatsProvider, NatsProviderBuilder};

/// Publishes envelopes of an emitter (`hub_core::emit::Emitter`, or a generated
/// `FooHubEmitter`) to NATS: each is one publish on `<prefix>.<hub>.g.<group token>`
/// or `<prefix>.<hub>.n.<node id>`, the subjects of the [crate docs](crate#subjects).
///
/// Built from a [`NatsProvider`] (it shares its connection, subject prefix and
/// operation timeout) or on a connection of its own. One emitter serves any number of
/// hubs. It subscribes to no hub subject (the stall probe below is answered on the
/// client's own request inbox) and takes part in no roll call: hub servers do not
/// count it as a server.
///
/// A publish is handed to the NATS client (which batches writes, as the hub servers'
/// publishes are) within the [operation
/// timeout](NatsProviderBuilder::operation_timeout); while the connection is down it
/// fails at once with [`GroupError::Unavailable`] (nothing is buffered for later), and a
/// message over the server's `max_payload` fails with [`GroupError::TooLarge`]. Call
/// `flush` (through the emitter) before the process exits, so that nothing buffered is
/// lost. Delivery is at-most-once: a server that is not subscribed at that moment misses
/// it.
///
/// Built from a provider with [history](NatsProviderBuilder::history), it publishes
/// group envelopes as the hub servers then do: a JetStream publish to the hub's
/// history stream (made if missing) waiting for its ack, so the servers number and
/// recover its pushes like their own (and it does not number them itself).
///
/// **A stalled NATS** (the process hangs, its TCP connection stays open) is not a
/// closed connection: the client would go on buffering publishes it cannot send. So
/// while it publishes, the emitter checks that NATS answers: at most once per
/// [`STALL_PROBE_INTERVAL`] it sends a request to a subject nobody serves, which a
/// live server answers at once with "no responders". A probe not answered within the
/// operation timeout makes the emitter *stalled*: from then on publishes fail at once
/// with [`GroupError::Unavailable`] (nothing is buffered) until a probe is answered
/// again. Publishes accepted between the stall and its detection (at most the probe
/// interval plus the operation timeout) are in the client's buffer and reach NATS
/// when it comes back; if NATS dies instead they are lost, as any at-most-once
/// publish.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let nats = hub_nats::NatsEmitter::connect("nats://127.0.0.1:4222").await?;
/// // With the generated emitter of a hub: `ChatHubEmitter::new(nats)`; or untyped:
/// let emitter = hub_core::emit::Emitter::new(std::sync::Arc::new(nats), "chat.v1.ChatHub");
/// emitter.remove_user(&hub_core::GroupName::new("lobby")?, "mallory").await?;
/// emitter.flush().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsEmitter {
    client: async_nats::Client,
    prefix: String,
    op_timeout: Duration,
    /// The servers, credentials hidden.
    servers: String,
    /// Whether NATS answers round trips.
    liveness: Arc<Liveness>,
    /// With history: its limits, and each hub's stream as used so far.
    history: Option<(usize, Duration)>,
    streams: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<NatsHistory>>>>,
}

/// How often, at most, a publishing [`NatsEmitter`] checks with a round trip that
/// NATS answers (1 s).
pub const STALL_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The subject the stall probe requests: nobody subscribes to it, so a live NATS
/// answers "no responders".
const PROBE_SUBJECT: &str = "_HUB.emitter.probe";

/// What the emitter knows of NATS's answers: times are milliseconds since `epoch`.
#[derive(Debug)]
struct Liveness {
    epoch: tokio::time::Instant,
    /// When a probe was last answered.
    answered_ms: AtomicU64,
    /// When the probe in flight started (`u64::MAX`: none in flight).
    probing_since_ms: AtomicU64,
    /// The last probe was not answered in time (and none has been since).
    stalled: AtomicBool,
}

impl Liveness {
    fn new() -> Self {
        Liveness {
            epoch: tokio::time::Instant::now(),
            answered_ms: AtomicU64::new(0),
            probing_since_ms: AtomicU64::new(u64::MAX),
            stalled: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts a probe if one is due and none is in flight; then says whether NATS
    /// is to be presumed stalled: the last probe went unanswered, or the one in
    /// flight is overdue.
    fn check(
        self: &Arc<Self>,
        client: &async_nats::Client,
        op_timeout: Duration,
    ) -> Option<Duration> {
        let now = self.now_ms();
        let interval = STALL_PROBE_INTERVAL.as_millis() as u64;
        let stalled = self.stalled.load(Ordering::Acquire);
        let due =
            stalled || now.saturating_sub(self.answered_ms.load(Ordering::Acquire)) >= interval;
        let started = self.probing_since_ms.load(Ordering::Acquire);
        if due
            && started == u64::MAX
            && self
                .probing_since_ms
                .compare_exchange(u64::MAX, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.spawn_probe(client.clone(), op_timeout);
        }
        let started = self.probing_since_ms.load(Ordering::Acquire);
        let overdue =
            started != u64::MAX && now.saturating_sub(started) > op_timeout.as_millis() as u64;
        if stalled || overdue {
            let since = if started == u64::MAX { now } else { started };
            let silent = now.saturating_sub(self.answered_ms.load(Ordering::Acquire).min(since));
            return Some(Duration::from_millis(silent));
        }
        None
    }

    /// One round trip: a request nobody serves, which a live NATS answers at once
    /// with "no responders" (any answer will do).
    fn spawn_probe(self: &Arc<Self>, client: async_nats::Client, op_timeout: Duration) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let answered =
                match tokio::time::timeout(op_timeout, client.request(PROBE_SUBJECT, Bytes::new()))
                    .await
                {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => e.kind() == RequestErrorKind::NoResponders,
                    Err(_) => false,
                };
            if answered {
                me.answered_ms.store(me.now_ms(), Ordering::Release);
            }
            let was = me.stalled.swap(!answered, Ordering::AcqRel);
            // `was` is the old stalled flag: it changed if it equals `answered`.
            if was == answered {
                if answered {
                    tracing::info!("NATS answers the emitter again");
                } else {
                    tracing::warn!(after = ?op_timeout, "NATS does not answer the emitter: publishes fail until it does");
                }
            }
            me.probing_since_ms.store(u64::MAX, Ordering::Release);
        });
    }
}

impl std::fmt::Debug for NatsEmitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsEmitter")
            .field("prefix", &self.prefix)
            .field("state", &self.client.connection_state())
            .finish()
    }
}

impl NatsEmitter {
    /// An emitter on `provider`'s connection, with its subject prefix and operation
    /// timeout.
    pub fn new(provider: &NatsProvider) -> Self {
        NatsEmitter {
            client: provider.shared.client.clone(),
            prefix: provider.shared.config.prefix.clone(),
            op_timeout: provider.shared.config.op_timeout,
            servers: provider.shared.servers.clone(),
            liveness: Arc::new(Liveness::new()),
            history: provider.shared.config.history,
            streams: Arc::default(),
        }
    }

    /// The history stream of `hub`, with history.
    fn stream(&self, hub: &str) -> Option<Arc<NatsHistory>> {
        let limits = self.history?;
        let mut streams = crate::state::lock(&self.streams);
        if let Some(s) = streams.get(hub) {
            return Some(s.clone());
        }
        let s = Arc::new(NatsHistory::new(
            self.client.clone(),
            Subjects::new(&self.prefix, hub)?,
            limits,
            self.op_timeout,
        ));
        streams.insert(hub.to_owned(), s.clone());
        Some(s)
    }

    /// Connects to NATS at `urls` (one URL, or several comma-separated; see the
    /// [crate docs](crate#options)) with the default settings (prefix `hub`).
    pub async fn connect(urls: &str) -> Result<Self, ConnectError> {
        Self::connect_with(NatsProvider::builder(), urls).await
    }

    /// Connects with the options and settings of `builder` (connect options,
    /// subject prefix, operation timeout).
    pub async fn connect_with(
        builder: NatsProviderBuilder,
        urls: &str,
    ) -> Result<Self, ConnectError> {
        Ok(Self::new(&builder.connect(urls).await?))
    }

    /// The subject of `channel` in hub `hub`, or `None` if
    /// `<prefix>.<hub>` is not a valid subject (`hub` must be a proto full name).
    pub fn subject(&self, hub: &str, channel: Channel<'_>) -> Option<String> {
        Some(Subjects::new(&self.prefix, hub)?.channel(channel))
    }

    /// The NATS connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    async fn send(
        &self,
        subject: String,
        payload: Bytes,
        stream: Option<Arc<NatsHistory>>,
    ) -> Result<(), GroupError> {
        let max = self.client.server_info().max_payload;
        if max > 0 && payload.len() > max {
            return Err(GroupError::TooLarge {
                backplane: BACKPLANE,
                size: payload.len(),
                max,
            });
        }
        match self.client.connection_state() {
            State::Connected => {}
            state => {
                return Err(GroupError::Unavailable {
                    backplane: BACKPLANE,
                    message: format!("publish: not connected to NATS ({state}); nothing was sent"),
                    source: None,
                });
            }
        }
        if let Some(silent) = self.liveness.check(&self.client, self.op_timeout) {
            return Err(GroupError::Unavailable {
                backplane: BACKPLANE,
                message: format!(
                    "publish: NATS has not answered a round trip for {} ms (stalled?); nothing was sent",
                    silent.as_millis()
                ),
                source: None,
            });
        }
        if let Some(stream) = stream {
            return stream.publish(subject, payload).await;
        }
        let refused =
            |e| GroupError::unavailable(BACKPLANE, "publish: NATS refused the message", e);
        let mut publish = std::pin::pin!(self.client.publish(subject, payload));
        if let Poll::Ready(r) = futures_util::poll!(publish.as_mut()) {
            return r.map_err(refused);
        }
        let published = async { publish.await.map_err(refused) };
        hub_core::deadline(BACKPLANE, "publish", self.op_timeout, published).await
    }
}

impl Emit for NatsEmitter {
    fn name(&self) -> &'static str {
        BACKPLANE
    }

    fn describe(&self) -> String {
        self.servers.clone()
    }

    /// Yes without history; with it the stream numbers the pushes (and a group
    /// publish waits for JetStream's ack).
    fn numbers_pushes(&self) -> bool {
        self.history.is_none()
    }

    fn publish<'a>(
        &'a self,
        hub: &'a str,
        channel: Channel<'a>,
        envelope: Bytes,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(async move {
            let subject = self.subject(hub, channel).ok_or_else(|| GroupError::Unavailable {
                backplane: BACKPLANE,
                message: format!(
                    "{}.{hub} is not a valid NATS subject prefix (hub names are proto full names)",
                    self.prefix
                ),
                source: None,
            })?;
            let stream = match channel {
                Channel::Group(_) => self.stream(hub),
                Channel::Node(_) => None,
            };
            self.send(subject, envelope, stream).await
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), GroupError>> {
        Box::pin(async move {
            let flushed = async {
                self.client
                    .flush()
                    .await
                    .map_err(|e| GroupError::unavailable(BACKPLANE, "flush", e))
            };
            hub_core::deadline(BACKPLANE, "flush", self.op_timeout, flushed).await
        })
    }
}
