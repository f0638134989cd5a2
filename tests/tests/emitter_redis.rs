//! A game loop that is not a hub server pushes to chat members and runs commands
//! through Redis: a `ChatHubEmitter` on a `RedisEmitter`, two in-process chat servers
//! on a `RedisProvider`, a real `redis-server` on a free port.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

mod emitter;

use std::sync::Arc;
use std::time::{Duration, Instant};

use examples::chat::ChatMessage;
use examples::chat::chat_hub_emitter::ChatHubEmitter;
use hub_redis::{RedisEmitter, RedisProvider, RedisProviderBuilder};
use hub_server::{GroupError, HubConfig};
use test_support::RedisServer;
use tests::TestServer;

const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);

fn options(redis: &RedisServer) -> RedisProviderBuilder {
    RedisProvider::builder()
        .url(redis.url())
        .presence_ttl(Duration::from_secs(1))
        .publish_timeout(PUBLISH_TIMEOUT)
        .connect_timeout(PUBLISH_TIMEOUT)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
}

/// Two chat servers on `redis` and an emitter.
async fn setup(redis: &RedisServer) -> (TestServer, TestServer, ChatHubEmitter) {
    let server = || async {
        TestServer::start(
            Arc::new(options(redis).build().unwrap()),
            HubConfig::default(),
        )
        .await
    };
    let (a, b) = (server().await, server().await);
    let em = ChatHubEmitter::new(RedisEmitter::connect_with(options(redis)).await.unwrap())
        .named("game-loop");
    assert!(em.raw().origin().starts_with("emitter/game-loop/"));
    (a, b, em)
}

#[tokio::test]
async fn every_target_mode_a_user_and_connections() {
    let redis = RedisServer::start();
    let (a, b, em) = setup(&redis).await;
    emitter::every_target_mode(&a, &b, &em).await;
    assert!(b.handle.metrics().backplane_received >= 4);
}

#[tokio::test]
async fn disconnect_a_user() {
    let redis = RedisServer::start();
    let (a, b, em) = setup(&redis).await;
    emitter::disconnect_a_user(&a, &b, &em).await;
}

#[tokio::test]
async fn disconnect_a_connection() {
    let redis = RedisServer::start();
    let (a, b, em) = setup(&redis).await;
    emitter::disconnect_a_connection(&a, &b, &em).await;
}

#[tokio::test]
async fn remove_a_user_from_a_room() {
    let redis = RedisServer::start();
    let (a, b, em) = setup(&redis).await;
    emitter::remove_a_user_from_a_room(&a, &b, &em).await;
}

fn msg() -> ChatMessage {
    ChatMessage {
        room: "lobby".into(),
        from: "game".into(),
        text: "anyone?".into(),
    }
}

/// A stalled Redis (paused: connections open, nothing answered) fails a publish with
/// a timeout within the publish timeout; a Redis gone fails it at once; once it is
/// back, publishes work again without a new emitter.
#[tokio::test]
async fn a_redis_down_fails_publishes_within_the_timeout() {
    let mut redis = RedisServer::start();
    let em = ChatHubEmitter::new(RedisEmitter::connect_with(options(&redis)).await.unwrap());
    let room = em.group("lobby").unwrap();
    room.clone().on_message(msg()).await.unwrap();

    let paused = redis.pause();
    let started = Instant::now();
    let err = room.clone().on_message(msg()).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, GroupError::Timeout { .. }), "{err:?}");
    assert!(
        took < PUBLISH_TIMEOUT + Duration::from_millis(500),
        "{took:?}"
    );
    // The next one (a new connection to a Redis that answers nothing) too.
    let started = Instant::now();
    let err = em
        .disconnect_user("ann", tonic::Code::Unavailable, "x")
        .await
        .unwrap_err();
    assert!(matches!(err, GroupError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < PUBLISH_TIMEOUT + Duration::from_millis(500));
    paused.resume();

    redis.kill();
    let started = Instant::now();
    let err = room.clone().on_message(msg()).await.unwrap_err();
    assert!(
        matches!(
            err,
            GroupError::Unavailable { .. } | GroupError::Timeout { .. }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < PUBLISH_TIMEOUT + Duration::from_millis(500));
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unavailable);

    redis.restart();
    test_support::eventually("publishes work again", emitter::WAIT, async || {
        room.clone().on_message(msg()).await.is_ok()
    })
    .await;
}

/// With `SessionConfig::connection_history` on the hub (and group history on Redis),
/// pushes to connection ids go through each connection's `$conn/<id>` group: an
/// emitter set the same way (`connection_groups`) reaches every target as before.
#[tokio::test]
async fn every_target_mode_through_connection_groups() {
    let redis = RedisServer::start();
    let history = || options(&redis).history(100, Duration::from_secs(60));
    let config = || {
        HubConfig::default().sessions(Some(
            hub_server::SessionConfig::default().connection_history(true),
        ))
    };
    let a = TestServer::start(Arc::new(history().build().unwrap()), config()).await;
    let b = TestServer::start(Arc::new(history().build().unwrap()), config()).await;
    let em = ChatHubEmitter::new(RedisEmitter::connect_with(history()).await.unwrap())
        .connection_groups(true);
    emitter::every_target_mode(&a, &b, &em).await;
    // The emitter's connection pushes went into the four connections' own groups:
    // each has a history stream with them in it.
    let streams = redis.cli(&["--scan", "--pattern", "*:history:*$conn/*"]);
    let streams: Vec<&str> = streams.lines().collect();
    assert_eq!(streams.len(), 4, "{streams:?}");
    for key in streams {
        let len: u64 = redis.cli(&["XLEN", key]).trim().parse().unwrap();
        assert!(len >= 1, "{key}: {len}");
    }
}
