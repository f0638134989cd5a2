//! The backplane conformance suite on a three-master Redis Cluster with sharded
//! pub/sub (`SPUBLISH`/`SSUBSCRIBE`): every hub server knows every node.

use std::time::Duration;

use hub_redis::RedisProvider;
use test_support::RedisCluster;
use tests::conformance::{self, Capabilities, ProviderFuture, Stall, Topology};

/// Presence TTL of the suite's providers: short, so that a crash shows within a second.
const PRESENCE_TTL: Duration = Duration::from_secs(1);

struct Cluster {
    cluster: RedisCluster,
}

impl Topology for Cluster {
    const NAME: &'static str = "redis-cluster";
    // No node failover: the cluster has no replicas, a dead master's slots are gone
    // until it is back.
    const CAPABILITIES: Capabilities = Capabilities {
        server_crash: true,
        backplane_restart: true,
        node_failover: false,
        backplane_pause: true,
    };

    fn start() -> Self {
        Cluster {
            cluster: RedisCluster::start(),
        }
    }

    fn provider(&self, _server: usize) -> ProviderFuture {
        conformance::ready(std::sync::Arc::new(
            RedisProvider::builder()
                .cluster(self.cluster.urls())
                .sharded(true)
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
        self.cluster.kill();
    }

    fn pause_backplane(&self) -> Box<dyn Stall + '_> {
        Box::new(self.cluster.pause())
    }

    /// Heartbeats come every TTL/3; a stall of TTL/3 leaves another TTL/3 before
    /// anyone's presence expires.
    fn tolerated_stall(&self) -> Duration {
        PRESENCE_TTL / 3
    }

    fn restart_backplane(&mut self) {
        self.cluster.restart();
    }
}

tests::conformance_suite!(Cluster; server_crash, backplane_restart, backplane_pause);
