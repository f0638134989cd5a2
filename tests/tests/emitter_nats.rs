//! A game loop that is not a hub server pushes to chat members and runs commands
//! through NATS: a `ChatHubEmitter` on a `NatsEmitter`, two in-process chat servers on
//! a `NatsProvider`, a real `nats-server` on a free port.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

mod emitter;

use std::sync::Arc;
use std::time::{Duration, Instant};

use examples::chat::ChatMessage;
use examples::chat::chat_hub_emitter::ChatHubEmitter;
use hub_nats::{NatsEmitter, NatsProvider};
use hub_server::{GroupError, HubConfig};
use test_support::{NatsOptions, NatsServer};
use tests::TestServer;

const OP_TIMEOUT: Duration = Duration::from_millis(500);

/// Two chat servers on `nats` and an emitter with a connection of its own.
async fn setup(nats: &NatsServer) -> (TestServer, TestServer, ChatHubEmitter) {
    let server = || async {
        let provider = NatsProvider::connect(&nats.url()).await.unwrap();
        TestServer::start(Arc::new(provider), HubConfig::default()).await
    };
    let (a, b) = (server().await, server().await);
    let em = ChatHubEmitter::new(emitter(nats).await).named("game-loop");
    (a, b, em)
}

async fn emitter(nats: &NatsServer) -> NatsEmitter {
    NatsEmitter::connect_with(
        NatsProvider::builder().operation_timeout(OP_TIMEOUT),
        &nats.url(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn every_target_mode_a_user_and_connections() {
    let nats = NatsServer::start();
    let (a, b, em) = setup(&nats).await;
    emitter::every_target_mode(&a, &b, &em).await;
    assert!(b.handle.metrics().backplane_received >= 4);
    em.flush().await.unwrap();
}

#[tokio::test]
async fn disconnect_a_user() {
    let nats = NatsServer::start();
    let (a, b, em) = setup(&nats).await;
    emitter::disconnect_a_user(&a, &b, &em).await;
}

#[tokio::test]
async fn disconnect_a_connection() {
    let nats = NatsServer::start();
    let (a, b, em) = setup(&nats).await;
    emitter::disconnect_a_connection(&a, &b, &em).await;
}

#[tokio::test]
async fn remove_a_user_from_a_room() {
    let nats = NatsServer::start();
    let (a, b, em) = setup(&nats).await;
    emitter::remove_a_user_from_a_room(&a, &b, &em).await;
}

/// The emitter on a hub server's own provider shares its connection.
#[tokio::test]
async fn an_emitter_on_a_providers_connection() {
    let nats = NatsServer::start();
    let provider = NatsProvider::connect(&nats.url()).await.unwrap();
    let a = TestServer::start(Arc::new(provider.clone()), HubConfig::default()).await;
    let em = ChatHubEmitter::new(NatsEmitter::new(&provider));
    let (_alice, alice_rx) = tests::joined(&a.url(), "lobby", "alice").await;
    em.group("lobby")
        .unwrap()
        .on_message(msg("hi"))
        .await
        .unwrap();
    let seen = alice_rx.wait_for(1, emitter::WAIT).await;
    assert_eq!(seen, vec![tests::Seen::Message(msg("hi"))]);
}

fn msg(text: &str) -> ChatMessage {
    ChatMessage {
        room: "lobby".into(),
        from: "game".into(),
        text: text.into(),
    }
}

/// A message over the server's `max_payload` is refused before anything is sent.
#[tokio::test]
async fn a_push_larger_than_nats_carries_is_refused() {
    let nats = NatsServer::start_with(NatsOptions {
        max_payload: Some(4096),
        ..Default::default()
    });
    let em = ChatHubEmitter::new(emitter(&nats).await);
    let err = em
        .group("lobby")
        .unwrap()
        .on_message(msg(&"x".repeat(8192)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, GroupError::TooLarge { max: 4096, .. }),
        "{err:?}"
    );
}

/// With NATS gone, every publish returns within the operation timeout, and they fail
/// (with `Unavailable`) as soon as the client sees the connection down; once NATS is
/// back they work again.
#[tokio::test]
async fn a_nats_down_fails_publishes_within_the_timeout() {
    let mut nats = NatsServer::start();
    let em = ChatHubEmitter::new(emitter(&nats).await);
    let room = em.group("lobby").unwrap();
    room.clone().on_message(msg("up")).await.unwrap();

    nats.kill();
    let deadline = Instant::now() + emitter::WAIT;
    let err = loop {
        let started = Instant::now();
        let r = room.clone().on_message(msg("down?")).await;
        assert!(
            started.elapsed() < OP_TIMEOUT + Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        match r {
            Err(e) => break e,
            Ok(()) => {
                assert!(
                    Instant::now() < deadline,
                    "publishes still succeed with NATS gone"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(matches!(err, GroupError::Unavailable { .. }), "{err:?}");
    let started = Instant::now();
    assert!(
        em.disconnect_user("ann", tonic::Code::Unavailable, "x")
            .await
            .is_err()
    );
    assert!(started.elapsed() < OP_TIMEOUT + Duration::from_millis(500));

    nats.restart();
    test_support::eventually("publishes work again", emitter::WAIT, async || {
        room.clone().on_message(msg("back")).await.is_ok()
    })
    .await;
}

/// A stalled NATS (SIGSTOP: the connection stays open) is noticed by the emitter's
/// probe: within the probe interval and the operation timeout, publishes fail at once
/// with `Unavailable` instead of piling up in the client's buffer; once NATS answers
/// again they work, and every publish accepted before the stall was noticed reaches the
/// member, in order, before the first one after.
#[tokio::test]
async fn a_stalled_nats_fails_publishes_until_it_answers() {
    let nats = NatsServer::start();
    let (a, _b, em) = setup(&nats).await;
    let (_alice, alice_rx) = tests::joined(&a.url(), "lobby", "alice").await;
    let room = em.group("lobby").unwrap();
    room.clone().on_message(msg("up")).await.unwrap();
    alice_rx.wait_for(1, emitter::WAIT).await;
    let mut accepted = vec![msg("up")];

    let paused = nats.pause();
    let stalled_at = Instant::now();
    let err = loop {
        let text = format!("stalled {}", accepted.len());
        let started = Instant::now();
        let r = room.clone().on_message(msg(&text)).await;
        assert!(
            started.elapsed() < OP_TIMEOUT + Duration::from_millis(500),
            "a publish took {:?}",
            started.elapsed()
        );
        match r {
            Err(e) => break e,
            Ok(()) => {
                accepted.push(msg(&text));
                assert!(
                    stalled_at.elapsed()
                        < hub_nats::STALL_PROBE_INTERVAL + OP_TIMEOUT + Duration::from_secs(2),
                    "publishes still accepted {:?} into the stall",
                    stalled_at.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(
        matches!(&err, GroupError::Unavailable { message, .. } if message.contains("round trip")),
        "{err:?}"
    );
    // Still refused, at once, while the stall lasts.
    let started = Instant::now();
    assert!(room.clone().on_message(msg("refused")).await.is_err());
    assert!(started.elapsed() < Duration::from_millis(100));

    drop(paused);
    test_support::eventually("publishes work again", emitter::WAIT, async || {
        room.clone().on_message(msg("back")).await.is_ok()
    })
    .await;
    accepted.push(msg("back"));
    // "back" is the barrier: pushes of one emitter to one room arrive in order.
    let deadline = Instant::now() + emitter::WAIT;
    let seen = loop {
        let seen: Vec<ChatMessage> = alice_rx
            .seen()
            .into_iter()
            .filter_map(|s| match s {
                tests::Seen::Message(m) if m.from == "game" => Some(m),
                _ => None,
            })
            .collect();
        if seen.last().is_some_and(|m| m.text == "back") || Instant::now() > deadline {
            break seen;
        }
        let n = alice_rx.seen().len() + 1;
        alice_rx.wait_for(n, Duration::from_millis(500)).await;
    };
    // A "back" tried while the probe had not yet seen NATS answer was refused, not sent.
    assert_eq!(seen, accepted);
}

/// With `SessionConfig::connection_history` on the hub (and group history on
/// JetStream), pushes to connection ids go through each connection's `$conn/<id>`
/// group: an emitter set the same way (`connection_groups`) reaches every target as
/// before.
#[tokio::test]
async fn every_target_mode_through_connection_groups() {
    let nats = NatsServer::start();
    let history = || {
        NatsProvider::builder()
            .operation_timeout(OP_TIMEOUT)
            .history(100, Duration::from_secs(60))
    };
    let config = || {
        HubConfig::default().sessions(Some(
            hub_server::SessionConfig::default().connection_history(true),
        ))
    };
    let server = || async {
        let provider = history().connect(&nats.url()).await.unwrap();
        TestServer::start(Arc::new(provider), config()).await
    };
    let (a, b) = (server().await, server().await);
    let em = ChatHubEmitter::new(
        NatsEmitter::connect_with(history(), &nats.url())
            .await
            .unwrap(),
    )
    .connection_groups(true);
    emitter::every_target_mode(&a, &b, &em).await;
    em.flush().await.unwrap();
}
