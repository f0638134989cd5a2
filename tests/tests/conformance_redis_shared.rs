//! The backplane conformance suite on one `redis-server` and one `RedisProvider`
//! shared by every hub server of the process: the provider's one command and one
//! subscriber connection carry every server's traffic, each server keeps its own
//! failure handling (a crashed server's runtime takes the connections it opened with
//! it; the others notice and open new ones).
//!
//! Also: the provider opens one command and one subscriber connection in all, not two
//! per hub (two chat servers on one provider, `CLIENT LIST` shows two); messages
//! reach the hubs that subscribed their channel only; one hub's last leave does not
//! unsubscribe a channel another hub still uses; after a Redis restart both reconnect
//! on a new shared pair.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use examples::chat::chat_hub_emitter::ChatHubEmitter;
use examples::chat::{ChatMessage, SayRequest};
use hub_redis::RedisProvider;
use hub_redis::{RedisEmitter, RedisProviderBuilder};
use hub_server::GroupProvider;
use hub_server::HubConfig;
use test_support::RedisServer;
use tests::conformance::{self, Capabilities, ProviderFuture, Stall, Topology};
use tests::{Recorder, Seen, TestServer, joined, said};

/// Presence TTL of the suite's providers: short, so that a crash shows within a second.
const PRESENCE_TTL: Duration = Duration::from_secs(1);

struct Redis {
    server: RedisServer,
    provider: Arc<dyn GroupProvider>,
}

impl Topology for Redis {
    const NAME: &'static str = "redis-shared";
    const CAPABILITIES: Capabilities = Capabilities {
        server_crash: true,
        backplane_restart: true,
        node_failover: false,
        backplane_pause: true,
    };

    fn start() -> Self {
        let server = RedisServer::start();
        let provider = Arc::new(
            RedisProvider::builder()
                .url(server.url())
                .presence_ttl(PRESENCE_TTL)
                .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
                .build()
                .expect("provider"),
        );
        Redis { server, provider }
    }

    fn provider(&self, _server: usize) -> ProviderFuture {
        conformance::ready(self.provider.clone())
    }

    /// Queries stop counting a server's members `presence_ttl` after its last heartbeat.
    fn presence_expiry(&self) -> Duration {
        PRESENCE_TTL
    }

    fn kill_backplane(&mut self) {
        self.server.kill();
    }

    fn pause_backplane(&self) -> Box<dyn Stall + '_> {
        Box::new(self.server.pause())
    }

    /// Heartbeats come every TTL/3; a stall of TTL/3 leaves another TTL/3 before
    /// anyone's presence expires.
    fn tolerated_stall(&self) -> Duration {
        PRESENCE_TTL / 3
    }

    fn restart_backplane(&mut self) {
        self.server.restart();
    }
}

tests::conformance_suite!(Redis; server_crash, backplane_restart, backplane_pause);

/// Generous: the machine is shared and slow at times.
const WAIT: Duration = Duration::from_secs(15);

fn options(redis: &RedisServer) -> RedisProviderBuilder {
    RedisProvider::builder()
        .url(redis.url())
        .presence_ttl(Duration::from_secs(1))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(300))
}

/// Client connections Redis has, `redis-cli` itself left out.
fn clients(redis: &RedisServer) -> usize {
    redis
        .cli(&["CLIENT", "LIST"])
        .lines()
        .filter(|l| l.contains("cmd=") && !l.contains("cmd=client|list"))
        .count()
}

async fn arrives(rx: &Recorder, what: &Seen) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if rx.seen().contains(what) {
            return;
        }
        let now = tokio::time::Instant::now();
        assert!(now < deadline, "{what:?} did not arrive: {:?}", rx.seen());
        rx.wait_for(rx.seen().len() + 1, deadline - now).await;
    }
}

fn game(room: &str, text: &str) -> ChatMessage {
    ChatMessage {
        room: room.into(),
        from: "game".into(),
        text: text.into(),
    }
}

#[tokio::test]
async fn hubs_on_one_provider_share_its_two_connections() {
    let mut redis = RedisServer::start();
    let provider: Arc<dyn GroupProvider> = Arc::new(options(&redis).build().unwrap());
    assert_eq!(clients(&redis), 0, "building opens nothing");
    let a = TestServer::start(provider.clone(), HubConfig::default()).await;
    let b = TestServer::start(provider.clone(), HubConfig::default()).await;
    let (alice, arx) = joined(&a.url(), "lobby", "alice").await;
    let (bob, brx) = joined(&b.url(), "lobby", "bob").await;
    let (carol, crx) = joined(&b.url(), "lobby", "carol").await;
    test_support::eventually("two connections for both hubs", WAIT, async || {
        clients(&redis) == 2
    })
    .await;
    assert_eq!(redis.numsub("hub:chat.v1.ChatHub:g:lobby"), Some(1));

    alice.say(SayRequest { text: "hi".into() }).await.unwrap();
    arrives(&brx, &said("lobby", "alice", "hi")).await;
    arrives(&crx, &said("lobby", "alice", "hi")).await;
    bob.say(SayRequest { text: "yo".into() }).await.unwrap();
    arrives(&arx, &said("lobby", "bob", "yo")).await;

    // Server B's last member of the lobby leaves: the shared connection stays
    // subscribed for server A, and B is no longer handed the lobby's messages.
    carol.leave().await.unwrap();
    bob.leave().await.unwrap();
    assert_eq!(redis.numsub("hub:chat.v1.ChatHub:g:lobby"), Some(1));
    let em = ChatHubEmitter::new(RedisEmitter::connect_with(options(&redis)).await.unwrap());
    let before = b.handle.metrics().backplane_received;
    em.group("lobby")
        .unwrap()
        .on_message(game("lobby", "tick"))
        .await
        .unwrap();
    arrives(&arx, &said("lobby", "game", "tick")).await;
    // Barrier: one more push from the same emitter, through the same connection, to B.
    em.user("bob")
        .unwrap()
        .on_whisper(game("", "to bob"))
        .await
        .unwrap();
    arrives(&brx, &Seen::Whisper(game("", "to bob"))).await;
    assert_eq!(b.handle.metrics().backplane_received, before + 1);

    // A Redis restart: both hubs reconnect, on one new pair.
    redis.restart();
    test_support::eventually("both hubs back on two connections", WAIT, async || {
        clients(&redis) == 2
            && a.handle.member_count("lobby").await.ok() == Some(1)
            && b.handle.user_connections("bob").await.ok() == Some(1)
    })
    .await;
    let em = ChatHubEmitter::new(RedisEmitter::connect_with(options(&redis)).await.unwrap());
    em.group("lobby")
        .unwrap()
        .on_message(game("lobby", "after"))
        .await
        .unwrap();
    arrives(&arx, &said("lobby", "game", "after")).await;
    em.user("bob")
        .unwrap()
        .on_whisper(game("", "after"))
        .await
        .unwrap();
    arrives(&brx, &Seen::Whisper(game("", "after"))).await;
}
