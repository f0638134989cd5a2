//! The backplane conformance suite on groups sharded over three in-process buses
//! (`hub_core::shard::Sharded` over three `hub_core::bus::Bus`es): every hub server
//! binds the three shards, each group lives on the shard its name hashes to, and
//! sends to named connections go to the shard of the target server's node id. The
//! outage is all three buses down at once (one shard's outage is `sharding.rs`'s).

use std::sync::Arc;
use std::time::Duration;

use hub_core::bus::Bus;
use hub_core::shard::Sharded;
use tests::conformance::{self, Capabilities, ProviderFuture, Topology};

struct ShardedBuses {
    buses: Vec<Bus>,
}

impl Topology for ShardedBuses {
    const NAME: &'static str = "sharded";
    const CAPABILITIES: Capabilities = Capabilities {
        server_crash: true,
        backplane_restart: true,
        node_failover: false,
        backplane_pause: false,
    };

    fn start() -> Self {
        ShardedBuses {
            buses: (0..3).map(|_| Bus::new()).collect(),
        }
    }

    fn provider(&self, _server: usize) -> ProviderFuture {
        let shards = self.buses.iter().map(Bus::provider).collect();
        conformance::ready(Arc::new(Sharded::new(shards)))
    }

    /// Each bus learns of a crash when the crashed runtime drops the server's tasks.
    fn presence_expiry(&self) -> Duration {
        Duration::ZERO
    }

    fn kill_backplane(&mut self) {
        for bus in &self.buses {
            bus.set_down(true);
        }
    }

    fn restart_backplane(&mut self) {
        for bus in &self.buses {
            bus.set_down(false);
        }
    }
}

tests::conformance_suite!(ShardedBuses; server_crash, backplane_restart);

/// Asks and their answers cross servers on their node shards: a ready check over
/// three servers whose groups and node channels are spread over three buses.
#[tokio::test]
async fn a_ready_check_across_three_servers_on_sharded_buses() {
    let buses: Vec<Bus> = (0..3).map(|_| Bus::new()).collect();
    let make: tests::asks::MakeProvider = Arc::new(move || {
        let shards = buses.iter().map(Bus::provider).collect();
        conformance::ready(Arc::new(Sharded::new(shards)))
    });
    tests::asks::group_across_servers(make).await;
}
