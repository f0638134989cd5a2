//! The backplane conformance suite on the in-process bus (`hub_core::bus`): every hub
//! server of the test shares one `Bus`, the reference backend of `docs/backends.md`.
//!
//! A crashed server (its runtime stopped) is dead on the bus at once. The bus's
//! outage is `Bus::set_down`: while down every operation fails with UNAVAILABLE, and
//! when it is back it has kept its subscriptions and members (a broker that was cut
//! off rather than one restarted empty; the Redis and NATS topologies test that one).
//!
//! The suite runs twice: on a plain bus, and (`history::`) on a bus whose groups keep
//! their history (`Bus::with_history`: offsets, a ring per group, own pushes echoed).

use std::time::Duration;

use hub_core::bus::Bus;
use tests::conformance::{self, Capabilities, ProviderFuture, Topology};

/// The bus, with a ring of `HISTORY` pushes per group (0: no history).
struct Memory<const HISTORY: usize> {
    bus: Bus,
}

impl<const HISTORY: usize> Topology for Memory<HISTORY> {
    const NAME: &'static str = if HISTORY == 0 {
        "memory"
    } else {
        "memory with history"
    };
    const CAPABILITIES: Capabilities = Capabilities {
        server_crash: true,
        backplane_restart: true,
        node_failover: false,
        backplane_pause: false,
    };

    fn start() -> Self {
        Memory {
            bus: if HISTORY == 0 {
                Bus::new()
            } else {
                Bus::with_history(HISTORY)
            },
        }
    }

    fn provider(&self, _server: usize) -> ProviderFuture {
        conformance::ready(self.bus.provider())
    }

    /// The bus learns of a crash when the crashed runtime drops the server's tasks.
    fn presence_expiry(&self) -> Duration {
        Duration::ZERO
    }

    fn kill_backplane(&mut self) {
        self.bus.set_down(true);
    }

    fn restart_backplane(&mut self) {
        self.bus.set_down(false);
    }
}

tests::conformance_suite!(Memory<0>; server_crash, backplane_restart);

mod history {
    tests::conformance_suite!(super::Memory<1000>; server_crash, backplane_restart);
}
