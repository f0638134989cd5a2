//! The chat hub scaled out over NATS: several hub servers (in-process `TestServer`s,
//! each with its own `NatsProvider`, or `chat-server` processes), clients on each,
//! real `nats-server`s (single, three-node cluster, with auth) on free ports.
//!
//! The `chat_server_processes` test needs the binaries: `cargo build --workspace --bins`.

use std::sync::Arc;
use std::time::Duration;

use examples::chat::chat_hub_client::ChatHubClient;
use examples::chat::{ChatMessage, SayRequest, WhisperRequest};
use hub_nats::{ConnectError, NatsProvider};
use hub_server::{ConnectionId, HubConfig};
use test_support::{ChatServer, NatsCluster, NatsOptions, NatsServer};
use tests::{CrashableServer, Recorder, Seen, TestServer, join_notice, joined, said};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

async fn provider(url: &str) -> NatsProvider {
    NatsProvider::connect(url).await.expect("connect to NATS")
}

/// A provider that retries quickly after losing NATS (tests restart it).
async fn quick_provider(url: &str) -> NatsProvider {
    NatsProvider::builder()
        .options(
            hub_nats::async_nats::ConnectOptions::new()
                .reconnect_delay_callback(|_| Duration::from_millis(100)),
        )
        .connect(url)
        .await
        .expect("connect to NATS")
}

async fn hub(provider: NatsProvider) -> TestServer {
    TestServer::start(Arc::new(provider), HubConfig::default()).await
}

fn id_of(c: &ChatHubClient) -> ConnectionId {
    c.connection_id().parse().expect("connection id")
}

fn left(room: &str, user: &str) -> Seen {
    Seen::Leave(examples::chat::UserEvent {
        room: room.into(),
        user: user.into(),
    })
}

fn whispered(room: &str, from: &str, text: &str) -> Seen {
    Seen::Whisper(ChatMessage {
        room: room.into(),
        from: from.into(),
        text: text.into(),
    })
}

/// Waits for `n` pushes and checks the last one.
async fn expect_nth(rx: &Recorder, n: usize, what: Seen) {
    let seen = rx.wait_for(n, WAIT).await;
    assert!(seen.len() >= n, "expected {n} pushes, got {seen:?}");
    assert_eq!(seen[n - 1], what, "push #{n} in {seen:?}");
}

/// Checks nothing arrived beyond the first `n` pushes.
async fn no_more(rx: &Recorder, n: usize) {
    let seen = rx.settle(QUIET).await;
    assert_eq!(seen.len(), n, "unexpected pushes: {seen:?}");
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
async fn every_target_reaches_members_on_other_servers() {
    let nats = NatsServer::start();
    let a = hub(provider(&nats.url()).await).await;
    let b = hub(provider(&nats.url()).await).await;
    let c = hub(provider(&nats.url()).await).await;

    let (alice, alice_rx) = joined(&a.url(), "lobby", "alice").await;
    let (bob, bob_rx) = joined(&b.url(), "lobby", "bob").await;
    expect_nth(&alice_rx, 1, join_notice("lobby", "bob")).await;
    let (carol, carol_rx) = joined(&c.url(), "lobby", "carol").await;
    expect_nth(&alice_rx, 2, join_notice("lobby", "carol")).await;
    expect_nth(&bob_rx, 1, join_notice("lobby", "carol")).await;
    let (dave, dave_rx) = joined(&b.url(), "lobby", "dave").await;
    expect_nth(&alice_rx, 3, join_notice("lobby", "dave")).await;
    expect_nth(&bob_rx, 2, join_notice("lobby", "dave")).await;
    expect_nth(&carol_rx, 1, join_notice("lobby", "dave")).await;

    // except (say: everyone but the sender), from B to A, B (dave) and C.
    bob.say(SayRequest {
        text: "hi all".into(),
    })
    .await
    .unwrap();
    expect_nth(&alice_rx, 4, said("lobby", "bob", "hi all")).await;
    expect_nth(&carol_rx, 2, said("lobby", "bob", "hi all")).await;
    expect_nth(&dave_rx, 1, said("lobby", "bob", "hi all")).await;
    no_more(&bob_rx, 2).await;

    // single user (whisper): from A to carol on C only.
    alice
        .whisper(WhisperRequest {
            user: "carol".into(),
            text: "psst".into(),
        })
        .await
        .unwrap();
    expect_nth(&carol_rx, 3, whispered("lobby", "alice", "psst")).await;
    // A user with connections on two servers gets it on both.
    let (carol2, carol2_rx) = joined(&a.url(), "lobby", "carol").await;
    for (rx, n) in [(&alice_rx, 5), (&bob_rx, 3), (&carol_rx, 4), (&dave_rx, 2)] {
        expect_nth(rx, n, join_notice("lobby", "carol")).await;
    }
    bob.whisper(WhisperRequest {
        user: "carol".into(),
        text: "both".into(),
    })
    .await
    .unwrap();
    expect_nth(&carol_rx, 5, whispered("lobby", "bob", "both")).await;
    expect_nth(&carol2_rx, 1, whispered("lobby", "bob", "both")).await;
    // Whispering to nobody is refused after asking every server.
    let err = alice
        .whisper(WhisperRequest {
            user: "zed".into(),
            text: "?".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // only: a push from A's handle to carol's connection on C.
    let d = a
        .handle
        .group("lobby")
        .unwrap()
        .only([id_of(&carol)])
        .on_message(ChatMessage {
            room: "lobby".into(),
            from: "server".into(),
            text: "just you".into(),
        })
        .await
        .unwrap();
    assert!(d.published);
    expect_nth(&carol_rx, 6, said("lobby", "server", "just you")).await;
    // A direct push to connections on B and C, in no particular group.
    a.handle
        .connections([id_of(&dave), id_of(&carol2)])
        .on_whisper(ChatMessage {
            room: String::new(),
            from: "server".into(),
            text: "direct".into(),
        })
        .await
        .unwrap();
    expect_nth(&dave_rx, 3, whispered("", "server", "direct")).await;
    expect_nth(&carol2_rx, 2, whispered("", "server", "direct")).await;

    // all (on_leave after leaving): dave leaves on B, everyone else hears it.
    dave.leave().await.unwrap();
    expect_nth(&alice_rx, 6, left("lobby", "dave")).await;
    expect_nth(&bob_rx, 4, left("lobby", "dave")).await;
    expect_nth(&carol_rx, 7, left("lobby", "dave")).await;
    expect_nth(&carol2_rx, 3, left("lobby", "dave")).await;

    let members = alice.members().await.unwrap();
    assert_eq!(members.members, vec!["alice", "bob", "carol", "carol"]);
    assert_eq!(members.count, 4);

    for (rx, n) in [
        (&alice_rx, 6),
        (&bob_rx, 4),
        (&carol_rx, 7),
        (&carol2_rx, 3),
        (&dave_rx, 3),
    ] {
        no_more(rx, n).await;
    }
}

#[tokio::test]
async fn leaving_and_disconnecting_stop_deliveries() {
    let nats = NatsServer::start();
    let a = hub(provider(&nats.url()).await).await;
    let b = hub(provider(&nats.url()).await).await;
    let (alice, alice_rx) = joined(&a.url(), "room", "alice").await;
    let (bob, bob_rx) = joined(&b.url(), "room", "bob").await;
    expect_nth(&alice_rx, 1, join_notice("room", "bob")).await;
    count_becomes(&a, "room", 2).await;

    bob.leave().await.unwrap();
    expect_nth(&alice_rx, 2, left("room", "bob")).await;
    count_becomes(&a, "room", 1).await;
    count_becomes(&b, "room", 1).await;
    // B has no member in the room any more: it is unsubscribed, NATS sends it nothing.
    let received = b.handle.metrics().backplane_received;
    alice
        .say(SayRequest {
            text: "anyone?".into(),
        })
        .await
        .unwrap();
    no_more(&bob_rx, 0).await;
    assert_eq!(
        b.handle.metrics().backplane_received,
        received,
        "B still receives the room's traffic"
    );

    // Back in: delivered again.
    bob.join(examples::chat::JoinRequest {
        room: "room".into(),
    })
    .await
    .unwrap();
    expect_nth(&alice_rx, 3, join_notice("room", "bob")).await;
    alice
        .say(SayRequest {
            text: "welcome back".into(),
        })
        .await
        .unwrap();
    expect_nth(&bob_rx, 1, said("room", "alice", "welcome back")).await;

    // A client that goes away without leaving, alone on its server: the others are
    // told, counts drop, and its server stops receiving the room's traffic.
    let c = hub(provider(&nats.url()).await).await;
    let (carol, carol_rx) = joined(&c.url(), "room", "carol").await;
    expect_nth(&alice_rx, 4, join_notice("room", "carol")).await;
    expect_nth(&bob_rx, 2, join_notice("room", "carol")).await;
    count_becomes(&a, "room", 3).await;
    alice
        .say(SayRequest {
            text: "hi carol".into(),
        })
        .await
        .unwrap();
    expect_nth(&bob_rx, 3, said("room", "alice", "hi carol")).await;
    expect_nth(&carol_rx, 1, said("room", "alice", "hi carol")).await;
    drop(carol);
    expect_nth(&alice_rx, 5, left("room", "carol")).await;
    expect_nth(&bob_rx, 4, left("room", "carol")).await;
    count_becomes(&a, "room", 2).await;
    assert_eq!(c.handle.connection_count(), 0);
    let received = c.handle.metrics().backplane_received;
    assert!(
        received >= 1,
        "C got the room's traffic while carol was there"
    );
    alice
        .say(SayRequest {
            text: "bye carol".into(),
        })
        .await
        .unwrap();
    expect_nth(&bob_rx, 5, said("room", "alice", "bye carol")).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        c.handle.metrics().backplane_received,
        received,
        "C still receives the room's traffic"
    );
    let members = alice.members().await.unwrap();
    assert_eq!(members.members, vec!["alice", "bob"]);
}

#[tokio::test]
async fn member_counts_add_up_across_servers() {
    let nats = NatsServer::start();
    let a = hub(provider(&nats.url()).await).await;
    let b = hub(provider(&nats.url()).await).await;
    let c = hub(provider(&nats.url()).await).await;
    let _clients = [
        joined(&a.url(), "room", "ann").await,
        joined(&a.url(), "room", "amy").await,
        joined(&b.url(), "room", "ben").await,
        joined(&b.url(), "other", "ola").await,
        joined(&a.url(), "room", "ben").await,
    ];
    for s in [&a, &b, &c] {
        count_becomes(s, "room", 4).await;
        count_becomes(s, "other", 1).await;
        count_becomes(s, "empty", 0).await;
        let mut users: Vec<String> = s
            .handle
            .members("room")
            .await
            .unwrap()
            .into_iter()
            .filter_map(|m| m.user)
            .collect();
        users.sort();
        assert_eq!(users, vec!["amy", "ann", "ben", "ben"]);
        assert_eq!(s.handle.user_connections("ben").await.unwrap(), 2);
    }
}

#[tokio::test]
async fn a_crashed_servers_members_vanish() {
    let nats = NatsServer::start();
    let a = hub(provider(&nats.url()).await).await;
    let b = hub(provider(&nats.url()).await).await;
    let url = nats.url();
    let c = CrashableServer::start(
        move || async move { Arc::new(provider(&url).await) as Arc<dyn hub_server::GroupProvider> },
        HubConfig::default(),
    )
    .await;
    let (alice, alice_rx) = joined(&a.url(), "room", "alice").await;
    let (_bob, bob_rx) = joined(&b.url(), "room", "bob").await;
    let (_carol, _) = joined(&c.url(), "room", "carol").await;
    let (_cy, _) = joined(&c.url(), "room", "cy").await;
    count_becomes(&a, "room", 4).await;
    count_becomes(&b, "room", 4).await;
    assert_eq!(alice_rx.wait_for(3, WAIT).await.len(), 3);

    c.crash();
    // Documented bound: the next count after the crash no longer has them (it waits
    // at most the roll-call timeout, 500 ms, for the silent server).
    let started = tokio::time::Instant::now();
    count_becomes(&a, "room", 2).await;
    count_becomes(&b, "room", 2).await;
    assert!(started.elapsed() < WAIT, "took {:?}", started.elapsed());
    let members = alice.members().await.unwrap();
    assert_eq!(members.members, vec!["alice", "bob"]);
    // The survivors still talk.
    alice
        .say(SayRequest {
            text: "still here".into(),
        })
        .await
        .unwrap();
    let seen = bob_rx.wait_for(3, WAIT).await;
    assert!(
        seen.contains(&said("room", "alice", "still here")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn nats_restart_in_the_middle_of_traffic() {
    let mut nats = NatsServer::start();
    let a = hub(quick_provider(&nats.url()).await).await;
    let b = hub(quick_provider(&nats.url()).await).await;
    let (alice, alice_rx) = joined(&a.url(), "room", "alice").await;
    let (bob, bob_rx) = joined(&b.url(), "room", "bob").await;

    // alice talks all along; each say's outcome is kept.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let talker = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for i in 0.. {
            if *stop_rx.borrow_and_update() {
                break;
            }
            let r = alice
                .say(SayRequest {
                    text: format!("m{i}"),
                })
                .await;
            outcomes.push(r.map_err(|e| e.code()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (outcomes, alice)
    });
    let first = bob_rx.wait_for(5, WAIT).await;
    assert_eq!(first.len(), 5, "traffic flows before the outage");

    nats.kill();
    // While NATS is down, sends fail (and are counted), the servers stay up.
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.handle.metrics().backplane_publish_failures < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no publish failure reported while NATS is down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = bob.members().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    nats.restart();
    let restarted_at = bob_rx.seen().len();
    // Flowing again, without restarting either hub server.
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while bob_rx.seen().len() < restarted_at + 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no traffic after the restart: {:?}",
            bob_rx.seen()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let (outcomes, _alice) = talker.await.unwrap();

    for s in [&a, &b] {
        let m = s.handle.metrics();
        assert!(m.backplane_reconnects >= 1, "{m:?}");
    }
    let failed: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| i)
        .collect();
    assert!(!failed.is_empty());
    assert!(
        outcomes
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(Code::Unavailable))),
        "{outcomes:?}"
    );
    // What the sender was told failed did not arrive.
    let seen = bob_rx.seen();
    for i in &failed {
        assert!(
            !seen.contains(&said("room", "alice", &format!("m{i}"))),
            "m{i} failed yet arrived"
        );
    }
    // Both sides are subscribed again: bob's messages reach alice, counts add up.
    count_becomes(&a, "room", 2).await;
    bob.say(SayRequest {
        text: "back".into(),
    })
    .await
    .unwrap();
    let alice_seen = alice_rx.wait_for(2, WAIT).await;
    assert!(
        alice_seen.contains(&said("room", "bob", "back")),
        "{alice_seen:?}"
    );
    assert!(a.handle.metrics().backplane_received >= 1);
}

#[tokio::test]
async fn three_node_cluster() {
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    // Each hub server on a different node; B prefers node 2 and may fail over to node 3.
    let a = hub(provider(&urls[0]).await).await;
    let b = hub(NatsProvider::builder()
        .options(
            hub_nats::async_nats::ConnectOptions::new()
                .retain_servers_order()
                .reconnect_delay_callback(|_| Duration::from_millis(100)),
        )
        .connect(&format!("{},{}", urls[1], urls[2]))
        .await
        .expect("connect to NATS"))
    .await;
    let c = hub(provider(&urls[2]).await).await;
    let (alice, alice_rx) = joined(&a.url(), "room", "alice").await;
    let (bob, bob_rx) = joined(&b.url(), "room", "bob").await;
    let (carol, carol_rx) = joined(&c.url(), "room", "carol").await;
    expect_nth(&alice_rx, 2, join_notice("room", "carol")).await;
    expect_nth(&bob_rx, 1, join_notice("room", "carol")).await;
    for s in [&a, &b, &c] {
        count_becomes(s, "room", 3).await;
    }

    alice
        .say(SayRequest {
            text: "via node 1".into(),
        })
        .await
        .unwrap();
    expect_nth(&bob_rx, 2, said("room", "alice", "via node 1")).await;
    expect_nth(&carol_rx, 1, said("room", "alice", "via node 1")).await;
    carol
        .whisper(WhisperRequest {
            user: "bob".into(),
            text: "via node 3".into(),
        })
        .await
        .unwrap();
    expect_nth(&bob_rx, 3, whispered("room", "carol", "via node 3")).await;

    // B's node dies: B reconnects to another node, resubscribes, and is reachable again.
    cluster.nodes()[1].kill();
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while b.handle.metrics().backplane_reconnects == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B did not fail over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = bob_rx.seen().len();
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    let mut i = 0;
    while bob_rx.seen().len() == n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob unreachable after failover"
        );
        alice
            .say(SayRequest {
                text: format!("after failover {i}"),
            })
            .await
            .unwrap();
        i += 1;
        bob_rx.wait_for(n + 1, Duration::from_millis(300)).await;
    }
    bob.say(SayRequest {
        text: "I'm back".into(),
    })
    .await
    .unwrap();
    let seen = carol_rx.wait_for(2 + i, WAIT).await;
    assert!(seen.contains(&said("room", "bob", "I'm back")), "{seen:?}");
    count_becomes(&a, "room", 3).await;
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
    // Longer than 3 heartbeats: still nobody presumed dead for our silence.
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

/// A crashed server's members get `on_leave` on the other servers (the chat hub's
/// `on_members_lost`), once, after they stopped being counted.
#[tokio::test]
async fn a_crashed_servers_members_get_on_leave_everywhere() {
    let nats = NatsServer::start();
    let a = hub(quick_beats(&nats.url()).await).await;
    let b = hub(quick_beats(&nats.url()).await).await;
    let url = nats.url();
    let c =
        CrashableServer::start(
            move || async move {
                Arc::new(quick_beats(&url).await) as Arc<dyn hub_server::GroupProvider>
            },
            HubConfig::default(),
        )
        .await;
    let (alice, alice_rx) = joined(&a.url(), "room", "alice").await;
    let (bob, bob_rx) = joined(&b.url(), "room", "bob").await;
    let (_carol, _) = joined(&c.url(), "room", "carol").await;
    let (_cy, _) = joined(&c.url(), "hall", "cy").await;
    count_becomes(&a, "room", 3).await;
    alice_rx.wait_for(2, WAIT).await;
    bob_rx.wait_for(1, WAIT).await;
    let (a0, b0) = (alice_rx.seen().len(), bob_rx.seen().len());

    c.crash();
    let crashed = tokio::time::Instant::now();
    let seen = alice_rx.wait_for(a0 + 1, WAIT).await;
    assert_eq!(seen.get(a0), Some(&left("room", "carol")), "{seen:?}");
    let took = crashed.elapsed();
    assert_eq!(
        alice.members().await.expect("members").members,
        ["alice", "bob"]
    );
    let seen = bob_rx.wait_for(b0 + 1, WAIT).await;
    assert_eq!(seen.get(b0), Some(&left("room", "carol")), "{seen:?}");
    // Once: bob says something, and nothing else came before it.
    bob.say(SayRequest {
        text: "barrier".into(),
    })
    .await
    .unwrap();
    let seen = alice_rx.wait_for(a0 + 2, WAIT).await;
    assert_eq!(seen[a0 + 1..], [said("room", "bob", "barrier")]);
    assert_eq!(a.handle.metrics().backplane_members_lost, 1);
    assert_eq!(b.handle.metrics().backplane_members_lost, 1);
    println!("NATS: on_leave for a crashed server's member after {took:?} (heartbeat 200 ms)");
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
