//! The backplane conformance suite on one `nats-server` shared by every hub server.

use std::sync::Arc;
use std::time::Duration;

use hub_nats::NatsProvider;
use hub_server::GroupProvider;
use test_support::NatsServer;
use tests::conformance::{Capabilities, ProviderFuture, Stall, Topology};

/// Heartbeat interval of the suite's providers: a silent server is presumed dead
/// after 3 of them (900 ms) instead of 6 s.
const HEARTBEAT: Duration = Duration::from_millis(300);

/// A provider with quick heartbeats that retries every 100 ms after losing NATS.
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

struct Nats {
    server: NatsServer,
}

impl Topology for Nats {
    const NAME: &'static str = "nats";
    const CAPABILITIES: Capabilities = Capabilities {
        server_crash: true,
        backplane_restart: true,
        node_failover: false,
        backplane_pause: true,
    };

    fn start() -> Self {
        Nats {
            server: NatsServer::start(),
        }
    }

    fn provider(&self, _server: usize) -> ProviderFuture {
        Box::pin(provider(self.server.url()))
    }

    /// Presumed dead when silent for 3 heartbeat intervals at two checks an interval
    /// apart (at most 5 intervals), plus a roll-call timeout (500 ms) for the check
    /// that NATS answers.
    fn presence_expiry(&self) -> Duration {
        HEARTBEAT * 5 + Duration::from_millis(500)
    }

    fn kill_backplane(&mut self) {
        self.server.kill();
    }

    fn pause_backplane(&self) -> Box<dyn Stall + '_> {
        Box::new(self.server.pause())
    }

    /// Five heartbeat intervals, longer than the three after which a silent server is
    /// presumed dead: a server checks that NATS answers it before presuming anyone
    /// dead, and gives everyone a fresh grace period after its own silence.
    fn tolerated_stall(&self) -> Duration {
        Duration::from_millis(1500)
    }

    fn restart_backplane(&mut self) {
        self.server.restart();
    }
}

tests::conformance_suite!(Nats; server_crash, backplane_restart, backplane_pause);
