//! The backplane conformance suite on a three-node NATS cluster: hub server `i`
//! connects to node `i % 3` first and fails over to the others.

use std::sync::Arc;
use std::time::Duration;

use hub_nats::NatsProvider;
use hub_server::GroupProvider;
use test_support::NatsCluster;
use tests::conformance::{Capabilities, ProviderFuture, Stall, Topology};

/// Heartbeat interval of the suite's providers: a silent server is presumed dead
/// after 3 of them (900 ms) instead of 6 s.
const HEARTBEAT: Duration = Duration::from_millis(300);

/// A provider with quick heartbeats that prefers the first of `urls` and retries
/// every 100 ms after losing its node.
async fn provider(urls: String) -> Arc<dyn GroupProvider> {
    Arc::new(
        NatsProvider::builder()
            .options(
                hub_nats::async_nats::ConnectOptions::new()
                    .retain_servers_order()
                    .reconnect_delay_callback(|_| Duration::from_millis(100)),
            )
            .heartbeat_interval(HEARTBEAT)
            .operation_timeout(Duration::from_secs(2))
            .connect(&urls)
            .await
            .expect("connect to NATS"),
    )
}

struct Cluster {
    cluster: NatsCluster,
}

impl Cluster {
    /// The node server `server` prefers.
    fn node_of(&self, server: usize) -> usize {
        server % self.cluster.urls().len()
    }
}

impl Topology for Cluster {
    const NAME: &'static str = "nats-cluster";
    const CAPABILITIES: Capabilities = Capabilities {
        server_crash: true,
        backplane_restart: true,
        node_failover: true,
        backplane_pause: true,
    };

    fn start() -> Self {
        Cluster {
            cluster: NatsCluster::start(),
        }
    }

    fn provider(&self, server: usize) -> ProviderFuture {
        let mut urls = self.cluster.urls();
        urls.rotate_left(self.node_of(server));
        Box::pin(provider(urls.join(",")))
    }

    /// Presumed dead when silent for 3 heartbeat intervals at two checks an interval
    /// apart (at most 5 intervals), plus a roll-call timeout (500 ms) for the check
    /// that NATS answers.
    fn presence_expiry(&self) -> Duration {
        HEARTBEAT * 5 + Duration::from_millis(500)
    }

    fn kill_backplane(&mut self) {
        self.cluster.kill();
    }

    fn pause_backplane(&self) -> Box<dyn Stall + '_> {
        Box::new(self.cluster.pause())
    }

    /// As long as the single server's: a server's liveness probe, sent during the
    /// stall, may be answered by its own node right after it, before the other
    /// server's heartbeats come through the other node; the second silent check
    /// before presuming anyone dead gives them that time.
    fn tolerated_stall(&self) -> Duration {
        Duration::from_millis(1500)
    }

    fn restart_backplane(&mut self) {
        self.cluster.restart();
    }

    fn kill_node_of(&mut self, server: usize) {
        let node = self.node_of(server);
        self.cluster.nodes()[node].kill();
    }
}

tests::conformance_suite!(Cluster; server_crash, backplane_restart, node_failover, backplane_pause);
