//! The backplane conformance suite on one `redis-server` and one `RedisProvider`
//! shared by every hub server of the process: the provider's one command and one
//! subscriber connection carry every server's traffic, each server keeps its own
//! failure handling (a crashed server's runtime takes the connections it opened with
//! it; the others notice and open new ones).

use std::sync::Arc;
use std::time::Duration;

use hub_redis::RedisProvider;
use hub_server::GroupProvider;
use test_support::RedisServer;
use tests::conformance::{self, Capabilities, ProviderFuture, Stall, Topology};

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
