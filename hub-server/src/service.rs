use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context as TaskContext, Poll};

use bytes::{Buf, Bytes};
use futures_util::Stream;
use hub_core::emit::{Action, Commanded, MembersRemoved};
use hub_core::frame::{OutFrame, clamp_safe, control_frame};
use hub_core::proto::{self, server_control::Kind};
use hub_core::{
    BackplaneEvents, BindContext, CloseReason, ConnectionId, GroupError, GroupProvider, HubMetrics,
    LocalGroups, Member, MembersLost, Next, Outbox, OutboxReceiver,
};
use tokio::sync::Notify;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService};
use tonic::{Status, Streaming};
use tracing::Instrument;

use crate::context::ConnState;
use crate::hub::{HubCore, HubShared};
use crate::identity::{ConnectRequest, IdentityOverride};
use crate::session::{RESUME_KEY, RESUME_SEQ_KEY, SessionIo};
use crate::{Context, Dispatch, HubConfig, HubHandle, Hubs};

/// A hub as a tonic service: add it to `tonic::transport::Server` like any other
/// (`.add_service(svc)`), under any tower layers. Generated `FooHubServer` types wrap it.
pub struct HubService<D> {
    shared: Arc<HubShared<D>>,
}

impl<D> Clone for HubService<D> {
    fn clone(&self) -> Self {
        HubService {
            shared: self.shared.clone(),
        }
    }
}

impl<D: Dispatch> std::fmt::Debug for HubService<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubService")
            .field("hub", &D::SERVICE)
            .field("groups", &self.shared.core.backplane.name())
            .finish()
    }
}

impl<D: Dispatch> HubService<D> {
    /// A hub with in-memory groups and the default config.
    pub fn new(dispatch: D) -> Self {
        Self::builder(dispatch)
            .build()
            .expect("the in-memory provider cannot fail to bind")
    }

    /// Starts a builder to choose the provider, config or server-wide [`Hubs`].
    pub fn builder(dispatch: D) -> HubServiceBuilder<D> {
        HubServiceBuilder {
            dispatch,
            hubs: None,
            groups: None,
            config: None,
            identity: IdentityOverride::default(),
        }
    }

    /// A handle for pushes outside calls, counts, metrics and shutdown.
    pub fn handle(&self) -> HubHandle<D::Push> {
        HubHandle::new(self.shared.core.clone())
    }
}

/// Builds a [`HubService`].
pub struct HubServiceBuilder<D> {
    dispatch: D,
    hubs: Option<Hubs>,
    groups: Option<Arc<dyn GroupProvider>>,
    config: Option<HubConfig>,
    /// Set by `identity` / `require_identity` (in `identity.rs`).
    pub(crate) identity: IdentityOverride,
}

impl<D: Dispatch> HubServiceBuilder<D> {
    /// Takes the server-wide defaults (provider, config, node id, shutdown) from `hubs`.
    pub fn hubs(mut self, hubs: &Hubs) -> Self {
        self.hubs = Some(hubs.clone());
        self
    }

    /// This hub's group provider, overriding the server-wide default.
    pub fn groups(mut self, provider: impl GroupProvider) -> Self {
        self.groups = Some(Arc::new(provider));
        self
    }

    /// Like [`HubServiceBuilder::groups`], with a shared provider.
    pub fn groups_arc(mut self, provider: Arc<dyn GroupProvider>) -> Self {
        self.groups = Some(provider);
        self
    }

    /// This hub's config, overriding the server-wide default.
    pub fn config(mut self, config: HubConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Binds the hub to its provider and builds the service.
    pub fn build(self) -> Result<HubService<D>, GroupError> {
        let hubs = self.hubs.unwrap_or_default();
        let provider = self
            .groups
            .unwrap_or_else(|| hubs.inner.default_groups.clone());
        let config = self.config.unwrap_or_else(|| hubs.inner.config.clone());
        let node = hubs.inner.node;
        let local = Arc::new(LocalGroups::new(node));
        let metrics = Arc::new(HubMetrics::for_hub(D::SERVICE));
        // The hub is built after its backplane: losses it reports find it through this.
        let hub: Arc<OnceLock<Weak<HubShared<D>>>> = Arc::new(OnceLock::new());
        // The hook runs on the runtime the hub was built on: a backplane may report
        // from elsewhere (a thread of its own, a runtime that is stopping).
        let runtime = tokio::runtime::Handle::try_current().ok();
        let events = {
            let (hub, commands, asks) = (hub.clone(), hub.clone(), hub.clone());
            let ask_runtime = runtime.clone();
            BackplaneEvents::new(move |lost| {
                if let Some(shared) = hub.get().and_then(Weak::upgrade) {
                    members_lost(shared, lost, runtime.as_ref());
                }
            })
            .with_commands(move |command| {
                if let Some(shared) = commands.get().and_then(Weak::upgrade) {
                    commanded(shared, command);
                }
            })
            .with_asks(move |event| {
                if let Some(shared) = asks.get().and_then(Weak::upgrade) {
                    crate::ask::on_event(&shared.core, event, ask_runtime.as_ref());
                }
            })
        };
        let backplane = provider.bind(BindContext {
            hub: D::SERVICE,
            local: local.clone(),
            metrics: metrics.clone(),
            events,
        })?;
        let core = Arc::new(HubCore {
            service: D::SERVICE,
            node,
            local,
            backplane,
            config: config.clone(),
            metrics: metrics.clone(),
            shutdown: hubs.inner.shutdown.child_token(),
            shutdown_reason: OnceLock::new(),
            next_conn: AtomicU64::new(0),
            conn_closed: Notify::new(),
            outbound: hubs.inner.outbound.clone(),
            sessions: config
                .sessions
                .clone()
                .map(|c| crate::session::Sessions::new(c, metrics.clone())),
            asks: Default::default(),
        });
        hubs.inner
            .hubs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&core));
        tracing::debug!(hub = D::SERVICE, groups = provider.name(), %node, "hub bound");
        let shared = Arc::new(HubShared {
            dispatch: self.dispatch,
            core,
            identity: self.identity.over(&hubs.inner.identity),
        });
        let _ = hub.set(Arc::downgrade(&shared));
        Ok(HubService { shared })
    }
}

/// Hands members lost with their server to the hub's `on_members_lost` hook, on a
/// task of its own (the backplane's task that noticed must not wait for the hub), on
/// `runtime` (the hub's), else the current one.
fn members_lost<D: Dispatch>(
    shared: Arc<HubShared<D>>,
    lost: MembersLost,
    runtime: Option<&tokio::runtime::Handle>,
) {
    let Some(runtime) = runtime
        .cloned()
        .or_else(|| tokio::runtime::Handle::try_current().ok())
    else {
        tracing::warn!(
            hub = shared.core.service,
            "members lost, but no runtime to run the hook on"
        );
        return;
    };
    let core = &shared.core;
    for _ in &lost.members {
        HubMetrics::incr(&core.metrics.backplane_members_lost);
    }
    tracing::info!(
        hub = core.service,
        group = %lost.group,
        server = %lost.server,
        members = lost.members.len(),
        "members lost with their server"
    );
    runtime.spawn(async move {
        let handle = HubHandle::new(shared.core.clone());
        let hook = std::panic::AssertUnwindSafe(shared.dispatch.on_members_lost(handle, lost));
        if futures_util::FutureExt::catch_unwind(hook).await.is_err() {
            tracing::error!(
                hub = shared.core.service,
                "the hub's on_members_lost hook panicked"
            );
        }
    });
}

/// Runs a command from outside the hub (an emitter) on this server's connections it
/// selects: closes them as `Context::close` does, or runs the leave path (registry,
/// backplane, then the hub's `on_removed` hook) on a task of its own.
fn commanded<D: Dispatch>(shared: Arc<HubShared<D>>, command: Commanded) {
    let core = &shared.core;
    match command.action {
        Action::Takeover { server } => {
            for m in &command.members {
                // Sends and asks for it from here go to this server's channel, which
                // the new holder listens on; asks for it arriving there are its.
                core.local.moved_away(m.connection, server);
                let held = core
                    .sessions
                    .as_ref()
                    .is_some_and(|s| s.taken_over(m.connection, server));
                tracing::info!(hub = core.service, conn = %m.connection, %server, held, "session taken over by another server");
            }
        }
        Action::Disconnect { code, reason } => {
            tracing::info!(
                hub = core.service,
                connections = command.members.len(),
                ?code,
                %reason,
                "disconnecting connections by command"
            );
            for m in &command.members {
                if let Some(member) = core.local.member(m.connection) {
                    member
                        .outbox
                        .close(CloseReason::draining(code, reason.clone()));
                }
            }
        }
        Action::Leave { group } => {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            tracing::info!(
                hub = core.service,
                %group,
                connections = command.members.len(),
                "removing connections from a group by command"
            );
            runtime.spawn(async move {
                let core = &shared.core;
                let mut removed = Vec::new();
                for m in command.members {
                    match core.leave(&group, m.connection, m.user.clone()).await {
                        Ok(true) => removed.push(m),
                        Ok(false) => {}
                        Err(e) => {
                            // It left here; the backplane failed to hear of it (counted).
                            tracing::warn!(hub = core.service, %group, error = %e, "backplane leave failed");
                            removed.push(m);
                        }
                    }
                }
                if removed.is_empty() {
                    return;
                }
                let handle = HubHandle::new(core.clone());
                let removed = MembersRemoved {
                    group,
                    members: removed,
                };
                let hook = std::panic::AssertUnwindSafe(shared.dispatch.on_removed(handle, removed));
                if futures_util::FutureExt::catch_unwind(hook).await.is_err() {
                    tracing::error!(hub = shared.core.service, "the hub's on_removed hook panicked");
                }
            });
        }
    }
}

impl<D: Dispatch> NamedService for HubService<D> {
    const NAME: &'static str = D::SERVICE;
}

impl<D, B> Service<http::Request<B>> for HubService<D>
where
    D: Dispatch,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != D::PATH {
            let status = Status::unimplemented(format!(
                "unknown method {}: the hub {} has one method, Connect",
                hub_core::quote::quote(req.uri().path()),
                D::SERVICE
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let shared = self.shared.clone();
        Box::pin(async move {
            let max = shared.core.config.max_message_bytes;
            let mut grpc = Grpc::new(ServerCodec).max_decoding_message_size(max);
            Ok(grpc.streaming(ConnectSvc { shared }, req).await)
        })
    }
}

/// Writes pre-encoded frames (appending the push sequence number) and reads raw
/// request frames, which the connection decodes itself so that a malformed frame
/// gets an error frame instead of ending the stream.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerCodec;

/// A frame and its push sequence number, as the [`ServerCodec`] writes it.
#[derive(Debug)]
pub struct WriteItem {
    frame: OutFrame,
    seq: u64,
}

impl Codec for ServerCodec {
    type Encode = WriteItem;
    type Decode = Bytes;
    type Encoder = ServerCodec;
    type Decoder = ServerCodec;

    fn encoder(&mut self) -> Self::Encoder {
        ServerCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        ServerCodec
    }
}

impl Encoder for ServerCodec {
    type Item = WriteItem;
    type Error = Status;

    fn encode(&mut self, item: WriteItem, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.frame.encoded_len(item.seq));
        item.frame.write_to(item.seq, dst);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        codec_buffers()
    }
}

/// tonic's per-stream encode and decode buffers. tonic allocates 8 KiB for each when
/// a stream opens, a large part of what an idle hub connection costs; hub frames are
/// small, and a buffer grows when a batch or a frame needs more. 1 KiB each measured
/// 35.4 -> 29.5 KiB of server RSS per idle connection (10,000 connections,
/// `hub-bench conns`; the rest is mostly h2's own buffers). The yield threshold stays
/// tonic's (32 KiB): frames queued together still go out in one write.
fn codec_buffers() -> BufferSettings {
    BufferSettings::new(1024, 32 * 1024)
}

impl Decoder for ServerCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }

    fn buffer_settings(&self) -> BufferSettings {
        codec_buffers()
    }
}

/// The response stream of one connection: its outbound queue, then a goodbye frame
/// and the closing status.
pub struct OutboundStream {
    source: Source,
    /// Set once the goodbye frame went out: how to end then (a status, or `None`
    /// for a clean end).
    ending: Option<Option<Status>>,
    done: bool,
}

/// Where an [`OutboundStream`] reads its frames.
enum Source {
    /// The connection's own queue (no session).
    Owned(OutboxReceiver),
    /// A session's queue, shared with the streams that resume it: written while
    /// `generation` is the session's.
    Session {
        io: Arc<Mutex<SessionIo>>,
        generation: u64,
    },
}

impl Source {
    fn poll_next(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Next>> {
        let (io, generation) = match self {
            Source::Owned(rx) => return rx.poll_next(cx),
            Source::Session { io, generation } => (io, *generation),
        };
        let mut io = io.lock().unwrap_or_else(|e| e.into_inner());
        if io.generation != generation {
            // Another stream resumed the session, or this one was given up.
            return Poll::Ready(Some(Next::Close(CloseReason::new(
                tonic::Code::Unavailable,
                "this stream no longer serves the session (resumed elsewhere or timed out)",
            ))));
        }
        if let Some((frame, seq)) = io.first.pop_front() {
            return Poll::Ready(Some(Next::Frame(frame, seq)));
        }
        match io.rx.poll_next(cx) {
            Poll::Ready(Some(Next::Frame(frame, seq))) => {
                io.written(&frame, seq);
                Poll::Ready(Some(Next::Frame(frame, seq)))
            }
            Poll::Pending => {
                if !io.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    io.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl Stream for OutboundStream {
    type Item = Result<WriteItem, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(end) = this.ending.take() {
            this.done = true;
            return Poll::Ready(end.map(Err));
        }
        match this.source.poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Next::Frame(frame, seq))) => {
                Poll::Ready(Some(Ok(WriteItem { frame, seq })))
            }
            // The end after the client closed its side: nothing to explain.
            Poll::Ready(Some(Next::Close(reason)))
                if reason.code == tonic::Code::Ok && reason.message.is_empty() =>
            {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Next::Close(reason))) => {
                // A hub may close with any text (`Context::close`): bounded, so neither
                // the goodbye frame nor the status trailer grows with it.
                let message = hub_core::quote::bound_message(reason.message);
                let goodbye = control_frame(Kind::Goodbye(proto::Goodbye {
                    code: reason.code as i32,
                    reason: message.clone(),
                }));
                // A clean close with a reason (`Context::close(Code::Ok, "done")`)
                // still says why, then ends with OK.
                this.ending = Some(
                    (reason.code != tonic::Code::Ok).then(|| Status::new(reason.code, message)),
                );
                Poll::Ready(Some(Ok(WriteItem {
                    frame: OutFrame::reply(goodbye),
                    seq: 0,
                })))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }
}

struct ConnectSvc<D> {
    shared: Arc<HubShared<D>>,
}

impl<D: Dispatch> Service<tonic::Request<Streaming<Bytes>>> for ConnectSvc<D> {
    type Response = tonic::Response<OutboundStream>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<Streaming<Bytes>>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(accept(shared, req))
    }
}

async fn accept<D: Dispatch>(
    shared: Arc<HubShared<D>>,
    req: tonic::Request<Streaming<Bytes>>,
) -> Result<tonic::Response<OutboundStream>, Status> {
    let core = shared.core.clone();
    if core.shutdown.is_cancelled() {
        HubMetrics::incr(&core.metrics.connections_rejected);
        return Err(Status::unavailable("server shutting down"));
    }
    let remote_addr = req.remote_addr();
    let (metadata, extensions, inbound) = req.into_parts();
    let request = ConnectRequest {
        metadata: &metadata,
        extensions: &extensions,
        remote_addr,
    };
    let identity = match shared.identity.identify(&request) {
        Ok(identity) => identity,
        Err(status) => {
            HubMetrics::incr(&core.metrics.connections_rejected);
            HubMetrics::incr(&core.metrics.connections_unauthenticated);
            tracing::debug!(hub = D::SERVICE, peer = ?remote_addr, %status, "connection not authenticated");
            return Err(status);
        }
    };
    let user = identity.as_ref().map(|i| i.user_arc());
    let mut inbound = Some(inbound);
    let mut resumption = None;
    // A session another server held, resumed here from the backplane's record.
    let mut restored = None;
    if let Some(credential) = metadata.get(RESUME_KEY) {
        let credential = credential.to_str().unwrap_or_default();
        let seq = metadata.get(RESUME_SEQ_KEY).and_then(|v| v.to_str().ok());
        let outcome = match &core.sessions {
            None => Err(crate::session::Refusal::refused(
                "this hub keeps no sessions",
            )),
            Some(sessions) => sessions.resume(
                core.node,
                core.next_conn.load(Relaxed) + 1,
                crate::session::ResumeAsk {
                    credential,
                    seq,
                    user: user.as_deref(),
                },
                &mut inbound,
                |id, credential, replayed| {
                    hello_frame(
                        &core,
                        &id.to_string(),
                        credential,
                        Some(proto::Resumption {
                            outcome: proto::ResumeOutcome::Resumed as i32,
                            reason: String::new(),
                            replayed,
                        }),
                    )
                },
            ),
        };
        match outcome {
            Ok(resumed) => {
                HubMetrics::incr(&core.metrics.sessions_resumed);
                tracing::debug!(hub = D::SERVICE, conn = %resumed.session.id, "session resumed");
                return Ok(tonic::Response::new(OutboundStream {
                    source: Source::Session {
                        io: resumed.session.io.clone(),
                        generation: resumed.generation,
                    },
                    ending: None,
                    done: false,
                }));
            }
            Err(mut refusal) => {
                let outcome = match refusal.elsewhere.take() {
                    Some(_) if !lookup_admitted(&core) => {
                        // The session is left as it is: the client's retry can restore it.
                        HubMetrics::incr(&core.metrics.connections_rejected);
                        tracing::debug!(hub = D::SERVICE, peer = ?remote_addr, "resume throttled: too many session lookups on the backplane");
                        return Err(Status::unavailable(
                            "too many sessions are being restored on this server; retry with \
                             the same credential after a backoff",
                        ));
                    }
                    Some(ask) => {
                        crate::session_record::restore(&core, ask, user.as_deref(), refusal).await
                    }
                    None => Err(refusal),
                };
                match outcome {
                    Ok(r) => {
                        HubMetrics::incr(&core.metrics.sessions_restored);
                        let replays = r
                            .record
                            .groups
                            .iter()
                            .any(|g| core.backplane.echoes_own_pushes(&g.group));
                        let recovered =
                            if replays && core.connection_group(r.record.connection).is_some() {
                                "the pushes missed (to its groups, its user and its connection \
                             id) are replayed from the groups' history next (what it no \
                             longer holds is told with pushes_lost)"
                            } else if replays {
                                "the group pushes missed are replayed from the groups' history \
                             next (what it no longer holds is told with pushes_lost); sends \
                             to the connection id while no stream was attached are not \
                             recovered"
                            } else {
                                "pushes sent while no stream was attached are not recovered \
                             (resync them)"
                            };
                        let reason = format!(
                            "restored on this server from the session record: the same \
                             connection id, identity and groups; {recovered}"
                        );
                        resumption = Some(proto::Resumption {
                            outcome: proto::ResumeOutcome::Restored as i32,
                            reason,
                            replayed: 0,
                        });
                        restored = Some(r);
                    }
                    Err(refusal) => {
                        refusal.count(&core.metrics);
                        tracing::debug!(hub = D::SERVICE, reason = %refusal.reason, "resume refused");
                        resumption = Some(refusal.resumption());
                    }
                }
            }
        }
    }
    let inbound = inbound.expect("a refused resume leaves the stream");
    let id = match &restored {
        Some(r) => r.record.connection,
        None => ConnectionId {
            node: core.node,
            local: core.next_conn.fetch_add(1, Relaxed) + 1,
        },
    };
    let config = &core.config;
    let (outbox, mut rx) = Outbox::with_limits(
        config.outbox_limits(),
        config.slow_consumer,
        core.metrics.clone(),
        core.outbound.clone(),
    );
    if let Some(r) = &restored {
        rx.continue_after(r.seq);
    }
    let secret = restored.as_ref().map(|r| r.secret);
    let (source, attachments, credential) = match &core.sessions {
        Some(sessions) => match sessions.open(id, user.clone(), &outbox, rx, secret) {
            Ok((att, credential)) => {
                let source = Source::Session {
                    io: att.session.io.clone(),
                    generation: att.session.io().generation,
                };
                (source, Some(att), credential)
            }
            Err(rx) => (Source::Owned(rx), None, String::new()),
        },
        None => (Source::Owned(rx), None, String::new()),
    };
    let hello = hello_frame(&core, &id.to_string(), &credential, resumption);
    // First frame of the stream, so the client knows its id before any push.
    let _ = outbox.push(hello);
    core.local.register(Member {
        id,
        user: user.clone(),
        outbox: outbox.clone(),
    });
    let conn = Arc::new(ConnState {
        id,
        core: core.clone(),
        metadata,
        extensions,
        remote_addr,
        outbox,
        user: Mutex::new(user),
        identity,
        kick: std::sync::OnceLock::new(),
        kicked: Notify::new(),
        departed: std::sync::OnceLock::new(),
        asks_in_flight: Default::default(),
        ask_wait: Notify::new(),
    });
    let span = tracing::info_span!("connection", hub = D::SERVICE, conn = %id, peer = ?remote_addr);
    // Every connection of an authenticated user is reachable as that user, from
    // `on_connect` on. A restored session joins its groups again (its user's among
    // them), here.
    let joined = match &restored {
        Some(r) => {
            let positions = resume_positions(&conn.metadata, &core.metrics);
            rejoin(&core, &conn, &r.record, &positions).await
        }
        None => join_own_groups(&core, &conn).await,
    };
    if let Err(e) = joined {
        HubMetrics::incr(&core.metrics.connections_rejected);
        tracing::debug!(parent: &span, error = %e, "could not register the connection's groups");
        end_session(&core, attachments.as_ref()).await;
        crate::connection::leave_everything(&core, &conn).await;
        return Err(e.into());
    }
    if conn.identity.is_none() || restored.is_some() {
        // (A join wrote the record already, unless there was none.)
        core.save_record(id).await;
    }
    let ctx = Context::<D::Push>::new(conn.clone());
    if restored.is_some() {
        // The session goes on: `on_connect` ran on the server that opened it, and
        // `on_disconnect` runs where it ends.
        let hook = std::panic::AssertUnwindSafe(shared.dispatch.on_resumed(ctx.clone()));
        if futures_util::FutureExt::catch_unwind(hook)
            .instrument(span.clone())
            .await
            .is_err()
        {
            tracing::error!(parent: &span, "the hub's on_resumed hook panicked");
        }
    } else {
        let hook = std::panic::AssertUnwindSafe(shared.dispatch.on_connect(ctx.clone()));
        let accepted = match futures_util::FutureExt::catch_unwind(hook)
            .instrument(span.clone())
            .await
        {
            Ok(r) => r,
            Err(_) => Err(Status::internal("the hub's on_connect hook panicked")),
        };
        if let Err(status) = accepted {
            HubMetrics::incr(&core.metrics.connections_rejected);
            let status = Status::new(status.code(), hub_core::quote::bound_str(status.message()));
            tracing::debug!(parent: &span, %status, "connection refused by on_connect");
            end_session(&core, attachments.as_ref()).await;
            crate::connection::leave_everything(&core, &conn).await;
            return Err(status);
        }
    }
    HubMetrics::incr(&core.metrics.connections_opened);
    core.metrics.connections.increment(1.0);
    tokio::spawn(crate::connection::run(shared, conn, inbound, attachments).instrument(span));
    Ok(tonic::Response::new(OutboundStream {
        source,
        ending: None,
        done: false,
    }))
}

/// Whether a resume of a session this server does not hold may read its record on
/// the backplane now ([`crate::SessionConfig::restore_lookups`]). A backplane that
/// shares no sessions reads nothing: always.
fn lookup_admitted(core: &HubCore) -> bool {
    match &core.sessions {
        Some(sessions) if core.shares_sessions() => sessions.admit_lookup(),
        _ => true,
    }
}

/// Ends the session of a connection refused before it started.
async fn end_session(core: &HubCore, attachments: Option<&crate::session::Attachments>) {
    if let (Some(sessions), Some(att)) = (&core.sessions, attachments) {
        sessions.end(&att.session);
        crate::session_record::drop_record(core, att.session.id).await;
    }
}

/// The group positions a resuming client presented (`hub-resume-positions-bin`), at
/// most [`crate::MAX_RESUME_POSITIONS`]; none if absent or malformed. Malformed ones,
/// and positions past the most read, are counted in `resume_positions_ignored`.
fn resume_positions(
    metadata: &tonic::metadata::MetadataMap,
    metrics: &HubMetrics,
) -> HashMap<String, (u64, u64)> {
    use prost::Message as _;
    let Some(value) = metadata.get_bin(crate::RESUME_POSITIONS_KEY) else {
        return HashMap::new();
    };
    let Some(positions) = value
        .to_bytes()
        .ok()
        .and_then(|bytes| proto::ResumePositions::decode(bytes).ok())
    else {
        HubMetrics::incr(&metrics.resume_positions_ignored);
        tracing::debug!("hub-resume-positions-bin is malformed: ignored");
        return HashMap::new();
    };
    if positions.positions.len() > crate::MAX_RESUME_POSITIONS {
        HubMetrics::incr(&metrics.resume_positions_ignored);
        tracing::debug!(
            presented = positions.positions.len(),
            "hub-resume-positions-bin has too many positions: the first ones are read"
        );
    }
    positions
        .positions
        .into_iter()
        .take(crate::MAX_RESUME_POSITIONS)
        .map(|p| (p.group, (p.offset, p.epoch)))
        .collect()
}

/// Where a restored session's replay of a group starts: the later of the position
/// the client presented and where the record says it joined (offset, epoch).
fn replay_from(client: Option<(u64, u64)>, joined: Option<(u64, u64)>) -> Option<(u64, u64)> {
    match (client, joined) {
        (Some(c), Some(j)) if c.1 == j.1 => Some(if c.0 >= j.0 { c } else { j }),
        (Some(c), _) => Some(c),
        (None, j) => j,
    }
}

/// Joins a restored session's groups again, on this server. A group with history
/// is held back here while the session joins it, then replayed to it from where the
/// client says it was (or where it joined): the pushes it missed, then the live ones,
/// each once and in order. What cannot be replayed is told (`pushes_lost`).
async fn rejoin(
    core: &HubCore,
    conn: &ConnState,
    record: &hub_core::session::SessionRecord,
    client: &HashMap<String, (u64, u64)>,
) -> Result<(), hub_core::GroupError> {
    let user = record.user.clone();
    let session = core.sessions.as_ref().and_then(|s| s.get(conn.id));
    let mut replays = Vec::new();
    let mut unknown = Vec::new();
    for g in &record.groups {
        if core.backplane.echoes_own_pushes(&g.group) {
            match replay_from(client.get(g.group.as_str()).copied(), g.joined_at) {
                Some(after) => {
                    if let Some(s) = &session {
                        // The record keeps where the replay starts, should the session
                        // move again before it sees a push of the group.
                        s.record.lock().await.insert(g.group.clone(), after);
                    }
                    if let Some(hold) = core.backplane.hold_group(&g.group) {
                        match hold.await {
                            Some(hold) => replays.push((hold, after)),
                            None => unknown.push((g.group.clone(), "the group was busy")),
                        }
                    }
                }
                None => unknown.push((
                    g.group.clone(),
                    "where the session stood in the group is unknown",
                )),
            }
        }
        core.join(&g.group, conn.id, user.clone()).await?;
    }
    // A record written without the connection's own group (another setting on its old
    // server): joined here. (A record that has it joined it above, with its replay.)
    if let Some(own) = core.connection_group(conn.id)
        && !record.groups.iter().any(|g| g.group == own)
    {
        core.join(&own, conn.id, user.clone()).await?;
    }
    for (group, why) in unknown {
        HubMetrics::incr(&core.metrics.backplane_gaps);
        let notice = hub_core::frame::pushes_lost_frame(
            group.as_str(),
            0,
            format!("{why}: pushes sent while the session was away were not replayed"),
        );
        let _ = conn.outbox.push(OutFrame::reply(notice));
    }
    let done = futures_util::future::join_all(
        replays
            .into_iter()
            .map(|(hold, after)| hold.replay(conn.id, after)),
    )
    .await;
    let replayed: u64 = done.iter().map(|r| r.replayed).sum();
    let missed: u64 = done.iter().map(|r| r.missed).sum();
    core.metrics.restored_pushes_replayed.add(replayed);
    core.metrics.restored_pushes_missed.add(missed);
    tracing::debug!(hub = core.service, conn = %conn.id, replayed, missed, "restored session caught up on its groups");
    Ok(())
}

/// The hello frame: the connection's id and limits, its resume credential (empty
/// without a session) and the answer to a resume it asked for.
fn hello_frame(
    core: &HubCore,
    connection_id: &str,
    credential: &str,
    resumption: Option<proto::Resumption>,
) -> OutFrame {
    let config = &core.config;
    OutFrame::reply(control_frame(Kind::Hello(proto::ConnectionInfo {
        connection_id: connection_id.to_owned(),
        server_id: core.node.to_string(),
        hub: core.service.to_owned(),
        heartbeat_interval_ms: config
            .heartbeat_interval
            .map_or(0, |d| clamp_safe(d.as_millis())),
        heartbeat_timeout_ms: config
            .heartbeat_timeout
            .map_or(0, |d| clamp_safe(d.as_millis())),
        max_message_bytes: clamp_safe(config.max_message_bytes as u128),
        max_outbound_message_bytes: clamp_safe(core.max_outbound() as u128),
        resume_credential: credential.to_owned(),
        resumption,
        session_grace_ms: core
            .sessions
            .as_ref()
            .map_or(0, |s| clamp_safe(s.config.grace.as_millis())),
    })))
}

/// Puts a new connection into its own groups: an authenticated one into its user's,
/// so that user pushes reach it, and (with `SessionConfig::connection_history`) each
/// into `$conn/<id>`, which pushes to its id go through.
async fn join_own_groups(core: &HubCore, conn: &ConnState) -> Result<(), hub_core::GroupError> {
    let user = conn.identity.as_ref().map(|i| i.user_id().to_owned());
    if let Some(user) = &user {
        let group = hub_core::GroupName::reserved("user", user)?;
        core.join(&group, conn.id, Some(user.clone())).await?;
    }
    // Joins `$conn/<id>` if pushes to the connection's id go through it.
    match core.connection_group(conn.id) {
        Some(group) => core.join(&group, conn.id, user).await,
        None => Ok(()),
    }
}
