//! Helpers shared by the integration tests: in-process chat servers on
//! `127.0.0.1:0` and chat clients that record what they receive; the probe hub
//! ([`probe`]) and a raw client for bad-input tests ([`raw`]); the backplane
//! conformance suite every topology runs ([`conformance`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use examples::auth::TokenSecret;
use examples::chat::chat_hub_client::{ChatHubClient, ChatHubReceiver};
use examples::chat::chat_hub_server::ChatHubHandle;
use examples::chat::{ChatMessage, JoinRequest, UserEvent};
use examples::login::LoginRequest;
use examples::login::chat_login_client::ChatLoginClient;
use hub_client::ConnectOptions;
use hub_server::{GroupProvider, HubConfig, Hubs};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub mod asks;
pub mod conformance;
pub mod history;
pub mod memory;
pub mod probe;
pub mod raw;
pub mod resume;

/// The token secret of every [`TestServer`] (unless started with another), and what
/// tests pass to `chat-server --token-secret`: servers with the same secret accept
/// each other's tokens.
pub const TEST_TOKEN_SECRET: &str = "the integration tests' token secret (not a real one)";

/// The [`TEST_TOKEN_SECRET`].
pub fn test_secret() -> TokenSecret {
    TokenSecret::new(TEST_TOKEN_SECRET.as_bytes()).expect("long enough")
}

/// A chat hub (and its development login) served in this process on a free
/// loopback port.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The hub's handle (metrics, counts, pushes).
    pub handle: ChatHubHandle,
    /// The server-wide hubs (shutdown).
    pub hubs: Hubs,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Serves the chat hub with in-memory groups and `config`.
    pub async fn memory(config: HubConfig) -> Self {
        Self::start(Arc::new(hub_server::MemoryProvider), config).await
    }

    /// Serves the chat hub with `provider` and `config`, signing and verifying tokens
    /// with [`TEST_TOKEN_SECRET`].
    pub async fn start(provider: Arc<dyn GroupProvider>, config: HubConfig) -> Self {
        Self::start_with_secret(provider, config, test_secret()).await
    }

    /// Like [`TestServer::start`], with tokens signed and verified with `secret`.
    pub async fn start_with_secret(
        provider: Arc<dyn GroupProvider>,
        config: HubConfig,
        secret: TokenSecret,
    ) -> Self {
        let hubs = Hubs::builder()
            .default_groups_arc(provider)
            .config(config)
            .build();
        let svc = examples::chat_service(&hubs, &secret).expect("bind hub");
        let login = examples::login_service(&secret, examples::DEFAULT_TOKEN_TTL);
        let handle = svc.handle();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .add_service(login)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        TestServer {
            addr,
            handle,
            hubs,
            task,
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections. Connections already open keep being served by
    /// their own tasks: for a crash, use [`CrashableServer`].
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A [`TestServer`] on a tokio runtime of its own, so that a test can crash it:
/// [`CrashableServer::crash`] stops every task of that server at once (gRPC,
/// connections, hub, backplane), with no clean-up at all, as a killed process would.
pub struct CrashableServer {
    server: TestServer,
    runtime: tokio::runtime::Runtime,
}

impl CrashableServer {
    /// Starts the chat hub with the provider `make_provider` builds (on the new runtime).
    pub async fn start<F, Fut>(make_provider: F, config: HubConfig) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Arc<dyn GroupProvider>>,
    {
        tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let server = runtime.block_on(async {
                let provider = make_provider().await;
                TestServer::start(provider, config).await
            });
            CrashableServer { server, runtime }
        })
        .await
        .expect("start crashable server")
    }

    /// Crashes it.
    pub fn crash(self) {
        let CrashableServer { server, runtime } = self;
        runtime.shutdown_background();
        // Its serve task died with the runtime; nothing left to abort.
        std::mem::forget(server);
    }
}

impl std::ops::Deref for CrashableServer {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.server
    }
}

/// A push a [`Recorder`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// `on_join`.
    Join(UserEvent),
    /// `on_leave`.
    Leave(UserEvent),
    /// `on_message`.
    Message(ChatMessage),
    /// `on_whisper`.
    Whisper(ChatMessage),
    /// An error frame.
    Error(tonic::Code, String),
}

/// Records pushes and their sequence numbers.
#[derive(Default)]
pub struct Recorder {
    /// What arrived, in order.
    pub seen: Mutex<Vec<Seen>>,
    /// Push sequence numbers, in order.
    pub seqs: Mutex<Vec<u64>>,
    /// Connection state changes, in order.
    pub states: Mutex<Vec<hub_client::ConnectionState>>,
    /// Loss notices (`on_pushes_lost`): the group and how many were missed.
    pub lost: Mutex<Vec<(String, u64)>>,
    notify: Notify,
}

impl Recorder {
    fn push(&self, s: Seen) {
        self.seen.lock().expect("lock").push(s);
        self.notify.notify_waiters();
    }

    /// A copy of what arrived.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// Waits until at least `n` pushes arrived or `within` passed; returns what arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.seen();
            }
        }
    }

    /// Proves that nothing reached connection `conn` beyond what this recorder holds,
    /// and returns that: the hub pushes a marker message to `conn` and this waits for it.
    ///
    /// Each connection's pushes arrive in the order they were queued, and a push made
    /// on this server (by a call that has returned, or from a handle) is queued before
    /// the call or handle method returns, so anything sent to `conn` before would
    /// arrive before the marker. (A push relayed from another server is only ordered
    /// with the marker if the same sender sends both, through the same group.)
    pub async fn barrier(&self, handle: &ChatHubHandle, conn: &str, within: Duration) -> Vec<Seen> {
        let m = ChatMessage {
            room: String::new(),
            from: "barrier".into(),
            text: format!("barrier {}", self.seen().len()),
        };
        let marker = Seen::Message(m.clone());
        let d = handle
            .connection(conn.parse().expect("a connection id"))
            .on_message(m)
            .await
            .expect("push the barrier");
        assert_eq!(d.local, 1, "{conn} is not connected here");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            let mut seen = self.seen();
            if let Some(at) = seen.iter().position(|s| *s == marker) {
                assert_eq!(at + 1, seen.len(), "pushes after the barrier: {seen:?}");
                seen.truncate(at);
                return seen;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("the barrier did not arrive within {within:?}: {seen:?}");
            }
        }
    }
}

impl ChatHubReceiver for Recorder {
    fn on_join(&self, m: UserEvent) {
        self.push(Seen::Join(m));
    }
    fn on_leave(&self, m: UserEvent) {
        self.push(Seen::Leave(m));
    }
    fn on_message(&self, m: ChatMessage) {
        self.push(Seen::Message(m));
    }
    fn on_whisper(&self, m: ChatMessage) {
        self.push(Seen::Whisper(m));
    }
    fn on_seq(&self, seq: u64) {
        self.seqs.lock().expect("lock").push(seq);
    }
    fn on_error(&self, code: tonic::Code, message: &str) {
        self.push(Seen::Error(code, message.to_owned()));
    }
    fn on_connection_state(&self, state: &hub_client::ConnectionState) {
        self.states.lock().expect("lock").push(state.clone());
    }
    fn on_pushes_lost(&self, group: &str, missed: u64, _reason: &str) {
        self.lost
            .lock()
            .expect("lock")
            .push((group.to_owned(), missed));
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

/// Logs in as `user` with the development login at `url`; returns the token.
pub async fn login(url: &str, user: &str) -> String {
    ChatLoginClient::new(channel(url).await)
        .login(LoginRequest { user: user.into() })
        .await
        .expect("login")
        .into_inner()
        .token
}

/// Opens a chat connection to `url` with `authorization: Bearer <token>` (none for
/// `None`), recording pushes; the error is the status the server refused it with.
pub async fn connect_with_token(
    url: &str,
    token: Option<&str>,
) -> Result<(ChatHubClient, Arc<Recorder>), hub_client::ClientError> {
    let mut options = ConnectOptions::default();
    if let Some(token) = token {
        options = options.metadata("authorization", &format!("Bearer {token}"))?;
    }
    let rec = Arc::new(Recorder::default());
    let c = ChatHubClient::connect_with(channel(url).await, options, rec.clone()).await?;
    Ok((c, rec))
}

/// Logs in as `user` and connects a chat client to `url`, recording pushes.
pub async fn client(url: &str, user: &str) -> (ChatHubClient, Arc<Recorder>) {
    let token = login(url, user).await;
    connect_with_token(url, Some(&token))
        .await
        .expect("hub connect")
}

/// Logs in as `user`, connects and joins `room`.
pub async fn joined(url: &str, room: &str, user: &str) -> (ChatHubClient, Arc<Recorder>) {
    let (c, rec) = client(url, user).await;
    c.join(JoinRequest { room: room.into() })
        .await
        .expect("join");
    (c, rec)
}

/// Logs in as `user` at `login_url`, connects to `url` and joins `room`, as behind a
/// load balancer that sends the login and the stream to different servers (which must
/// share the token secret).
pub async fn joined_via(
    login_url: &str,
    url: &str,
    room: &str,
    user: &str,
) -> (ChatHubClient, Arc<Recorder>) {
    let token = login(login_url, user).await;
    let (c, rec) = connect_with_token(url, Some(&token))
        .await
        .expect("hub connect");
    c.join(JoinRequest { room: room.into() })
        .await
        .expect("join");
    (c, rec)
}

/// Logs in as `user` at `login_url` and connects the Rust client through a
/// [`hub_client::Failover`] transport over `servers` (dialled in order at each
/// connect and reconnect), recording pushes, then joins `room`.
pub async fn joined_failover(
    login_url: &str,
    servers: Vec<SocketAddr>,
    room: &str,
    user: &str,
) -> (ChatHubClient, Arc<Recorder>) {
    let token = login(login_url, user).await;
    let channel = hub_client::Failover::new(servers)
        .channel(Duration::from_secs(5))
        .await
        .expect("channel");
    let options = ConnectOptions::default()
        .metadata("authorization", &format!("Bearer {token}"))
        .expect("metadata");
    let rec = Arc::new(Recorder::default());
    let c = ChatHubClient::connect_with(channel, options, rec.clone())
        .await
        .expect("hub connect");
    c.join(JoinRequest { room: room.into() })
        .await
        .expect("join");
    (c, rec)
}

/// A chat message as a [`Seen`].
pub fn said(room: &str, from: &str, text: &str) -> Seen {
    Seen::Message(ChatMessage {
        room: room.into(),
        from: from.into(),
        text: text.into(),
    })
}

/// A join notice as a [`Seen`].
pub fn join_notice(room: &str, user: &str) -> Seen {
    Seen::Join(UserEvent {
        room: room.into(),
        user: user.into(),
    })
}
