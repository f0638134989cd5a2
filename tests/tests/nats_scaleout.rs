//! The chat hub scaled out over NATS: what is specific to NATS (authentication, a
//! stalled NATS, `max_payload`, `chat-server` processes). What every backplane must do
//! is the conformance suite's (`conformance_nats.rs`, `conformance_nats_cluster.rs`).
//! Every server is real: in-process `TestServer`s (each with its own `NatsProvider`)
//! or `chat-server` processes, `nats-server`s on free ports.
//!
//! The `chat_server_processes` test needs the binaries: `cargo build --workspace --bins`.

use std::sync::Arc;
use std::time::Duration;

use examples::chat::{SayRequest, WhisperRequest};
use hub_nats::{ConnectError, NatsProvider};
use hub_server::HubConfig;
use test_support::{ChatServer, NatsOptions, NatsServer};
use tests::{Recorder, Seen, TestServer, join_notice, joined, said};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

async fn provider(url: &str) -> NatsProvider {
    NatsProvider::connect(url).await.expect("connect to NATS")
}

async fn hub(provider: NatsProvider) -> TestServer {
    TestServer::start(Arc::new(provider), HubConfig::default()).await
}

/// Waits for `n` pushes and checks the last one.
async fn expect_nth(rx: &Recorder, n: usize, what: Seen) {
    let seen = rx.wait_for(n, WAIT).await;
    assert!(seen.len() >= n, "expected {n} pushes, got {seen:?}");
    assert_eq!(seen[n - 1], what, "push #{n} in {seen:?}");
}

/// Polls a server's member count of `room` until it is `n`.
async fn count_becomes(server: &TestServer, room: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let got = server.handle.member_count(room).await;
        if matches!(got, Ok(c) if c == n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "member count of {room} stayed {got:?}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn user_password_and_token_auth() {
    let with_user = NatsServer::start_with(NatsOptions {
        user: Some(("hub".into(), "s3cret".into())),
        token: None,
        ..Default::default()
    });
    let with_token = NatsServer::start_with(NatsOptions {
        user: None,
        token: Some("t0ken".into()),
        ..Default::default()
    });
    let (up, tp) = (with_user.port(), with_token.port());

    let options = |o: hub_nats::async_nats::ConnectOptions| async move {
        NatsProvider::builder()
            .options(o)
            .connect(&format!("nats://127.0.0.1:{up}"))
            .await
            .expect("connect")
    };
    let a = hub(provider(&format!("nats://hub:s3cret@127.0.0.1:{up}")).await).await;
    let b = hub(options(
        hub_nats::async_nats::ConnectOptions::with_user_and_password("hub".into(), "s3cret".into()),
    )
    .await)
    .await;
    let c = hub(provider(&format!("nats://t0ken@127.0.0.1:{tp}")).await).await;
    let d = hub(NatsProvider::builder()
        .options(hub_nats::async_nats::ConnectOptions::with_token(
            "t0ken".into(),
        ))
        .connect(&format!("nats://127.0.0.1:{tp}"))
        .await
        .expect("connect"))
    .await;
    for (x, y) in [(&a, &b), (&c, &d)] {
        let (one, _) = joined(&x.url(), "room", "one").await;
        let (_two, two_rx) = joined(&y.url(), "room", "two").await;
        one.say(SayRequest {
            text: "authenticated".into(),
        })
        .await
        .unwrap();
        expect_nth(&two_rx, 1, said("room", "one", "authenticated")).await;
    }

    for url in [
        format!("nats://127.0.0.1:{up}"),
        format!("nats://hub:wrong@127.0.0.1:{up}"),
        format!("nats://127.0.0.1:{tp}"),
        format!("nats://wrong@127.0.0.1:{tp}"),
    ] {
        let err = NatsProvider::connect(&url).await.unwrap_err();
        assert!(matches!(err, ConnectError::Connect { .. }), "{url}: {err}");
        assert!(
            !err.to_string().contains("wrong"),
            "credentials in an error: {err}"
        );
    }
}

#[tokio::test]
async fn chat_server_processes() {
    let nats = NatsServer::start();
    // The same token secret on both: bob logs in on one and connects to the other.
    let secret = ["--token-secret", tests::TEST_TOKEN_SECRET];
    let one = ChatServer::start(&nats.url(), &secret);
    let mut two = ChatServer::start(&nats.url(), &secret);
    let (alice, alice_rx) = joined(&one.url(), "lobby", "alice").await;
    let (bob, _bob_rx) = tests::joined_via(&one.url(), &two.url(), "lobby", "bob").await;
    expect_nth(&alice_rx, 1, join_notice("lobby", "bob")).await;

    bob.say(SayRequest {
        text: "hello from two".into(),
    })
    .await
    .unwrap();
    expect_nth(&alice_rx, 2, said("lobby", "bob", "hello from two")).await;
    let members = alice.members().await.unwrap();
    assert_eq!(members.members, vec!["alice", "bob"]);
    assert_eq!(members.count, 2);
    let members = bob.members().await.unwrap();
    assert_eq!(members.count, 2);

    // Process two crashes (SIGKILL): bob vanishes from the counts on one.
    two.kill();
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        // Until the dead server is presumed dead, a count cannot be sure: Unavailable.
        let m = match alice.members().await {
            Ok(m) => m,
            Err(e) if e.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => panic!("members: {e}"),
        };
        if m.members == vec!["alice"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob still counted: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A provider with quick heartbeats (200 ms: a silent server is presumed dead after
/// 600 ms), so that a stall longer than that is a real test of "our silence is not
/// their death".
async fn quick_beats(url: &str) -> NatsProvider {
    NatsProvider::builder()
        .options(
            hub_nats::async_nats::ConnectOptions::new()
                .reconnect_delay_callback(|_| Duration::from_millis(100)),
        )
        .heartbeat_interval(Duration::from_millis(200))
        .connect(url)
        .await
        .expect("connect to NATS")
}

/// A stalled NATS (`SIGSTOP` for 2 s) gives no wrong answer: counts and member lists
/// fail with UNAVAILABLE (the other servers cannot be heard), a whisper to a user on
/// another server is UNAVAILABLE, not NOT_FOUND; nobody is presumed dead for the
/// stall; once NATS answers, the counts are whole again.
#[tokio::test]
async fn a_stalled_nats_answers_unavailable_never_a_wrong_count() {
    let nats = NatsServer::start();
    let a = hub(quick_beats(&nats.url()).await).await;
    let b = hub(quick_beats(&nats.url()).await).await;
    let (alice, alice_rx) = joined(&a.url(), "room", "alice").await;
    let (_ann, _) = joined(&a.url(), "room", "ann").await;
    let (_bob, _) = joined(&b.url(), "room", "bob").await;
    let (_bea, _) = joined(&b.url(), "room", "bea").await;
    count_becomes(&a, "room", 4).await;
    let seen = alice_rx.wait_for(3, WAIT).await;

    let paused = nats.pause();
    let members = alice.members().await;
    let code = members.as_ref().map_err(|e| e.code());
    assert_eq!(code.err(), Some(Code::Unavailable), "{members:?}");
    let whisper = alice
        .whisper(WhisperRequest {
            user: "bob".into(),
            text: "psst".into(),
        })
        .await;
    assert_eq!(
        whisper.as_ref().map_err(|e| e.code()).err(),
        Some(Code::Unavailable),
        "{whisper:?}"
    );
    println!(
        "NATS stalled: members -> {:?}; whisper to a user elsewhere -> {:?}",
        members.err().map(|e| e.code()),
        whisper.err().map(|e| e.code())
    );
    // A wait for time to pass: the stall lasts longer than 3 heartbeat intervals
    // (600 ms), and still nobody is presumed dead for our silence.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    paused.resume();
    count_becomes(&a, "room", 4).await;
    count_becomes(&b, "room", 4).await;
    assert_eq!(a.handle.metrics().backplane_members_lost, 0);
    assert_eq!(b.handle.metrics().backplane_members_lost, 0);
    // No leave went out for anyone: the next push alice gets is the say after it.
    let (carol, _) = joined(&b.url(), "room", "carol").await;
    carol
        .say(SayRequest {
            text: "barrier".into(),
        })
        .await
        .unwrap();
    let after = alice_rx.wait_for(seen.len() + 2, WAIT).await;
    assert_eq!(
        after[seen.len()..],
        [
            join_notice("room", "carol"),
            said("room", "carol", "barrier")
        ]
    );
}

/// On a NATS whose `max_payload` is 64 KiB, a say the backplane cannot carry is
/// refused with OUT_OF_RANGE (not retryable) instead of UNAVAILABLE, and one just
/// within the limit the hub enforces reaches the other server.
#[tokio::test]
async fn pushes_beyond_the_nats_payload_limit_are_out_of_range() {
    let nats = NatsServer::start_with(NatsOptions {
        max_payload: Some(64 * 1024),
        ..Default::default()
    });
    let a = hub(provider(&nats.url()).await).await;
    let b = hub(provider(&nats.url()).await).await;
    let (alice, _) = joined(&a.url(), "room", "alice").await;
    let (_bob, bob_rx) = joined(&b.url(), "room", "bob").await;

    let big = alice
        .say(SayRequest {
            text: "x".repeat(100 * 1024),
        })
        .await;
    assert_eq!(
        big.as_ref().map_err(|e| e.code()).err(),
        Some(Code::OutOfRange),
        "{big:?}"
    );
    // Within the limit (the frame has a few bytes of its own around the text).
    let fits = "y".repeat(60 * 1024);
    alice
        .say(SayRequest { text: fits.clone() })
        .await
        .expect("a say within the limit");
    expect_nth(&bob_rx, 1, said("room", "alice", &fits)).await;
}
