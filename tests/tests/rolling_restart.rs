//! A rolling restart under a continuous broadcast: two `chat-server` processes over
//! Redis with group history; a game loop (a `ChatHubEmitter` on a `RedisEmitter` in
//! another process's place: this test) broadcasts to a room all along; each server in
//! turn is stopped as a deploy does (SIGTERM: a goodbye `UNAVAILABLE` to its clients)
//! and started again. The Rust clients reconnect by themselves through a `Failover`
//! transport, resume on the server that is up (`RESTORED`), and each reads every push
//! of the broadcast exactly once and in order: zero loss for clients that resume
//! within the grace period.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use examples::chat::ChatMessage;
use examples::chat::chat_hub_emitter::ChatHubEmitter;
use hub_client::{ConnectionState, ResumeOutcome};
use hub_redis::{RedisEmitter, RedisProvider};
use test_support::{ChatServer, RedisServer};
use tests::{Recorder, Seen};

const WAIT: Duration = Duration::from_secs(10);
const HISTORY: &str = "10000";

/// The broadcast's lines `player` read, in order.
fn lines(rec: &Recorder) -> Vec<String> {
    rec.seen()
        .iter()
        .filter_map(|s| match s {
            Seen::Message(m) if m.from == "game" => Some(m.text.clone()),
            _ => None,
        })
        .collect()
}

/// Waits until `rec` has read the line `text`.
async fn until_read(rec: &Recorder, text: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while !lines(rec).iter().any(|l| l == text) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{text} not read: {:?}; states {:?}",
            lines(rec).last(),
            rec.states.lock().expect("lock")
        );
        rec.wait_for(rec.seen().len() + 1, within).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_a_broadcast_loses_nothing_for_resumed_clients() {
    let redis = RedisServer::start();
    let flags = [
        "--token-secret",
        tests::TEST_TOKEN_SECRET,
        "--session-grace",
        "30",
        "--history",
        HISTORY,
    ];
    let mut s1 = ChatServer::start(&redis.url(), &flags);
    let mut s2 = ChatServer::start(&redis.url(), &flags);
    let (alice, alice_rec) =
        tests::joined_failover(&s1.url(), vec![s1.addr(), s2.addr()], "lobby", "alice").await;
    let (carol, carol_rec) =
        tests::joined_failover(&s1.url(), vec![s2.addr(), s1.addr()], "lobby", "carol").await;

    // The game loop: the same history options as the servers, so its pushes take the
    // room's offsets and go into its history.
    let emitter = RedisEmitter::connect_with(
        RedisProvider::builder()
            .url(redis.url())
            .history(HISTORY.parse().expect("n"), Duration::from_secs(120)),
    )
    .await
    .expect("emitter");
    let game = ChatHubEmitter::new(emitter).named("game-loop");
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let ticker = {
        let (sent, stop) = (sent.clone(), stop.clone());
        tokio::spawn(async move {
            let room = game.group("lobby").expect("group");
            let mut n = 0u64;
            loop {
                let line = ChatMessage {
                    room: "lobby".into(),
                    from: "game".into(),
                    text: format!("t{n}"),
                };
                room.clone().on_message(line).await.expect("broadcast");
                sent.store(n + 1, Ordering::Release);
                n += 1;
                tokio::select! {
                    _ = stop.notified() => return n,
                    _ = tokio::time::sleep(Duration::from_millis(4)) => {}
                }
            }
        })
    };
    until_read(&alice_rec, "t20", WAIT).await;
    until_read(&carol_rec, "t20", WAIT).await;

    // Deploy: s1 goes down and comes back, then s2.
    for (which, server) in [("s1", &mut s1), ("s2", &mut s2)] {
        let before = sent.load(Ordering::Acquire);
        server.restart();
        // The broadcast goes on meanwhile; both players catch up with it.
        let target = format!("t{}", before + 100);
        let deadline = tokio::time::Instant::now() + WAIT * 3;
        while sent.load(Ordering::Acquire) < before + 101 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the game loop stalled after {which}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        until_read(&alice_rec, &target, WAIT * 3).await;
        until_read(&carol_rec, &target, WAIT * 3).await;
    }
    stop.notify_one();
    let total = tokio::time::timeout(WAIT, ticker)
        .await
        .expect("the game loop ends")
        .expect("the game loop");
    let last = format!("t{}", total - 1);
    let want: Vec<String> = (0..total).map(|n| format!("t{n}")).collect();
    for (name, client, rec) in [("alice", &alice, &alice_rec), ("carol", &carol, &carol_rec)] {
        until_read(rec, &last, WAIT * 3).await;
        assert_eq!(lines(rec), want, "{name}: each line once, in order");
        assert!(
            rec.lost.lock().expect("lock").is_empty(),
            "{name}: {:?}",
            rec.lost
        );
        // Each moved at least once, and every move restored the session.
        let states = rec.states.lock().expect("lock").clone();
        let restored = states
            .iter()
            .filter(|s| {
                matches!(
                    s,
                    ConnectionState::ResyncNeeded {
                        outcome: ResumeOutcome::Restored,
                        ..
                    }
                )
            })
            .count();
        assert!(restored >= 1, "{name}: {states:?}");
        assert!(
            !states.iter().any(|s| matches!(
                s,
                ConnectionState::ResyncNeeded { outcome, .. } if *outcome != ResumeOutcome::Restored
            )),
            "{name}: a resume failed: {states:?}"
        );
        assert!(client.raw().state().is_connected(), "{name}");
    }
}
