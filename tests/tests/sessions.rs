//! Sessions: a connection whose stream drops is kept for a grace period; a new stream
//! that presents its resume credential (`hub-resume`, `hub-resume-seq` metadata) gets
//! the same connection id, its groups, and every push it missed, once, in order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use examples::chat::chat_request::Call;
use examples::chat::{ChatResponse, JoinRequest, SayRequest};
use hub_core::proto::{ConnectionInfo, ResumeOutcome};
use hub_server::{HubConfig, SessionConfig};
use tests::raw::RawConn;
use tests::resume::{lines, open, outcome, send, until_reply};
use tests::{Seen, TestServer, joined, login, said};

const WAIT: Duration = Duration::from_secs(10);

/// A server behind a TCP relay whose connections a test can cut, as a network that
/// fails does (the server sees its TCP connections end, no clean end of any stream).
struct Proxied {
    server: TestServer,
    handle: examples::chat::chat_hub_server::ChatHubHandle,
    addr: std::net::SocketAddr,
    relays: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxied {
    async fn start(server: TestServer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let relays: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let upstream = server.addr;
        let accept = tokio::spawn({
            let relays = relays.clone();
            async move {
                while let Ok((mut down, _)) = listener.accept().await {
                    let relay = tokio::spawn(async move {
                        if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                    });
                    relays.lock().expect("relays").push(relay);
                }
            }
        });
        Proxied {
            handle: server.handle.clone(),
            server,
            addr,
            relays,
            accept,
        }
    }

    /// The relay's address, `http://ADDR`.
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every connection relayed so far.
    fn cut(&self) {
        for relay in self.relays.lock().expect("relays").drain(..) {
            relay.abort();
        }
    }
}

impl Drop for Proxied {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
        let _ = &self.server;
    }
}

fn config(sessions: SessionConfig) -> HubConfig {
    HubConfig::default().sessions(Some(sessions))
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn say(c: &examples::chat::chat_hub_client::ChatHubClient, text: &str) {
    c.say(SayRequest { text: text.into() }).await.expect("say");
}

/// alice on a raw stream, joined to `lobby` and up to date; bob joined too.
struct Room {
    server: Proxied,
    token: String,
    alice: RawConn<ChatResponse>,
    hello: ConnectionInfo,
    bob: examples::chat::chat_hub_client::ChatHubClient,
    bob_rx: std::sync::Arc<tests::Recorder>,
}

async fn room(sessions: SessionConfig) -> Room {
    let server = Proxied::start(TestServer::memory(config(sessions)).await).await;
    let url = server.url();
    let token = login(&url, "alice").await;
    let (mut alice, hello) = open(&url, &token, None).await;
    assert!(
        !hello.resume_credential.is_empty(),
        "no credential: {hello:?}"
    );
    assert_eq!(outcome(&hello), ResumeOutcome::Unspecified);
    send(
        &alice,
        1,
        Call::Join(JoinRequest {
            room: "lobby".into(),
        }),
    )
    .await;
    until_reply(&mut alice, 1).await;
    // bob reaches the server directly: cuts are alice's.
    let (bob, bob_rx) = joined(&server.server.url(), "lobby", "bob").await;
    Room {
        server,
        token,
        alice,
        hello,
        bob,
        bob_rx,
    }
}

#[tokio::test]
async fn a_resume_after_a_drop_gets_every_missed_push_once_in_order() {
    let Room {
        server,
        token,
        mut alice,
        hello,
        bob,
        bob_rx,
    } = room(SessionConfig::default()).await;
    for i in 1..=5 {
        say(&bob, &format!("m{i}")).await;
    }
    // alice reads three of them; the other two are written or queued when her stream drops.
    let seen = lines(&mut alice, 3).await;
    assert_eq!(
        seen.iter().map(|l| l.1.as_str()).collect::<Vec<_>>(),
        ["m1", "m2", "m3"]
    );
    let last = seen[2].0;
    server.cut();
    eventually("the session detached", || {
        server.handle.metrics().sessions_detached == 1
    })
    .await;
    for i in 6..=8 {
        say(&bob, &format!("m{i}")).await;
    }
    let (mut alice, resumed) = open(
        &server.url(),
        &token,
        Some((&hello.resume_credential, last)),
    )
    .await;
    assert_eq!(outcome(&resumed), ResumeOutcome::Resumed, "{resumed:?}");
    assert_eq!(resumed.connection_id, hello.connection_id);
    assert_eq!(resumed.resume_credential, hello.resume_credential);
    say(&bob, "m9").await;
    let got = lines(&mut alice, 6).await;
    assert_eq!(
        got.iter().map(|l| l.1.as_str()).collect::<Vec<_>>(),
        ["m4", "m5", "m6", "m7", "m8", "m9"],
        "every missed push once, in order, then the live one"
    );
    let seqs: Vec<u64> = got.iter().map(|l| l.0).collect();
    assert_eq!(seqs, (last + 1..=last + 6).collect::<Vec<_>>(), "{got:?}");
    // Still in the room, as the same connection: a say of hers reaches bob, and bob
    // never saw her leave.
    send(
        &alice,
        7,
        Call::Say(SayRequest {
            text: "back".into(),
        }),
    )
    .await;
    let seen = wait_seen(&bob_rx, &said("lobby", "alice", "back")).await;
    assert!(
        !seen.iter().any(|s| matches!(s, Seen::Leave(_))),
        "bob saw alice leave: {seen:?}"
    );
    let m = server.handle.metrics();
    assert_eq!((m.sessions_resumed, m.sessions_expired), (1, 0));
}

/// Waits until `rec` saw `want`; returns all it saw.
async fn wait_seen(rec: &tests::Recorder, want: &Seen) -> Vec<Seen> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = rec.seen();
        if seen.contains(want) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {want:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn past_the_grace_period_there_is_no_resume_and_the_others_saw_a_leave() {
    let Room {
        server,
        token,
        alice: _alice,
        hello,
        bob: _bob,
        bob_rx,
    } = room(SessionConfig::default().grace(Duration::from_millis(300))).await;
    server.cut();
    let leave = Seen::Leave(examples::chat::UserEvent {
        room: "lobby".into(),
        user: "alice".into(),
    });
    wait_seen(&bob_rx, &leave).await;
    assert_eq!(server.handle.metrics().sessions_expired, 1);
    let (_alice, again) = open(&server.url(), &token, Some((&hello.resume_credential, 0))).await;
    assert_eq!(outcome(&again), ResumeOutcome::Expired, "{again:?}");
    assert_ne!(again.connection_id, hello.connection_id);
    assert!(
        !again.resume_credential.is_empty(),
        "a new session: {again:?}"
    );
    assert_eq!(server.handle.metrics().resumes_failed_expired, 1);
}

#[tokio::test]
async fn forged_and_someone_elses_credentials_are_refused() {
    let Room {
        server,
        token,
        alice: _alice,
        hello,
        ..
    } = room(SessionConfig::default()).await;
    let url = server.url();
    let (id, secret) = hello.resume_credential.rsplit_once('.').expect("id.secret");
    let flipped = format!(
        "{id}.{}",
        secret
            .chars()
            .map(|c| if c == '0' { '1' } else { '0' })
            .collect::<String>()
    );
    for forged in [flipped.as_str(), "garbage", id] {
        let (_c, h) = open(&url, &token, Some((forged, 0))).await;
        assert_eq!(outcome(&h), ResumeOutcome::Unknown, "{forged}: {h:?}");
        assert_ne!(h.connection_id, hello.connection_id);
    }
    // mallory holds alice's credential (it leaked): refused, and alice's session stands.
    let mallory = login(&url, "mallory").await;
    let (_m, h) = open(&url, &mallory, Some((&hello.resume_credential, 0))).await;
    assert_eq!(outcome(&h), ResumeOutcome::IdentityMismatch, "{h:?}");
    server.cut();
    let (_a, h) = open(&url, &token, Some((&hello.resume_credential, 0))).await;
    assert_eq!(outcome(&h), ResumeOutcome::Resumed, "{h:?}");
    assert_eq!(h.connection_id, hello.connection_id);
    let m = server.handle.metrics();
    assert_eq!(
        (
            m.resumes_failed_unknown,
            m.resumes_failed_identity,
            m.sessions_resumed
        ),
        (3, 1, 1)
    );
}

#[tokio::test]
async fn a_resume_older_than_what_is_held_is_a_gap() {
    // Nothing written is kept: only pushes never written can be recovered.
    let Room {
        server,
        token,
        mut alice,
        hello,
        bob,
        ..
    } = room(SessionConfig::default().replay_bytes(0)).await;
    for i in 1..=3 {
        say(&bob, &format!("m{i}")).await;
    }
    let seen = lines(&mut alice, 3).await;
    server.cut();
    let (_a, h) = open(
        &server.url(),
        &token,
        Some((&hello.resume_credential, seen[0].0)),
    )
    .await;
    assert_eq!(outcome(&h), ResumeOutcome::Gap, "{h:?}");
    assert_ne!(h.connection_id, hello.connection_id);
    // The session ended: the credential is no good any more.
    let (_a, h) = open(
        &server.url(),
        &token,
        Some((&hello.resume_credential, seen[2].0)),
    )
    .await;
    assert_eq!(outcome(&h), ResumeOutcome::Expired, "{h:?}");
    let m = server.handle.metrics();
    assert_eq!((m.resumes_failed_gap, m.resumes_failed_expired), (1, 1));
}

#[tokio::test]
async fn a_hub_without_sessions_says_so() {
    let server = TestServer::memory(HubConfig::default()).await;
    let token = login(&server.url(), "alice").await;
    let (_a, h) = open(&server.url(), &token, None).await;
    assert!(h.resume_credential.is_empty());
    assert_eq!(h.session_grace_ms, 0);
    let (_a, h) = open(&server.url(), &token, Some(("x.y", 0))).await;
    assert_eq!(outcome(&h), ResumeOutcome::Refused, "{h:?}");
}

/// `hub-resume-seq` past the wire's integer limit (2^53-1) is refused before any
/// session is looked at (a restored session would number on after it), and the
/// session is left alone: the real seq still resumes it.
#[tokio::test]
async fn a_resume_seq_above_the_wire_limit_is_refused_and_the_session_kept() {
    let server = Proxied::start(TestServer::memory(config(SessionConfig::default())).await).await;
    let token = login(&server.url(), "alice").await;
    let (_a, hello) = open(&server.url(), &token, None).await;
    server.cut();
    eventually("the session detached", || {
        server.handle.metrics().sessions_detached == 1
    })
    .await;
    let (_b, h) = open(
        &server.url(),
        &token,
        Some((
            &hello.resume_credential,
            hub_core::frame::MAX_SAFE_INTEGER + 1,
        )),
    )
    .await;
    assert_eq!(outcome(&h), ResumeOutcome::Refused, "{h:?}");
    let (_c, h) = open(&server.url(), &token, Some((&hello.resume_credential, 0))).await;
    assert_eq!(outcome(&h), ResumeOutcome::Resumed, "{h:?}");
    assert_eq!(h.connection_id, hello.connection_id);
}

#[tokio::test]
async fn a_silent_peer_is_a_dropped_stream_its_session_waits() {
    let config = config(SessionConfig::default()).heartbeat(
        Some(Duration::from_millis(50)),
        Some(Duration::from_millis(300)),
    );
    let server = TestServer::memory(config).await;
    let token = login(&server.url(), "alice").await;
    // A raw stream answers no ping: the heartbeat times out.
    let (mut alice, hello) = open(&server.url(), &token, None).await;
    eventually("the session detached", || {
        server.handle.metrics().sessions_detached == 1
    })
    .await;
    // The old stream is given up (it no longer serves the session).
    let end = loop {
        match alice.next().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(&end, Err(s) if s.code() == tonic::Code::Unavailable),
        "{end:?}"
    );
    let (_alice, h) = open(&server.url(), &token, Some((&hello.resume_credential, 0))).await;
    assert_eq!(outcome(&h), ResumeOutcome::Resumed, "{h:?}");
    assert_eq!(h.connection_id, hello.connection_id);
    let m = server.handle.metrics();
    assert_eq!((m.heartbeat_timeouts, m.sessions_expired), (1, 0));
}

/// On a backplane the detached connection stays a member everywhere: pushes from
/// another server reach its queue, and the resume gets them.
#[tokio::test]
async fn on_redis_pushes_from_another_server_wait_for_the_resume() {
    let redis = test_support::RedisServer::start();
    let provider = |url: &str| -> Arc<dyn hub_server::GroupProvider> {
        Arc::new(
            hub_redis::RedisProvider::builder()
                .url(url)
                .build()
                .expect("provider"),
        )
    };
    let a = TestServer::start(provider(&redis.url()), config(SessionConfig::default())).await;
    let b = Proxied::start(
        TestServer::start(provider(&redis.url()), config(SessionConfig::default())).await,
    )
    .await;
    let token = login(&b.url(), "alice").await;
    let (mut alice, hello) = open(&b.url(), &token, None).await;
    send(
        &alice,
        1,
        Call::Join(JoinRequest {
            room: "lobby".into(),
        }),
    )
    .await;
    until_reply(&mut alice, 1).await;
    let (bob, _) = joined(&a.url(), "lobby", "bob").await;
    say(&bob, "m1").await;
    let seen = lines(&mut alice, 1).await;
    b.cut();
    eventually("the session detached", || {
        b.handle.metrics().sessions_detached == 1
    })
    .await;
    say(&bob, "m2").await;
    say(&bob, "m3").await;
    let (mut alice, h) = open(
        &b.url(),
        &token,
        Some((&hello.resume_credential, seen[0].0)),
    )
    .await;
    assert_eq!(outcome(&h), ResumeOutcome::Resumed, "{h:?}");
    let got = lines(&mut alice, 2).await;
    assert_eq!(
        got,
        [
            (seen[0].0 + 1, "m2".to_owned()),
            (seen[0].0 + 2, "m3".to_owned())
        ]
    );
}

#[tokio::test]
async fn an_identity_at_its_limit_gives_up_its_oldest_detached_session() {
    let server = Proxied::start(
        TestServer::memory(config(SessionConfig::default().max_per_identity(1))).await,
    )
    .await;
    let token = login(&server.url(), "alice").await;
    let (_first, hello) = open(&server.url(), &token, None).await;
    server.cut();
    eventually("the session detached", || {
        server.handle.metrics().sessions_detached == 1
    })
    .await;
    // A second session for alice: the detached one makes room.
    let (_second, again) = open(&server.url(), &token, None).await;
    assert!(!again.resume_credential.is_empty());
    assert_eq!(server.handle.metrics().sessions_evicted, 1);
    // At the limit with no session detached, a third connection gets none.
    let (_third, third) = open(&server.url(), &token, None).await;
    assert!(third.resume_credential.is_empty(), "{third:?}");
    let (_a, h) = open(&server.url(), &token, Some((&hello.resume_credential, 0))).await;
    assert_eq!(outcome(&h), ResumeOutcome::Expired, "{h:?}");
}

/// `connection_history` on a backplane without group history (here the in-memory
/// provider) changes nothing: a push to a connection id is delivered straight from
/// this server's registry, not published.
#[tokio::test]
async fn connection_history_without_group_history_changes_nothing() {
    let server =
        TestServer::memory(config(SessionConfig::default().connection_history(true))).await;
    let token = login(&server.url(), "alice").await;
    let (mut alice, hello) = open(&server.url(), &token, None).await;
    let id: hub_core::ConnectionId = hello.connection_id.parse().expect("an id");
    let d = server
        .handle
        .connection(id)
        .on_message(examples::chat::ChatMessage {
            room: String::new(),
            from: "test".into(),
            text: "direct".into(),
        })
        .await
        .expect("push");
    assert_eq!((d.local, d.published), (1, false), "{d:?}");
    let got = tokio::time::timeout(WAIT, lines(&mut alice, 1))
        .await
        .expect("the push within the wait");
    assert_eq!(got[0].1, "direct");
}
