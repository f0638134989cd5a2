//! The backplane conformance suite on one `redis-server` shared by every hub server.

use std::time::Duration;

use hub_redis::RedisProvider;
use test_support::RedisServer;
use tests::conformance::{self, Capabilities, ProviderFuture, Topology};

/// Presence TTL of the suite's providers: short, so that a crash shows within a second.
const PRESENCE_TTL: Duration = Duration::from_secs(1);

struct Redis {
    server: RedisServer,
}

impl Topology for Redis {
    const NAME: &'static str = "redis";
    const CAPABILITIES: Capabilities = Capabilities {
        server_crash: true,
        backplane_restart: true,
        node_failover: false,
    };

    fn start() -> Self {
        Redis {
            server: RedisServer::start(),
        }
    }

    fn provider(&self, _server: usize) -> ProviderFuture {
        conformance::ready(std::sync::Arc::new(
            RedisProvider::builder()
                .url(self.server.url())
                .presence_ttl(PRESENCE_TTL)
                .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
                .build()
                .expect("provider"),
        ))
    }

    /// Queries stop counting a server's members `presence_ttl` after its last heartbeat.
    fn presence_expiry(&self) -> Duration {
        PRESENCE_TTL
    }

    fn kill_backplane(&mut self) {
        self.server.kill();
    }

    fn restart_backplane(&mut self) {
        self.server.restart();
    }
}

tests::conformance_suite!(Redis; server_crash, backplane_restart);
