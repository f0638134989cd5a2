//! Asks across hub servers on a real `redis-server` and a real `nats-server`: a ready
//! check over three servers, and a target server that crashes while the ask waits
//! (the ask ends when the backplane reports it dead, long before its timeout).

use std::sync::Arc;
use std::time::Duration;

use hub_nats::NatsProvider;
use hub_redis::RedisProvider;
use hub_server::GroupProvider;
use test_support::{NatsServer, RedisServer};
use tests::asks::{self, MakeProvider};

/// Presence TTL of the Redis providers: a crash shows within about a second.
const PRESENCE_TTL: Duration = Duration::from_secs(1);
/// Heartbeat of the NATS providers: a crash shows within 3 to 5 of them.
const HEARTBEAT: Duration = Duration::from_millis(300);

fn redis(server: &RedisServer) -> MakeProvider {
    let url = server.url();
    Arc::new(move || {
        let p: Arc<dyn GroupProvider> = Arc::new(
            RedisProvider::builder()
                .url(url.clone())
                .presence_ttl(PRESENCE_TTL)
                .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
                .build()
                .expect("provider"),
        );
        tests::conformance::ready(p)
    })
}

fn nats(server: &NatsServer) -> MakeProvider {
    let url = server.url();
    Arc::new(move || {
        let url = url.clone();
        Box::pin(async move {
            let p: Arc<dyn GroupProvider> = Arc::new(
                NatsProvider::builder()
                    .heartbeat_interval(HEARTBEAT)
                    .operation_timeout(Duration::from_secs(2))
                    .connect(&url)
                    .await
                    .expect("connect to NATS"),
            );
            p
        })
    })
}

#[tokio::test]
async fn a_ready_check_across_three_servers_on_redis() {
    let server = RedisServer::start();
    asks::group_across_servers(redis(&server)).await;
}

#[tokio::test]
async fn a_ready_check_across_three_servers_on_nats() {
    let server = NatsServer::start();
    asks::group_across_servers(nats(&server)).await;
}

#[tokio::test]
async fn the_target_server_crashing_ends_the_ask_on_redis() {
    let server = RedisServer::start();
    // The presence TTL, the janitor's next heartbeat, and a margin for a loaded machine.
    asks::crash_mid_ask(redis(&server), PRESENCE_TTL * 8).await;
}

#[tokio::test]
async fn the_target_server_crashing_ends_the_ask_on_nats() {
    let server = NatsServer::start();
    asks::crash_mid_ask(nats(&server), HEARTBEAT * 30).await;
}
