//! Sessions resumed on another server: the server holding a session keeps its record
//! in the backplane (Redis, NATS JetStream KV, the in-process bus), so a resume that reaches another
//! server restores it there (outcome `RESTORED`): the same connection id, identity and
//! groups, `seq` going on after `hub-resume-seq`, while the old server lives (it is
//! told to let go, without `on_disconnect`) or after it died. What cannot be proved
//! is refused as on one server: a forged credential, another identity, a record gone.

use std::sync::Arc;
use std::time::Duration;

use examples::chat::chat_request::Call;
use examples::chat::{ChatResponse, JoinRequest, SayRequest};
use hub_core::bus::Bus;
use hub_core::proto::server_control::Kind;
use hub_core::proto::{ConnectionInfo, ResumeOutcome};
use hub_nats::NatsProvider;
use hub_nats::async_nats::jetstream;
use hub_redis::RedisProvider;
use hub_server::{GroupProvider, HubConfig, RateLimit, SessionConfig};
use test_support::{ChatServer, NatsServer, RedisServer};
use tests::raw::{Frame, RawConn};
use tests::resume::{lines, open, outcome, send, try_open_on, until_reply};
use tests::{CrashableServer, Seen, TestServer, login, said};

const WAIT: Duration = Duration::from_secs(10);

fn config(grace: Duration) -> HubConfig {
    HubConfig::default().sessions(Some(SessionConfig::default().grace(grace)))
}

fn redis_provider(url: &str) -> Arc<dyn GroupProvider> {
    Arc::new(
        RedisProvider::builder()
            .url(url)
            .presence_ttl(Duration::from_secs(1))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
            .build()
            .expect("provider"),
    )
}

/// The NATS providers' heartbeat interval: a server is presumed dead 1.5 to 2.5 s
/// after its last beat (a live one starved of CPU for a moment is not), and its
/// session records expire grace + 1.5 s after their last rewrite.
const NATS_BEAT: Duration = Duration::from_millis(500);

/// A NATS provider sharing sessions, beating every `heartbeat` (a silent server is
/// presumed dead 3 to 5 of them after its last beat), retrying every 100 ms after
/// losing NATS.
async fn nats_provider(url: String, heartbeat: Duration) -> Arc<dyn GroupProvider> {
    Arc::new(
        NatsProvider::builder()
            .options(
                hub_nats::async_nats::ConnectOptions::new()
                    .reconnect_delay_callback(|_| Duration::from_millis(100)),
            )
            .heartbeat_interval(heartbeat)
            .operation_timeout(Duration::from_secs(2))
            .share_sessions(true)
            .connect(&url)
            .await
            .expect("connect to NATS"),
    )
}

/// Whether NATS keeps a record of the session of connection `id` (its KV entry).
async fn nats_record_exists(js: &jetstream::Context, id: &str) -> bool {
    let Ok(kv) = js.get_key_value("hub-chat-v1-ChatHub-sessions").await else {
        return false;
    };
    matches!(
        kv.entry(id).await,
        Ok(Some(e)) if e.operation == jetstream::kv::Operation::Put
    )
}

async fn say(c: &examples::chat::chat_hub_client::ChatHubClient, text: &str) {
    c.say(SayRequest { text: text.into() }).await.expect("say");
}

async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    test_support::eventually(what, WAIT, check).await
}

/// alice opens a raw session on `a` and joins `lobby`; bob joins on `b` and says
/// `m1`, `m2`, which alice reads. Returns alice's stream, hello, token, the last seq
/// she saw, and bob.
async fn alice_and_bob(
    a: &str,
    b: &str,
) -> (
    RawConn<ChatResponse>,
    ConnectionInfo,
    String,
    u64,
    examples::chat::chat_hub_client::ChatHubClient,
    Arc<tests::Recorder>,
) {
    let token = login(a, "alice").await;
    let (mut alice, hello) = open(a, &token, None).await;
    assert!(!hello.resume_credential.is_empty(), "{hello:?}");
    send(
        &alice,
        1,
        Call::Join(JoinRequest {
            room: "lobby".into(),
        }),
    )
    .await;
    until_reply(&mut alice, 1).await;
    let (bob, bob_rx) = tests::joined_via(a, b, "lobby", "bob").await;
    say(&bob, "m1").await;
    say(&bob, "m2").await;
    let seen = lines(&mut alice, 2).await;
    assert_eq!(
        seen.iter().map(|l| l.1.as_str()).collect::<Vec<_>>(),
        ["m1", "m2"]
    );
    (alice, hello, token, seen[1].0, bob, bob_rx)
}

/// After a restore: the session's next push is numbered after `last`, alice is in
/// the room as the same connection (her say reaches bob, the room counts her once),
/// and bob saw her leave only if `left` (her server's death was noticed before she
/// came back).
async fn goes_on(
    alice: &mut RawConn<ChatResponse>,
    last: u64,
    bob: &examples::chat::chat_hub_client::ChatHubClient,
    bob_rx: &tests::Recorder,
    left: bool,
) {
    say(bob, "m3").await;
    assert_eq!(lines(alice, 1).await, [(last + 1, "m3".to_owned())]);
    send(
        alice,
        9,
        Call::Say(SayRequest {
            text: "back".into(),
        }),
    )
    .await;
    until_reply(alice, 9).await;
    let want = said("lobby", "alice", "back");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !bob_rx.seen().contains(&want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            bob_rx.seen()
        );
        bob_rx.wait_for(bob_rx.seen().len() + 1, WAIT).await;
    }
    let members = bob.members().await.expect("members");
    assert_eq!(
        (members.count, members.members),
        (2, vec!["alice".to_string(), "bob".to_string()])
    );
    let seen = bob_rx.seen();
    assert_eq!(
        seen.iter().any(|s| matches!(s, Seen::Leave(_))),
        left,
        "what bob saw: {seen:?}"
    );
}

/// Resumed on B while A still serves the session (its old stream even still open):
/// A is told to let go and closes the old stream with a goodbye saying why, without
/// `on_disconnect` (nobody hears alice leave); B restores her as the same connection.
async fn takeover_while_the_first_lives<Fut>(make: impl Fn() -> Fut)
where
    Fut: Future<Output = Arc<dyn GroupProvider>>,
{
    let a = TestServer::start(make().await, config(Duration::from_secs(30))).await;
    let b = TestServer::start(make().await, config(Duration::from_secs(30))).await;
    let (mut old, hello, token, last, bob, bob_rx) = alice_and_bob(&a.url(), &b.url()).await;

    let (mut alice, restored) =
        open(&b.url(), &token, Some((&hello.resume_credential, last))).await;
    assert_eq!(outcome(&restored), ResumeOutcome::Restored, "{restored:?}");
    assert_eq!(restored.connection_id, hello.connection_id);
    assert_eq!(restored.resume_credential, hello.resume_credential);
    assert_ne!(restored.server_id, hello.server_id);
    let reason = &restored.resumption.as_ref().expect("resumption").reason;
    assert!(reason.contains("not recovered"), "{reason}");

    // The old stream: a goodbye saying the session went elsewhere, then its end.
    let goodbye = loop {
        match old.next().await {
            Ok(Some(frame)) => {
                if let Some(Kind::Goodbye(g)) = Frame::of(&frame).control() {
                    break g.clone();
                }
            }
            other => panic!("the old stream ended without a goodbye: {other:?}"),
        }
    };
    assert!(
        goodbye.reason.contains("resumed on another server"),
        "{goodbye:?}"
    );
    assert_eq!(tonic::Code::from(goodbye.code), tonic::Code::Aborted);
    eventually("A let go of the session", || async {
        a.handle.metrics().sessions_taken_over == 1
    })
    .await;

    goes_on(&mut alice, last, &bob, &bob_rx, false).await;
    let (ma, mb) = (a.handle.metrics(), b.handle.metrics());
    assert_eq!((ma.sessions_taken_over, mb.sessions_restored), (1, 1));
}

/// Resumed on B after A's runtime died (no clean-up at all): B restores the session.
/// If the resume comes before A's death is noticed (`noticed_first` false: Redis
/// within the presence TTL, NATS within 3 heartbeats), nobody hears alice lost or
/// leaving then, nor once it is noticed (`a_is_gone`, asked of B); if after (the bus
/// notices at once), the room heard her lost (`on_members_lost`: a leave) and she is
/// back as the same connection. `make` runs on the runtime of the server it makes
/// the provider of (A's connections die with A's).
async fn restore_after_the_first_died<Fut>(
    make: impl Fn() -> Fut + Clone + Send + 'static,
    noticed_first: bool,
    mut a_is_gone: impl AsyncFnMut(&TestServer) -> bool,
) where
    Fut: Future<Output = Arc<dyn GroupProvider>>,
{
    let make_a = make.clone();
    let a = CrashableServer::start(make_a, config(Duration::from_secs(30))).await;
    let b = TestServer::start(make().await, config(Duration::from_secs(30))).await;
    let (old, hello, token, last, bob, bob_rx) = alice_and_bob(&a.url(), &b.url()).await;
    drop(old);
    a.crash();
    if noticed_first {
        // The room hears alice lost (the chat hub tells it `on_leave`).
        let seen = bob_rx.wait_for(1, WAIT).await;
        assert!(matches!(seen.as_slice(), [Seen::Leave(_)]), "{seen:?}");
    }
    let (mut alice, restored) =
        open(&b.url(), &token, Some((&hello.resume_credential, last))).await;
    assert_eq!(outcome(&restored), ResumeOutcome::Restored, "{restored:?}");
    assert_eq!(restored.connection_id, hello.connection_id);
    eventually("A's death is noticed and cleaned up", async || {
        a_is_gone(&b).await
    })
    .await;
    goes_on(&mut alice, last, &bob, &bob_rx, noticed_first).await;
    let lost = b.handle.metrics().backplane_members_lost;
    assert_eq!(lost > 0, noticed_first, "members lost: {lost}");
}

#[tokio::test]
async fn redis_a_session_moves_to_a_live_servers_peer() {
    let redis = RedisServer::start();
    let url = redis.url();
    takeover_while_the_first_lives(async || redis_provider(&url)).await;
}

#[tokio::test]
async fn nats_a_session_moves_to_a_live_servers_peer() {
    let nats = NatsServer::start();
    let url = nats.url();
    takeover_while_the_first_lives(async || nats_provider(url.clone(), NATS_BEAT).await).await;
}

#[tokio::test]
async fn bus_a_session_moves_to_a_live_servers_peer() {
    let bus = Bus::new();
    takeover_while_the_first_lives(async || bus.provider()).await;
}

#[tokio::test]
async fn redis_a_session_outlives_its_crashed_server() {
    let redis = RedisServer::start();
    let url = redis.url();
    let r = &redis;
    restore_after_the_first_died(
        move || std::future::ready(redis_provider(&url)),
        false,
        // A's incarnation is cleaned up once its presence expired: one server left.
        async |_| r.cli(&["ZCARD", "hub:chat.v1.ChatHub:nodes"]).trim() == "1",
    )
    .await;
}

#[tokio::test]
async fn nats_a_session_outlives_its_crashed_server() {
    let nats = NatsServer::start();
    let url = nats.url();
    // A is presumed dead 1.5 to 2.5 s after its last heartbeat, well after the resume.
    restore_after_the_first_died(
        move || nats_provider(url.clone(), NATS_BEAT),
        false,
        // B's member counts answer again once A is presumed dead.
        async |b| b.handle.member_count("lobby").await.is_ok(),
    )
    .await;
}

#[tokio::test]
async fn bus_a_session_outlives_its_crashed_server() {
    let bus = Bus::new();
    // The bus forgets a server when its runtime stops: at once, before the resume.
    restore_after_the_first_died(
        move || std::future::ready(bus.provider()),
        true,
        async |_| true,
    )
    .await;
}

/// What B cannot prove it refuses, and the session stays as it was: a forged
/// secret is UNKNOWN, another identity's stream is IDENTITY_MISMATCH; the real
/// credential then restores it. A record gone (its server died and its time to live
/// passed: `record_exists` of the connection id says when) is UNKNOWN. `make` runs on
/// the runtime of the server it makes the provider of.
async fn refused_on_another_server<Fut>(
    make: impl Fn() -> Fut + Clone + Send + 'static,
    mut record_exists: impl AsyncFnMut(&str) -> bool,
) where
    Fut: Future<Output = Arc<dyn GroupProvider>>,
{
    // Grace 1 s: the record of a dead server's session lives 1 s past its presence.
    let a = CrashableServer::start(make.clone(), config(Duration::from_secs(1))).await;
    let b = CrashableServer::start(make, config(Duration::from_secs(1))).await;
    let (old, hello, token, last, _bob, _bob_rx) = alice_and_bob(&a.url(), &b.url()).await;
    let credential = hello.resume_credential.clone();
    let (id, _) = credential.rsplit_once('.').expect("id.secret");

    let forged = format!("{id}.{:032x}", 0x1234u128);
    let (_c, refused) = open(&b.url(), &token, Some((&forged, last))).await;
    assert_eq!(outcome(&refused), ResumeOutcome::Unknown, "{refused:?}");
    assert_ne!(refused.connection_id, hello.connection_id);
    let (_c, refused) = open(&b.url(), &token, Some(("garbage", last))).await;
    assert_eq!(outcome(&refused), ResumeOutcome::Unknown, "{refused:?}");

    let mallory = login(&b.url(), "mallory").await;
    let (_c, refused) = open(&b.url(), &mallory, Some((&credential, last))).await;
    assert_eq!(
        outcome(&refused),
        ResumeOutcome::IdentityMismatch,
        "{refused:?}"
    );
    assert_eq!(a.handle.metrics().sessions_taken_over, 0);
    let m = b.handle.metrics();
    assert_eq!(
        (m.resumes_failed_unknown, m.resumes_failed_identity),
        (2, 1)
    );

    // The real credential still restores it (A lets go)...
    let (_alice, restored) = open(&b.url(), &token, Some((&credential, last))).await;
    assert_eq!(outcome(&restored), ResumeOutcome::Restored, "{restored:?}");
    drop(old);
    eventually("A let go", || async {
        a.handle.metrics().sessions_taken_over == 1
    })
    .await;
    // ... and once B died and the record's time to live passed, nobody can.
    assert!(record_exists(id).await, "B keeps the record");
    b.crash();
    eventually("the record expired", async || !record_exists(id).await).await;
    // (A issued the id: it knows the session ended.)
    let (_c, refused) = open(&a.url(), &token, Some((&credential, last + 1))).await;
    assert_eq!(outcome(&refused), ResumeOutcome::Expired, "{refused:?}");
    a.crash();
}

#[tokio::test]
async fn redis_forged_foreign_and_expired_credentials_are_refused_on_another_server() {
    let redis = RedisServer::start();
    let url = redis.url();
    let r = &redis;
    refused_on_another_server(
        move || std::future::ready(redis_provider(&url)),
        async |id| {
            let key = format!("hub:chat.v1.ChatHub:session:{{s:{id}}}");
            r.cli(&["EXISTS", &key]).trim() == "1"
        },
    )
    .await;
}

#[tokio::test]
async fn nats_forged_foreign_and_expired_credentials_are_refused_on_another_server() {
    let nats = NatsServer::start();
    let url = nats.url();
    let js = jetstream::new(
        hub_nats::async_nats::connect(&url)
            .await
            .expect("connect to NATS"),
    );
    refused_on_another_server(
        move || nats_provider(url.clone(), NATS_BEAT),
        async |id| nats_record_exists(&js, id).await,
    )
    .await;
}

/// The session record reads a Redis serves, seen through `MONITOR`: the provider's
/// `load_session` is an `HGET <session key> r` sent by a client (scripts' reads are
/// shown as from `lua` and are not counted).
struct RecordReads {
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    monitor: std::process::Child,
    port: u16,
}

impl RecordReads {
    /// Starts `MONITOR`, and waits (within `WAIT`) until Redis says it is on.
    async fn start(redis: &RedisServer) -> Self {
        use std::io::BufRead as _;
        let port = redis.port();
        let mut monitor = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "MONITOR"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("redis-cli MONITOR");
        let out = monitor.stdout.take().expect("stdout");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        tokio::time::timeout(WAIT, async {
            while !lines.lock().expect("lines").iter().any(|l| l == "OK") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("MONITOR is on");
        RecordReads {
            lines,
            monitor,
            port,
        }
    }

    /// The record reads Redis ran before this call: a marker sent after them is seen
    /// in the monitor's (ordered) stream first, within `WAIT`.
    async fn count(&self, marker: &str) -> u64 {
        let sent = std::process::Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "ECHO",
                marker,
            ])
            .output()
            .expect("redis-cli ECHO");
        assert!(sent.status.success(), "{sent:?}");
        let quoted = format!("\"{marker}\"");
        tokio::time::timeout(WAIT, async {
            loop {
                {
                    let lines = self.lines.lock().expect("lines");
                    if let Some(at) = lines.iter().position(|l| l.contains(&quoted)) {
                        return lines[..at]
                            .iter()
                            .filter(|l| {
                                l.contains("\"HGET\"")
                                    && l.contains(":session:")
                                    && !l.contains(" lua]")
                            })
                            .count() as u64;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the marker reached the monitor")
    }
}

impl Drop for RecordReads {
    fn drop(&mut self) {
        let _ = self.monitor.kill();
        let _ = self.monitor.wait();
    }
}

/// A well-shaped but forged credential costs the server it reaches a backplane read
/// (the record's `HGET`), so these lookups are bounded per hub and server
/// (`SessionConfig::restore_lookups`; here bursts of 2, then 1 a second): past the
/// bound a resume fails with UNAVAILABLE before any read, counted in
/// `resume_lookups_throttled`, and Redis reads exactly one record per lookup let
/// through (seen with `MONITOR`). The session it names is left as it was: alice, throttled once, restores
/// on a retry with the same credential (RESTORED, her seq going on).
#[tokio::test]
async fn redis_record_lookups_past_the_bound_are_unavailable_and_read_nothing() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = TestServer::start(redis_provider(&url), config(Duration::from_secs(30))).await;
    let bounded = HubConfig::default().sessions(Some(
        SessionConfig::default()
            .grace(Duration::from_secs(30))
            .restore_lookups(Some(RateLimit::new(1, 2))),
    ));
    let b = TestServer::start(redis_provider(&url), bounded).await;
    let (_old, hello, token, last, bob, bob_rx) = alice_and_bob(&a.url(), &b.url()).await;
    let credential = hello.resume_credential.clone();
    let (id, _) = credential.rsplit_once('.').expect("id.secret");
    let forged = |n: u128| format!("{id}.{n:032x}");
    let to_b = tests::channel(&b.url()).await;
    let reads = RecordReads::start(&redis).await;
    // (MONITOR shows what runs after it started: this marker says it has.)
    assert_eq!(reads.count("started").await, 0);

    // Malformed credentials cost neither a read nor a token: one of 8 KiB, one whose
    // secret is not hex (UNKNOWN, as on one server).
    let oversized = format!("{id}.{}", "f".repeat(8 * 1024));
    let not_hex = format!("{id}.{}", "z".repeat(32));
    for bad in [&oversized, &not_hex] {
        let (_c, refused) = try_open_on(to_b.clone(), &token, Some((bad, last)), None)
            .await
            .expect("a malformed credential is answered");
        assert_eq!(outcome(&refused), ResumeOutcome::Unknown, "{refused:?}");
    }
    assert_eq!(reads.count("malformed").await, 0);

    // The burst: two lookups, each a read, each UNKNOWN. alice's resume right after
    // (within the second the next token takes) finds none left: UNAVAILABLE, before
    // any read, and nothing happened to her session.
    for n in 0..2 {
        let (_c, refused) = try_open_on(to_b.clone(), &token, Some((&forged(n), last)), None)
            .await
            .expect("a lookup within the burst");
        assert_eq!(outcome(&refused), ResumeOutcome::Unknown, "{refused:?}");
    }
    let status = try_open_on(to_b.clone(), &token, Some((&credential, last)), None)
        .await
        .map(|(_, hello)| hello)
        .expect_err("past the burst: throttled");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("retry"), "{status:?}");
    assert_eq!(reads.count("burst").await, 2);
    assert_eq!(a.handle.metrics().sessions_taken_over, 0);

    // Forgeries in a row: most are throttled; only those let through read Redis.
    let (mut looked_up, mut throttled) = (2u64, 1u64);
    for n in 2..12 {
        match try_open_on(to_b.clone(), &token, Some((&forged(n), last)), None).await {
            Ok((_c, refused)) => {
                assert_eq!(outcome(&refused), ResumeOutcome::Unknown, "{refused:?}");
                looked_up += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                throttled += 1;
            }
        }
    }
    assert!(throttled > 1, "ten forgeries at once, one token a second");
    assert_eq!(reads.count("forgeries").await, looked_up);
    let m = b.handle.metrics();
    assert_eq!(
        (m.resume_lookups_throttled, m.resumes_failed_unknown),
        (throttled, looked_up + 2)
    );

    // alice retries with the same credential, as a client does after UNAVAILABLE
    // (with backoff): once a token came back, the session is restored.
    let (mut alice, restored) = tokio::time::timeout(WAIT, async {
        loop {
            match try_open_on(to_b.clone(), &token, Some((&credential, last)), None).await {
                Ok(opened) => return opened,
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
    .await
    .expect("restored within the bound's refill");
    assert_eq!(outcome(&restored), ResumeOutcome::Restored, "{restored:?}");
    assert_eq!(restored.connection_id, hello.connection_id);
    assert_eq!(reads.count("restored").await, looked_up + 1);
    eventually("A let go", || async {
        a.handle.metrics().sessions_taken_over == 1
    })
    .await;
    goes_on(&mut alice, last, &bob, &bob_rx, false).await;
    assert_eq!(b.handle.metrics().sessions_restored, 1);
}

/// Two `chat-server` processes over Redis. alice reads a broadcast stream from the
/// first when it is killed with SIGKILL; she resumes on the second: the same
/// connection, RESTORED, and the pushes after it numbered on from her last seq, in
/// order, each once, to the end of the stream (those sent while she was between
/// servers are not recovered without history, and the hello said so).
#[tokio::test]
async fn a_session_resumes_on_a_second_chat_server_after_sigkill() {
    let redis = RedisServer::start();
    let flags = [
        "--token-secret",
        tests::TEST_TOKEN_SECRET,
        "--session-grace",
        "30",
    ];
    let mut s1 = ChatServer::start(&redis.url(), &flags);
    let s2 = ChatServer::start(&redis.url(), &flags);
    let (mut alice, hello, token, _, bob, _bob_rx) = alice_and_bob(&s1.url(), &s2.url()).await;
    let bob = Arc::new(bob);
    let talker = {
        let bob = bob.clone();
        tokio::spawn(async move {
            for i in 0..200u32 {
                say(&bob, &format!("n{i}")).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            say(&bob, "end").await;
        })
    };
    let before = lines(&mut alice, 20).await;
    let last = before.last().expect("lines").0;
    s1.kill();
    let (mut alice, restored) =
        open(&s2.url(), &token, Some((&hello.resume_credential, last))).await;
    assert_eq!(outcome(&restored), ResumeOutcome::Restored, "{restored:?}");
    assert_eq!(restored.connection_id, hello.connection_id);
    let mut after = Vec::new();
    loop {
        let line = lines(&mut alice, 1).await.remove(0);
        let end = line.1 == "end";
        after.push(line);
        if end {
            break;
        }
    }
    tokio::time::timeout(WAIT, talker)
        .await
        .expect("talker done")
        .expect("talker");
    let seqs: Vec<u64> = after.iter().map(|l| l.0).collect();
    assert_eq!(
        seqs,
        (last + 1..=last + after.len() as u64).collect::<Vec<_>>(),
        "numbered on after the last seq seen"
    );
    let numbers: Vec<u32> = before
        .iter()
        .chain(&after)
        .filter_map(|l| l.1.strip_prefix('n')?.parse().ok())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "in order, each once: {numbers:?}"
    );
}

/// The same with group history (`--history`) and alice on the Rust client, which
/// reconnects by itself through a transport that dials the first server, then the
/// second: after the SIGKILL she resumes on the second server with her last seq and
/// her groups' positions, and reads every line of the stream exactly once and in
/// order (the ones sent while she was between servers replayed there, then the live
/// ones), with no loss notice.
#[tokio::test]
async fn with_history_the_rust_client_moved_by_sigkill_reads_every_push_once_in_order() {
    let redis = RedisServer::start();
    let flags = [
        "--token-secret",
        tests::TEST_TOKEN_SECRET,
        "--session-grace",
        "30",
        "--history",
        "1000",
    ];
    let mut s1 = ChatServer::start(&redis.url(), &flags);
    let s2 = ChatServer::start(&redis.url(), &flags);
    let (alice, rec) =
        tests::joined_failover(&s1.url(), vec![s1.addr(), s2.addr()], "lobby", "alice").await;
    let first_server = alice.raw().info().server_id.clone();
    let (bob, _bob_rx) = tests::joined_via(&s1.url(), &s2.url(), "lobby", "bob").await;
    let talker = tokio::spawn(async move {
        for i in 0..300u32 {
            say(&bob, &format!("n{i}")).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        say(&bob, "end").await;
    });
    let from_bob = |seen: &[Seen]| -> Vec<String> {
        seen.iter()
            .filter_map(|s| match s {
                Seen::Message(m) if m.from == "bob" => Some(m.text.clone()),
                _ => None,
            })
            .collect()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while from_bob(&rec.seen()).len() < 30 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", rec.seen());
        rec.wait_for(rec.seen().len() + 1, WAIT).await;
    }
    s1.kill();
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while from_bob(&rec.seen()).last().map(String::as_str) != Some("end") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no end: {:?}, states {:?}",
            from_bob(&rec.seen()),
            rec.states.lock().expect("lock")
        );
        rec.wait_for(rec.seen().len() + 1, WAIT).await;
    }
    tokio::time::timeout(WAIT, talker)
        .await
        .expect("talker done")
        .expect("talker");
    let mut want: Vec<String> = (0..300).map(|i| format!("n{i}")).collect();
    want.push("end".into());
    assert_eq!(from_bob(&rec.seen()), want, "each line once, in order");
    assert!(rec.lost.lock().expect("lock").is_empty(), "{:?}", rec.lost);
    assert_ne!(
        alice.raw().info().server_id,
        first_server,
        "moved to the second server"
    );
    let states = rec.states.lock().expect("lock").clone();
    assert!(
        states.iter().any(|s| matches!(
            s,
            hub_client::ConnectionState::ResyncNeeded {
                outcome: ResumeOutcome::Restored,
                ..
            }
        )),
        "{states:?}"
    );
    // The seq went on without a gap or a repeat across the move.
    let seqs = rec.seqs.lock().expect("lock").clone();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}
