//! The Rust client reconnects by itself: on a hub with sessions, a client whose TCP
//! connection is cut opens a new stream, resumes its session and gets every push it
//! missed once, in order; a server that restarted (the session unknown) gives a
//! fresh connection the client reports as needing a resync; a call in flight at the
//! cut fails with `ConnectionLost` and is not sent again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use examples::chat::chat_hub_client::ChatHubClient;
use examples::chat::{JoinRequest, SayRequest};
use hub_client::{ClientError, ConnectOptions, ConnectionState, ReconnectPolicy, ResumeOutcome};
use hub_server::{HubConfig, SessionConfig};
use tests::probe::ProbeServer;
use tests::probe::proto::{HoldRequest, SleepRequest};
use tests::{Recorder, Seen, TestServer, joined, login, said};

const WAIT: Duration = Duration::from_secs(10);

/// A TCP relay in front of a server, whose connections a test can cut (as a network
/// that fails does) and whose upstream it can move (a server restarted elsewhere).
struct Relay {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    relays: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let upstream = Arc::new(Mutex::new(upstream));
        let relays: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let relays = relays.clone();
            let upstream = upstream.clone();
            async move {
                while let Ok((mut down, _)) = listener.accept().await {
                    let to = *upstream.lock().expect("upstream");
                    let relay = tokio::spawn(async move {
                        if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                    });
                    relays.lock().expect("relays").push(relay);
                }
            }
        });
        Relay {
            addr,
            upstream,
            relays,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every connection relayed so far.
    fn cut(&self) {
        for relay in self.relays.lock().expect("relays").drain(..) {
            relay.abort();
        }
    }

    /// New connections go to `to`.
    fn point_to(&self, to: SocketAddr) {
        *self.upstream.lock().expect("upstream") = to;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

fn sessions() -> HubConfig {
    HubConfig::default().sessions(Some(SessionConfig::default()))
}

/// Quick attempts, so the tests take little time.
fn options(token: &str) -> ConnectOptions {
    ConnectOptions::default()
        .metadata("authorization", &format!("Bearer {token}"))
        .expect("metadata")
        .reconnect(
            ReconnectPolicy::default()
                .backoff(Duration::from_millis(20), Duration::from_millis(200)),
        )
}

/// `user`, logged in at `server` and connected through `relay`.
async fn through(relay: &Relay, server: &TestServer, user: &str) -> (ChatHubClient, Arc<Recorder>) {
    let token = login(&server.url(), user).await;
    let rec = Arc::new(Recorder::default());
    let c = ChatHubClient::connect_with(
        tests::channel(&relay.url()).await,
        options(&token),
        rec.clone(),
    )
    .await
    .expect("hub connect");
    (c, rec)
}

async fn wait_state(
    c: &ChatHubClient,
    what: &str,
    f: impl Fn(&ConnectionState) -> bool,
) -> ConnectionState {
    let mut rx = c.raw().watch_state();
    tokio::time::timeout(WAIT, rx.wait_for(|s| f(s)))
        .await
        .unwrap_or_else(|_| panic!("never {what}: {:?}", c.raw().state()))
        .expect("state")
        .clone()
}

async fn say(c: &ChatHubClient, text: &str) {
    c.say(SayRequest { text: text.into() }).await.expect("say");
}

/// The chat lines from `from` that `rec` saw.
fn lines(seen: &[Seen], from: &str) -> Vec<String> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Message(m) if m.from == from => Some(m.text.clone()),
            _ => None,
        })
        .collect()
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_cut_client_resumes_by_itself_and_gets_every_push_once_in_order() {
    let server = TestServer::memory(sessions()).await;
    let relay = Relay::start(server.addr).await;
    let (alice, alice_rx) = through(&relay, &server, "alice").await;
    alice
        .join(JoinRequest {
            room: "lobby".into(),
        })
        .await
        .expect("join");
    let id = alice.connection_id();
    let (bob, _) = joined(&server.url(), "lobby", "bob").await;
    for i in 1..=10 {
        say(&bob, &format!("m{i}")).await;
    }
    eventually("alice read ten lines", || {
        lines(&alice_rx.seen(), "bob").len() == 10
    })
    .await;
    relay.cut();
    eventually("the session detached", || {
        server.handle.metrics().sessions_detached == 1
    })
    .await;
    // Queued while alice is away, and said while she comes back.
    for i in 11..=20 {
        say(&bob, &format!("m{i}")).await;
    }
    let saying = tokio::spawn(async move {
        for i in 21..=40 {
            say(&bob, &format!("m{i}")).await;
        }
        bob
    });
    wait_state(&alice, "resumed", |s| *s == ConnectionState::Resumed).await;
    let _bob = tokio::time::timeout(WAIT, saying)
        .await
        .expect("bob said all")
        .expect("bob");
    eventually("alice read forty lines", || {
        lines(&alice_rx.seen(), "bob").len() >= 40
    })
    .await;
    // Nothing more is on its way: a barrier pushed after everything else.
    let seen = alice_rx.barrier(&server.handle, &id, WAIT).await;
    let want: Vec<String> = (1..=40).map(|i| format!("m{i}")).collect();
    assert_eq!(lines(&seen, "bob"), want, "every line once, in order");
    let seqs = alice_rx.seqs.lock().expect("seqs").clone();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(alice.connection_id(), id);
    let states = alice_rx.states.lock().expect("states").clone();
    assert!(
        matches!(
            states.as_slice(),
            [
                ConnectionState::Reconnecting { .. },
                ..,
                ConnectionState::Resumed
            ]
        ),
        "{states:?}"
    );
    let m = server.handle.metrics();
    assert_eq!((m.sessions_resumed, m.sessions_expired), (1, 0));
    // Still in the room as the same connection: her line reaches the room.
    say(&alice, "back").await;
}

#[tokio::test]
async fn after_a_server_restart_the_client_needs_a_resync_and_carries_on() {
    let first = TestServer::memory(sessions()).await;
    let relay = Relay::start(first.addr).await;
    let (alice, alice_rx) = through(&relay, &first, "alice").await;
    alice
        .join(JoinRequest {
            room: "lobby".into(),
        })
        .await
        .expect("join");
    let old_id = alice.connection_id();
    // The server goes away for good; another takes its place, knowing no session.
    let second = TestServer::memory(sessions()).await;
    relay.point_to(second.addr);
    first.abort();
    relay.cut();
    let state = wait_state(&alice, "connected again", |s| {
        matches!(
            s,
            ConnectionState::Resumed | ConnectionState::ResyncNeeded { .. }
        )
    })
    .await;
    assert!(
        matches!(
            state,
            ConnectionState::ResyncNeeded {
                outcome: ResumeOutcome::Unknown,
                ..
            }
        ),
        "{state:?}"
    );
    assert_ne!(alice.connection_id(), old_id);
    assert_eq!(second.handle.metrics().resumes_failed_unknown, 1);
    // A new connection with no groups: the app joins again, and it works.
    alice
        .join(JoinRequest {
            room: "lobby".into(),
        })
        .await
        .expect("join again");
    let (bob, _) = joined(&second.url(), "lobby", "bob").await;
    say(&bob, "welcome back").await;
    let seen = alice_rx
        .barrier(&second.handle, &alice.connection_id(), WAIT)
        .await;
    assert!(
        seen.contains(&said("lobby", "bob", "welcome back")),
        "{seen:?}"
    );
    let states = alice_rx.states.lock().expect("states").clone();
    assert!(
        matches!(states.last(), Some(ConnectionState::ResyncNeeded { .. })),
        "{states:?}"
    );
}

#[tokio::test]
async fn a_call_in_flight_across_the_cut_fails_with_connection_lost_and_is_not_sent_again() {
    let server = ProbeServer::start(sessions()).await;
    let relay = Relay::start(server.addr).await;
    let options = ConnectOptions::default().reconnect(
        ReconnectPolicy::default().backoff(Duration::from_millis(20), Duration::from_millis(200)),
    );
    let (c, _) = tests::probe::probe_client_with(&relay.url(), options)
        .await
        .expect("connect");
    let calls = server.handle.metrics().calls;
    let held = tokio::spawn({
        let c = c.clone();
        async move {
            c.hold(HoldRequest {
                gate: "g".into(),
                tag: "held".into(),
            })
            .await
        }
    });
    // The hub runs it (and waits at the gate).
    eventually("the hold is dispatched", || {
        server.handle.metrics().calls == calls + 1
    })
    .await;
    relay.cut();
    let err = tokio::time::timeout(WAIT, held)
        .await
        .expect("the held call ended")
        .expect("task")
        .unwrap_err();
    assert!(matches!(err, ClientError::ConnectionLost(_)), "{err:?}");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let mut rx = c.raw().watch_state();
    tokio::time::timeout(WAIT, rx.wait_for(|s| *s == ConnectionState::Resumed))
        .await
        .expect("resumed")
        .expect("state");
    // One permit: had the hold been sent again, the second would wait at the gate, and
    // the call behind it (a connection's calls run in order) with it.
    server.state.open("g");
    let done = tokio::time::timeout(
        WAIT,
        c.sleep(SleepRequest {
            ms: 0,
            tag: "after".into(),
        }),
    )
    .await
    .expect("the call after the resume was answered")
    .expect("sleep");
    assert_eq!((done.tag.as_str(), done.finished), ("after", 2));
}
