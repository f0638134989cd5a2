//! Clients that answer the chat hub's ready checks as a test tells them (yes, no,
//! late, never, an error, or after a call of their own), and the ask cases every
//! backplane runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use examples::chat::chat_hub_client::{ChatHubClient, ChatHubReceiver};
use examples::chat::{
    CheckReadyRequest, JoinRequest, ReadyAnswer, ReadyCheck, ReadyReport, ReadyState,
};
use tokio::sync::Notify;

/// How an [`Answerer`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Ready.
    Yes,
    /// Not ready.
    No,
    /// Ready, after this long.
    Late(Duration),
    /// Never answers.
    Never,
    /// Fails the ask with `FAILED_PRECONDITION`.
    Error,
    /// Calls `members` on its own connection, then answers ready.
    CallFirst,
}

/// A receiver that answers ready checks.
pub struct Answerer {
    mode: Mutex<Mode>,
    /// Its own client, for [`Mode::CallFirst`].
    pub client: OnceLock<ChatHubClient>,
    /// Ready checks received.
    pub asked: AtomicUsize,
    /// Member counts its `members` calls got while answering.
    pub counted: Mutex<Vec<u64>>,
    notify: Notify,
}

impl Answerer {
    /// An answerer in `mode`.
    pub fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Answerer {
            mode: Mutex::new(mode),
            client: OnceLock::new(),
            asked: AtomicUsize::new(0),
            counted: Mutex::new(Vec::new()),
            notify: Notify::new(),
        })
    }

    /// Changes how it answers.
    pub fn set(&self, mode: Mode) {
        *self.mode.lock().expect("lock") = mode;
    }

    /// Waits until it was asked `n` times (bounded).
    pub async fn wait_asked(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            if self.asked.load(Ordering::SeqCst) >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "asked {} times, not {n}, within {within:?}",
                    self.asked.load(Ordering::SeqCst)
                );
            }
        }
    }
}

impl ChatHubReceiver for Answerer {
    async fn ready_check(&self, _m: ReadyCheck) -> Result<ReadyAnswer, tonic::Status> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
        let mode = *self.mode.lock().expect("lock");
        match mode {
            Mode::Yes => Ok(ReadyAnswer { ready: true }),
            Mode::No => Ok(ReadyAnswer { ready: false }),
            Mode::Late(d) => {
                tokio::time::sleep(d).await;
                Ok(ReadyAnswer { ready: true })
            }
            Mode::Never => std::future::pending().await,
            Mode::Error => Err(tonic::Status::failed_precondition("not at the keyboard")),
            Mode::CallFirst => {
                let client = self.client.get().expect("client set").clone();
                let m = client
                    .members()
                    .await
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
                self.counted.lock().expect("lock").push(m.count);
                Ok(ReadyAnswer { ready: true })
            }
        }
    }
}

/// Logs in as `user` at `url`, connects with an [`Answerer`] in `mode` and joins `room`.
pub async fn answerer(
    url: &str,
    room: &str,
    user: &str,
    mode: Mode,
) -> (ChatHubClient, Arc<Answerer>) {
    let token = crate::login(url, user).await;
    let options = hub_client::ConnectOptions::default()
        .metadata("authorization", &format!("Bearer {token}"))
        .expect("metadata");
    let a = Answerer::new(mode);
    let c = ChatHubClient::connect_with(crate::channel(url).await, options, a.clone())
        .await
        .expect("connect");
    if mode == Mode::CallFirst {
        // Only an answerer that calls keeps its client (dropping the test's handle
        // then does not end the connection).
        let _ = a.client.set(c.clone());
    }
    c.join(JoinRequest { room: room.into() })
        .await
        .expect("join");
    (c, a)
}

/// A ready check from `client` with a timeout of `timeout_ms`; the states by user, sorted.
pub async fn ready_check(
    client: &ChatHubClient,
    timeout_ms: u64,
) -> (ReadyReport, Vec<(String, ReadyState)>) {
    let report = tokio::time::timeout(
        Duration::from_millis(timeout_ms) + Duration::from_secs(10),
        client.check_ready(CheckReadyRequest { timeout_ms }),
    )
    .await
    .expect("the ready check ends")
    .expect("check_ready");
    let mut states: Vec<(String, ReadyState)> = report
        .members
        .iter()
        .map(|m| {
            (
                m.user.clone(),
                ReadyState::try_from(m.state).expect("a state"),
            )
        })
        .collect();
    states.sort();
    (report, states)
}

/// `(user, state)` pairs, sorted, for comparisons.
pub fn states(pairs: &[(&str, ReadyState)]) -> Vec<(String, ReadyState)> {
    let mut v: Vec<_> = pairs.iter().map(|(u, s)| (u.to_string(), *s)).collect();
    v.sort();
    v
}

/// Makes a provider for one more hub server (polled on that server's runtime).
pub type MakeProvider = Arc<dyn Fn() -> crate::conformance::ProviderFuture + Send + Sync>;

/// A ready check over three servers: each member's answer comes back to the asker's
/// server, whatever it is.
pub async fn group_across_servers(make: MakeProvider) {
    let config = hub_server::HubConfig::default();
    let s0 = crate::TestServer::start(make().await, config.clone()).await;
    let s1 = crate::TestServer::start(make().await, config.clone()).await;
    let s2 = crate::TestServer::start(make().await, config).await;
    let (alice, _a) = answerer(&s0.url(), "r", "alice", Mode::Yes).await;
    let (_bob, _b) = answerer(&s1.url(), "r", "bob", Mode::No).await;
    let (_carol, _c) = answerer(&s2.url(), "r", "carol", Mode::Error).await;
    let (_dave, _d) = answerer(
        &s2.url(),
        "r",
        "dave",
        Mode::Late(Duration::from_millis(200)),
    )
    .await;
    // On the same server as dave: waiting for erin's timeout holds back no answer.
    let (_erin, _e) = answerer(&s2.url(), "r", "erin", Mode::Never).await;
    let (report, got) = ready_check(&alice, 1_500).await;
    assert_eq!(
        got,
        states(&[
            ("alice", ReadyState::Ready),
            ("bob", ReadyState::NotReady),
            ("carol", ReadyState::Failed),
            ("dave", ReadyState::Ready),
            ("erin", ReadyState::TimedOut),
        ]),
        "{report:?}"
    );
    let carol = report
        .members
        .iter()
        .find(|m| m.user == "carol")
        .expect("carol");
    assert!(carol.detail.contains("not at the keyboard"), "{carol:?}");
    let m = s0.handle.metrics();
    assert_eq!(
        (m.asks, m.asks_answered, m.asks_failed, m.asks_timed_out),
        (5, 3, 1, 1),
        "{m:?}"
    );
}

/// The target's server dies while the ask waits: the ask ends with `Disconnected`
/// as soon as the backplane reports the death, long before its timeout.
pub async fn crash_mid_ask(make: MakeProvider, within: Duration) {
    let config = hub_server::HubConfig::default();
    let s0 = crate::TestServer::start(make().await, config.clone()).await;
    let made = make.clone();
    let s1 = crate::CrashableServer::start(move || made(), config).await;
    let (alice, _a) = answerer(&s0.url(), "r", "alice", Mode::Yes).await;
    let (_bob, b) = answerer(&s1.url(), "r", "bob", Mode::Never).await;
    let started = tokio::time::Instant::now();
    let check = {
        let alice = alice.clone();
        tokio::spawn(async move { ready_check(&alice, 60_000).await })
    };
    b.wait_asked(1, Duration::from_secs(10)).await;
    s1.crash();
    let (report, got) = tokio::time::timeout(within, check)
        .await
        .expect("the ask ends once the server is reported dead")
        .expect("task");
    assert_eq!(
        got,
        states(&[
            ("alice", ReadyState::Ready),
            ("bob", ReadyState::Disconnected)
        ]),
        "{report:?}"
    );
    let bob = report
        .members
        .iter()
        .find(|m| m.user == "bob")
        .expect("bob");
    assert!(bob.detail.contains("died"), "{bob:?}");
    assert!(started.elapsed() < Duration::from_secs(60));
}
