//! The probe hub (`proto/test/v1/probe.proto`): a hub whose calls exercise what the
//! chat hub does not (ordering, gates, every push target, failures, panics, sizes),
//! an in-process server for it, and a typed client that records what it receives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hub_server::{ConnectionId, DisconnectReason, HubConfig, Hubs};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tonic::{Code, Status};

use self::proto::probe_hub_client::{ProbeHubClient, ProbeHubReceiver};
use self::proto::probe_hub_server::{ProbeHub, ProbeHubContext, ProbeHubHandle, ProbeHubServer};
use self::proto::*;

/// Generated code of `proto/test/v1/probe.proto`.
pub mod proto {
    hub_server::include_proto!("test.v1");
}

/// What a tower layer or interceptor may put into the request extensions; `whoami`
/// reports it, to show that the hub's `Context` sees what layers left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag(pub String);

/// State the probe hub shares with the test that serves it.
#[derive(Default)]
pub struct ProbeState {
    /// Source of `Done::finished`.
    finished: AtomicU64,
    /// Gates by name: `hold` takes a permit, `open` adds one.
    gates: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Every ended connection and why, in order.
    disconnects: Mutex<Vec<(String, DisconnectReason)>>,
    /// Pinged on each disconnect.
    disconnected: Notify,
}

impl ProbeState {
    fn gate(&self, name: &str) -> Arc<Semaphore> {
        self.gates
            .lock()
            .expect("lock")
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(0)))
            .clone()
    }

    /// Opens a gate from outside a call.
    pub fn open(&self, gate: &str) {
        self.gate(gate).add_permits(1);
    }

    /// Connections ended so far, with why.
    pub fn disconnects(&self) -> Vec<(String, DisconnectReason)> {
        self.disconnects.lock().expect("lock").clone()
    }

    /// Waits until `connection` has ended (its `on_disconnect` ran) and returns why.
    pub async fn wait_disconnect(
        &self,
        connection: &str,
        within: Duration,
    ) -> Option<DisconnectReason> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.disconnected.notified();
            if let Some((_, r)) = self
                .disconnects()
                .into_iter()
                .find(|(c, _)| c == connection)
            {
                return Some(r);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// The probe hub.
#[derive(Clone, Default)]
pub struct Probe {
    /// Shared with the test.
    pub state: Arc<ProbeState>,
}

fn parse_ids(ids: &[String]) -> Result<Vec<ConnectionId>, Status> {
    ids.iter()
        .map(|s| {
            s.parse::<ConnectionId>()
                .map_err(|e| Status::invalid_argument(e.to_string()))
        })
        .collect()
}

fn note(ctx: &ProbeHubContext, text: String, pad: usize) -> Note {
    Note {
        text,
        from: ctx.connection_id().to_string(),
        pad: vec![0x5a; pad],
    }
}

impl ProbeHub for Probe {
    async fn sleep(&self, _ctx: &ProbeHubContext, req: SleepRequest) -> Result<Done, Status> {
        tokio::time::sleep(Duration::from_millis(req.ms)).await;
        let finished = self.state.finished.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Done {
            tag: req.tag,
            finished,
        })
    }

    async fn hold(&self, _ctx: &ProbeHubContext, req: HoldRequest) -> Result<Done, Status> {
        let gate = self.state.gate(&req.gate);
        gate.acquire()
            .await
            .map_err(|_| Status::internal("gate closed"))?
            .forget();
        let finished = self.state.finished.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Done {
            tag: req.tag,
            finished,
        })
    }

    async fn open(&self, _ctx: &ProbeHubContext, req: GateRequest) -> Result<(), Status> {
        self.state.open(&req.gate);
        Ok(())
    }

    async fn broadcast(
        &self,
        ctx: &ProbeHubContext,
        req: BroadcastRequest,
    ) -> Result<Delivered, Status> {
        let ids = parse_ids(&req.connections)?;
        let mode =
            Mode::try_from(req.mode).map_err(|_| Status::invalid_argument("unknown mode"))?;
        let push = match mode {
            Mode::All => ctx.group(&req.group)?,
            Mode::Except => ctx.group(&req.group)?.except(ids),
            Mode::Only => ctx.group(&req.group)?.only(ids),
            Mode::Others => ctx.group(&req.group)?.except([ctx.connection_id()]),
            Mode::Single => {
                let first = ids
                    .first()
                    .ok_or_else(|| Status::invalid_argument("MODE_SINGLE needs a connection"))?;
                ctx.connection(*first)
            }
        };
        let d = push.on_note(note(ctx, req.text, req.pad as usize)).await?;
        Ok(Delivered {
            local: d.local,
            dropped: d.dropped,
        })
    }

    async fn join(&self, ctx: &ProbeHubContext, req: GroupRequest) -> Result<(), Status> {
        ctx.join(&req.group).await?;
        Ok(())
    }

    async fn leave(&self, ctx: &ProbeHubContext, req: GroupRequest) -> Result<LeaveReply, Status> {
        let was_member = ctx.leave(&req.group).await?;
        Ok(LeaveReply { was_member })
    }

    async fn count(&self, ctx: &ProbeHubContext, req: GroupRequest) -> Result<CountReply, Status> {
        let count = ctx.member_count(&req.group).await?;
        let mut members: Vec<String> = ctx
            .members(&req.group)
            .await?
            .into_iter()
            .map(|m| m.connection.to_string())
            .collect();
        members.sort();
        Ok(CountReply { count, members })
    }

    async fn panic(&self, _ctx: &ProbeHubContext) -> Result<(), Status> {
        panic!("the probe hub panics on request");
    }

    async fn fail(&self, _ctx: &ProbeHubContext, req: FailRequest) -> Result<(), Status> {
        Err(Status::new(Code::from_i32(req.code), req.message))
    }

    async fn big_reply(
        &self,
        _ctx: &ProbeHubContext,
        req: BigReplyRequest,
    ) -> Result<BigReply, Status> {
        Ok(BigReply {
            data: vec![7; req.size as usize],
        })
    }

    async fn push_to(
        &self,
        ctx: &ProbeHubContext,
        req: PushToRequest,
    ) -> Result<Delivered, Status> {
        let id: ConnectionId =
            req.connection_id
                .parse()
                .map_err(|e: hub_core::ParseConnectionIdError| {
                    Status::invalid_argument(e.to_string())
                })?;
        let d = ctx.connection(id).on_note(note(ctx, req.text, 0)).await?;
        Ok(Delivered {
            local: d.local,
            dropped: d.dropped,
        })
    }

    async fn whoami(&self, ctx: &ProbeHubContext) -> Result<WhoAmI, Status> {
        let metadata_user = ctx
            .metadata()
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let extension_tag = ctx
            .extensions()
            .get::<Tag>()
            .map(|t| t.0.clone())
            .unwrap_or_default();
        Ok(WhoAmI {
            connection_id: ctx.connection_id().to_string(),
            metadata_user,
            extension_tag,
            has_remote_addr: ctx.remote_addr().is_some(),
        })
    }

    async fn close(&self, ctx: &ProbeHubContext, req: CloseRequest) -> Result<(), Status> {
        ctx.close(Code::from_i32(req.code), req.reason);
        Ok(())
    }

    async fn on_connect(&self, ctx: &ProbeHubContext) -> Result<(), Status> {
        if ctx.metadata().get("x-panic").is_some() {
            panic!("the probe hub's on_connect panics on request");
        }
        if let Some(v) = ctx.metadata().get("x-reject") {
            return Err(Status::permission_denied(
                v.to_str().unwrap_or("rejected").to_owned(),
            ));
        }
        if ctx.metadata().get("x-welcome").is_some() {
            ctx.caller()
                .on_note(note(ctx, "welcome".into(), 0))
                .await
                .map_err(Status::from)?;
        }
        Ok(())
    }

    async fn on_disconnect(&self, ctx: &ProbeHubContext, reason: &DisconnectReason) {
        let me = ctx.connection_id();
        for group in ctx
            .groups()
            .into_iter()
            .filter(|g| !g.as_str().starts_with('$'))
        {
            if let Ok(push) = ctx.group(&group) {
                let _ = push
                    .except([me])
                    .on_note(note(ctx, format!("left:{me}"), 0))
                    .await;
            }
        }
        self.state
            .disconnects
            .lock()
            .expect("lock")
            .push((me.to_string(), reason.clone()));
        self.state.disconnected.notify_waiters();
        if ctx.metadata().get("x-panic-on-disconnect").is_some() {
            panic!("the probe hub's on_disconnect panics on request");
        }
    }
}

/// A probe hub served in this process on a free loopback port.
pub struct ProbeServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The hub's handle (pushes from outside calls, metrics, counts).
    pub handle: ProbeHubHandle,
    /// The server-wide hubs (shutdown).
    pub hubs: Hubs,
    /// The hub's shared state (gates, disconnects).
    pub state: Arc<ProbeState>,
    task: JoinHandle<()>,
}

impl ProbeServer {
    /// Serves the probe hub with in-memory groups and `config`, alone.
    pub async fn start(config: HubConfig) -> Self {
        Self::start_with(Hubs::builder().config(config).build()).await
    }

    /// Serves the probe hub with the server-wide settings of `hubs`, alone.
    pub async fn start_with(hubs: Hubs) -> Self {
        let probe = Probe::default();
        let state = probe.state.clone();
        let svc = ProbeHubServer::builder(probe)
            .hubs(&hubs)
            .build()
            .expect("bind hub");
        let handle = svc.handle();
        let (listener, addr) = listener().await;
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        ProbeServer {
            addr,
            handle,
            hubs,
            state,
            task,
        }
    }

    /// The probe hub as a tonic service (in-memory groups, `config`), to serve by hand
    /// next to other services or under layers.
    pub fn service(config: HubConfig) -> (ProbeHubServer<Probe>, Hubs, Arc<ProbeState>) {
        let hubs = Hubs::builder().config(config).build();
        let probe = Probe::default();
        let state = probe.state.clone();
        let svc = ProbeHubServer::builder(probe)
            .hubs(&hubs)
            .build()
            .expect("bind hub");
        (svc, hubs, state)
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ProbeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener on a free loopback port.
pub async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

/// A push a [`ProbeRecorder`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// `on_note`, its text.
    Note(String),
    /// `on_tick`.
    Tick,
    /// An error frame not tied to a call.
    Error(Code, String),
}

/// Records the probe hub's pushes, their sequence numbers and error frames.
#[derive(Default, Debug)]
pub struct ProbeRecorder {
    got: Mutex<Vec<Got>>,
    seqs: Mutex<Vec<u64>>,
    notify: Notify,
}

impl ProbeRecorder {
    fn push(&self, g: Got) {
        self.got.lock().expect("lock").push(g);
        self.notify.notify_waiters();
    }

    /// What arrived, in order.
    pub fn got(&self) -> Vec<Got> {
        self.got.lock().expect("lock").clone()
    }

    /// The texts of the notes that arrived, in order.
    pub fn notes(&self) -> Vec<String> {
        self.got()
            .into_iter()
            .filter_map(|g| match g {
                Got::Note(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    /// Push sequence numbers, in order.
    pub fn seqs(&self) -> Vec<u64> {
        self.seqs.lock().expect("lock").clone()
    }

    /// Waits until at least `n` things arrived or `within` passed; returns what arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Got> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.got();
            }
        }
    }

    /// Proves that nothing reached connection `conn` beyond what this recorder holds,
    /// and returns that: the hub pushes a marker note to `conn` and this waits for it.
    ///
    /// Each connection's pushes arrive in the order they were queued, and a push made
    /// on this server (by a call that has returned, or from a handle) is queued before
    /// the call or handle method returns. So anything sent to `conn` before would
    /// arrive before the marker: no sleep, and no guess at how long "nothing" takes.
    /// (A push relayed from another server is only ordered with the marker if the
    /// same sender sends both, through the same group.)
    pub async fn barrier(&self, handle: &ProbeHubHandle, conn: &str, within: Duration) -> Vec<Got> {
        let marker = format!("barrier {}", self.got().len());
        let d = handle
            .connection(conn.parse().expect("a connection id"))
            .on_note(Note {
                text: marker.clone(),
                ..Default::default()
            })
            .await
            .expect("push the barrier");
        assert_eq!(d.local, 1, "{conn} is not connected here");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            let mut got = self.got();
            if let Some(at) = got.iter().position(|g| *g == Got::Note(marker.clone())) {
                assert_eq!(at + 1, got.len(), "pushes after the barrier: {got:?}");
                got.truncate(at);
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("the barrier did not arrive within {within:?}: {got:?}");
            }
        }
    }
}

impl ProbeHubReceiver for ProbeRecorder {
    fn on_note(&self, message: Note) {
        self.push(Got::Note(message.text));
    }
    fn on_tick(&self, _message: ()) {
        self.push(Got::Tick);
    }
    fn on_seq(&self, seq: u64) {
        self.seqs.lock().expect("lock").push(seq);
    }
    fn on_error(&self, code: Code, message: &str) {
        self.push(Got::Error(code, message.to_owned()));
    }
}

/// A channel to `url`.
pub async fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

/// Connects a probe client to `url` with `options`, recording pushes.
pub async fn probe_client_with(
    url: &str,
    options: hub_client::ConnectOptions,
) -> Result<(ProbeHubClient, Arc<ProbeRecorder>), hub_client::ClientError> {
    let rec = Arc::new(ProbeRecorder::default());
    let c = ProbeHubClient::connect_with(channel(url).await, options, rec.clone()).await?;
    Ok((c, rec))
}

/// Connects a probe client to `url` with the default options, recording pushes.
pub async fn probe_client(url: &str) -> (ProbeHubClient, Arc<ProbeRecorder>) {
    probe_client_with(url, hub_client::ConnectOptions::default())
        .await
        .expect("hub connect")
}

/// A `broadcast` request.
pub fn broadcast(group: &str, mode: Mode, connections: &[&str], text: &str) -> BroadcastRequest {
    BroadcastRequest {
        group: group.into(),
        mode: mode as i32,
        connections: connections.iter().map(|s| s.to_string()).collect(),
        text: text.into(),
        pad: 0,
    }
}

/// A `GroupRequest`.
pub fn group(name: &str) -> GroupRequest {
    GroupRequest { group: name.into() }
}
