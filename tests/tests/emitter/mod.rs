//! What every backplane's emitter must do, written once: a `ChatHubEmitter` (a
//! process that is not a hub server) reaching members on two chat servers with every
//! target mode, a user and connections, and its commands (disconnect a user or a
//! connection, remove a user from a room). `emitter_redis.rs` and `emitter_nats.rs`
//! run these on real Redis and NATS.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use examples::chat::chat_hub_client::ChatHubClient;
use examples::chat::chat_hub_emitter::ChatHubEmitter;
use examples::chat::{ChatMessage, SayRequest, UserEvent};
use hub_server::ConnectionId;
use tests::{Recorder, Seen, TestServer, client, joined};
use tonic::Code;

/// Generous: the machine is shared and slow at times.
pub const WAIT: Duration = Duration::from_secs(10);

fn id(c: &ChatHubClient) -> ConnectionId {
    c.connection_id().parse().expect("connection id")
}

/// A push of the game loop (`from` "game").
fn game(room: &str, text: &str) -> ChatMessage {
    ChatMessage {
        room: room.into(),
        from: "game".into(),
        text: text.into(),
    }
}

fn said(room: &str, text: &str) -> Seen {
    Seen::Message(game(room, text))
}

fn whispered(text: &str) -> Seen {
    Seen::Whisper(game("", text))
}

fn left(room: &str, user: &str) -> Seen {
    Seen::Leave(UserEvent {
        room: room.into(),
        user: user.into(),
    })
}

/// What `rx` got from the game loop (join and leave notices left out), in order.
fn from_game(rx: &Recorder) -> Vec<Seen> {
    rx.seen()
        .into_iter()
        .filter(|s| matches!(s, Seen::Message(m) | Seen::Whisper(m) if m.from == "game"))
        .collect()
}

/// Waits until `rx` saw every push of `want` (in any order) and returns what it got
/// from the game loop.
async fn wait_for_all(rx: &Recorder, want: &[Seen]) -> Vec<Seen> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = from_game(rx);
        if want.iter().all(|w| got.contains(w)) {
            return got;
        }
        let now = tokio::time::Instant::now();
        assert!(
            now < deadline,
            "within {WAIT:?}: want {want:?}, got {got:?}"
        );
        rx.wait_for(rx.seen().len() + 1, deadline - now).await;
    }
}

/// The same pushes, whatever the order.
fn same_set(mut a: Vec<Seen>, mut b: Vec<Seen>) -> bool {
    let key = |s: &Seen| format!("{s:?}");
    a.sort_by_key(key);
    b.sort_by_key(key);
    a == b
}

/// Every target mode, a user, one connection and a list of connections, across two
/// servers. Nothing extra arrives: the last push on every channel used (the room, a
/// user's group, each server's node channel) is an end marker, and pushes of one
/// emitter on one channel arrive in order.
pub async fn every_target_mode(a: &TestServer, b: &TestServer, em: &ChatHubEmitter) {
    let (alice, alice_rx) = joined(&a.url(), "lobby", "alice").await;
    let (bob, bob_rx) = joined(&b.url(), "lobby", "bob").await;
    let (carol, carol_rx) = joined(&b.url(), "lobby", "carol").await;
    // Not in the room: reached as a user and by connection id only.
    let (dave, dave_rx) = client(&a.url(), "dave").await;
    let (alice_id, bob_id, carol_id, dave_id) = (id(&alice), id(&bob), id(&carol), id(&dave));

    let room = em.group("lobby").unwrap();
    room.clone().on_message(game("lobby", "all")).await.unwrap();
    room.clone()
        .except([bob_id])
        .on_message(game("lobby", "all but bob"))
        .await
        .unwrap();
    room.clone()
        .only([alice_id, carol_id])
        .on_message(game("lobby", "alice and carol"))
        .await
        .unwrap();
    em.user("dave")
        .unwrap()
        .on_whisper(game("", "to dave"))
        .await
        .unwrap();
    em.connection(alice_id)
        .on_whisper(game("", "to alice's connection"))
        .await
        .unwrap();
    em.connections([bob_id, dave_id])
        .on_whisper(game("", "to bob and dave"))
        .await
        .unwrap();
    // End markers on every channel.
    room.on_message(game("lobby", "end")).await.unwrap();
    em.user("dave")
        .unwrap()
        .on_whisper(game("", "end"))
        .await
        .unwrap();
    em.connections([alice_id, bob_id, carol_id, dave_id])
        .on_whisper(game("", "end"))
        .await
        .unwrap();

    let room_end = said("lobby", "end");
    let node_end = whispered("end");
    let alice_want = vec![
        said("lobby", "all"),
        said("lobby", "all but bob"),
        said("lobby", "alice and carol"),
        room_end.clone(),
        whispered("to alice's connection"),
        node_end.clone(),
    ];
    let bob_want = vec![
        said("lobby", "all"),
        room_end.clone(),
        whispered("to bob and dave"),
        node_end.clone(),
    ];
    let carol_want = vec![
        said("lobby", "all"),
        said("lobby", "all but bob"),
        said("lobby", "alice and carol"),
        room_end.clone(),
        node_end.clone(),
    ];
    let dave_want = vec![
        whispered("to dave"),
        whispered("end"),
        whispered("to bob and dave"),
        node_end.clone(),
    ];
    for (who, rx, want) in [
        ("alice", &alice_rx, alice_want),
        ("bob", &bob_rx, bob_want),
        ("carol", &carol_rx, carol_want),
        ("dave", &dave_rx, dave_want),
    ] {
        let got = wait_for_all(rx, &want).await;
        assert!(same_set(got.clone(), want), "{who}: {got:?}");
    }
    // In order on one channel: the room's pushes as the emitter sent them.
    for rx in [&alice_rx, &carol_rx] {
        let order: Vec<Seen> = from_game(rx)
            .into_iter()
            .filter(|s| matches!(s, Seen::Message(_)))
            .collect();
        assert_eq!(
            order,
            vec![
                said("lobby", "all"),
                said("lobby", "all but bob"),
                said("lobby", "alice and carol"),
                room_end.clone()
            ]
        );
    }
    // Each push frame got the connection's next sequence number.
    for rx in [&alice_rx, &bob_rx, &carol_rx, &dave_rx] {
        let seqs = rx.seqs.lock().unwrap().clone();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    }
}

/// A user's connections on both servers close with the reason; others stay.
pub async fn disconnect_a_user(a: &TestServer, b: &TestServer, em: &ChatHubEmitter) {
    let (alice, _alice_rx) = joined(&a.url(), "lobby", "alice").await;
    let (mallory_a, _) = joined(&a.url(), "lobby", "mallory").await;
    let (mallory_b, _) = client(&b.url(), "mallory").await;
    assert_eq!(a.handle.user_connections("mallory").await.unwrap(), 2);

    em.disconnect_user("mallory", Code::PermissionDenied, "banned by the game")
        .await
        .unwrap();
    for c in [&mallory_a, &mallory_b] {
        let reason = tokio::time::timeout(WAIT, c.closed())
            .await
            .expect("closed within the wait");
        assert_eq!(
            (reason.code, reason.message.as_str()),
            (Code::PermissionDenied, "banned by the game")
        );
    }
    test_support::eventually("mallory is gone", WAIT, async || {
        a.handle.user_connections("mallory").await.unwrap() == 0
    })
    .await;
    // The room was told, as after any disconnect, and alice is still connected.
    let members = alice.members().await.unwrap();
    assert_eq!(members.members, vec!["alice".to_string()]);
}

/// One connection closes with the reason; the user's other connection stays.
pub async fn disconnect_a_connection(a: &TestServer, b: &TestServer, em: &ChatHubEmitter) {
    let (erin_a, erin_a_rx) = client(&a.url(), "erin").await;
    let (erin_b, _) = client(&b.url(), "erin").await;
    em.disconnect_connection(id(&erin_b), Code::Ok, "moved to another shard")
        .await
        .unwrap();
    let reason = tokio::time::timeout(WAIT, erin_b.closed())
        .await
        .expect("closed within the wait");
    assert_eq!(
        (reason.code, reason.message.as_str()),
        (Code::Ok, "moved to another shard")
    );
    test_support::eventually("one erin left", WAIT, async || {
        b.handle.user_connections("erin").await.unwrap() == 1
    })
    .await;
    em.user("erin")
        .unwrap()
        .on_whisper(game("", "still here?"))
        .await
        .unwrap();
    wait_for_all(&erin_a_rx, &[whispered("still here?")]).await;
    // Still connected (in no room: the call is answered with an error).
    let err = erin_a.members().await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}

/// A user removed from a room on both servers: the room hears `on_leave` for each of
/// its connections, member lists drop it, and room pushes no longer reach it.
pub async fn remove_a_user_from_a_room(a: &TestServer, b: &TestServer, em: &ChatHubEmitter) {
    let (_alice, alice_rx) = joined(&a.url(), "lobby", "alice").await;
    let (_carol, carol_rx) = joined(&b.url(), "lobby", "carol").await;
    let (bob_a, bob_a_rx) = joined(&a.url(), "lobby", "bob").await;
    let (bob_b, bob_b_rx) = joined(&b.url(), "lobby", "bob").await;

    em.remove_from_group("lobby", "bob").await.unwrap();
    for rx in [&alice_rx, &carol_rx] {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let leaves = rx
                .seen()
                .into_iter()
                .filter(|s| *s == left("lobby", "bob"))
                .count();
            if leaves == 2 {
                break;
            }
            let now = tokio::time::Instant::now();
            assert!(now < deadline, "two on_leave for bob: {:?}", rx.seen());
            rx.wait_for(rx.seen().len() + 1, deadline - now).await;
        }
    }
    test_support::eventually("bob is out of the room", WAIT, async || {
        let members = a.handle.members("lobby").await.unwrap();
        let mut users: Vec<String> = members.into_iter().filter_map(|m| m.user).collect();
        users.sort();
        users == ["alice", "carol"]
    })
    .await;
    // Still connected, in no room.
    let err = bob_a
        .say(SayRequest {
            text: "hello?".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    em.group("lobby")
        .unwrap()
        .on_message(game("lobby", "after"))
        .await
        .unwrap();
    // alice (server a) and carol (server b) got it: each server has handled the
    // envelope, so a barrier pushed there now proves bob's connections did not.
    wait_for_all(&alice_rx, &[said("lobby", "after")]).await;
    wait_for_all(&carol_rx, &[said("lobby", "after")]).await;
    for (server, c, rx) in [(a, &bob_a, &bob_a_rx), (b, &bob_b, &bob_b_rx)] {
        let before = rx.barrier(&server.handle, &c.connection_id(), WAIT).await;
        assert!(
            !before.contains(&said("lobby", "after")),
            "bob got a room push after his removal: {before:?}"
        );
    }
}
