//! Run with: `cargo run --release -p hub-bench --example backplane_rate -- redis|nats|bus`
//!
//! Measures one hub's backplane alone, without gRPC: how many group publishes per
//! second it sustains with many concurrent senders, and how many a second hub
//! server (its own provider and connection) receives, against a local `redis-server`
//! or `nats-server` started on a free port (or the in-process bus). For Redis, a
//! few pipeline batch sizes. Prints figures only; nothing is asserted (a
//! measurement, not a test).

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hub_core::{
    Backplane, BindContext, ConnectionId, Destination, GroupName, GroupProvider, HubMetrics,
    LocalGroups, Member, MemberInfo, NodeId, Outbox, SlowConsumerPolicy,
};

type Error = Box<dyn std::error::Error>;

const SENDERS: usize = 256;
const RUN: Duration = Duration::from_secs(3);
const PAYLOAD: usize = 100;

/// One hub server's backplane, its members and counters.
struct Server {
    bp: Arc<dyn Backplane>,
    local: Arc<LocalGroups>,
    metrics: Arc<HubMetrics>,
}

fn bind(provider: &dyn GroupProvider) -> Result<Server, Error> {
    let local = Arc::new(LocalGroups::new(NodeId::random()));
    let metrics = Arc::new(HubMetrics::default());
    let bp = provider.bind(BindContext {
        hub: "bench.v1.Bench",
        local: local.clone(),
        metrics: metrics.clone(),
        events: Default::default(),
    })?;
    Ok(Server { bp, local, metrics })
}

/// Adds one member to `group` on `server`, its queue drained as fast as it fills.
async fn member(server: &Server, group: &GroupName) -> Result<(), Error> {
    let id = ConnectionId {
        node: server.local.node(),
        local: 1,
    };
    let (outbox, mut rx) = Outbox::new(
        1 << 16,
        SlowConsumerPolicy::DropNewest,
        server.metrics.clone(),
    );
    server.local.register(Member {
        id,
        user: None,
        outbox,
    });
    server.local.join(group, id);
    let info = MemberInfo {
        connection: id,
        user: None,
    };
    if let Some(f) = server.bp.joined(group, &info, true) {
        f.await?;
    }
    tokio::spawn(async move { while poll_fn(|cx| rx.poll_next(cx)).await.is_some() {} });
    Ok(())
}

/// Publishes from `SENDERS` tasks for `RUN`, then prints the rates.
async fn run(label: &str, sender: Server, receiver: Server) -> Result<(), Error> {
    let group = GroupName::new("room")?;
    member(&receiver, &group).await?;
    let frame = Bytes::from(vec![7u8; PAYLOAD]);
    let dest = Arc::new(Destination::group(group));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sender = Arc::new(sender);
    let start = Instant::now();
    let tasks: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (sender, frame, dest) = (sender.clone(), frame.clone(), dest.clone());
            let (ok, failed) = (ok.clone(), failed.clone());
            tokio::spawn(async move {
                while start.elapsed() < RUN {
                    let done = match sender.bp.publish(&dest, &frame) {
                        Some(f) => f.await.is_ok(),
                        None => false,
                    };
                    if done { &ok } else { &failed }.fetch_add(1, Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    // Let what is in flight arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = ok.load(Relaxed);
    println!(
        "{label}: {:>8.0} publishes/s of {PAYLOAD} B ({n} ok, {} failed), {} received by the other server",
        n as f64 / secs,
        failed.load(Relaxed),
        receiver.metrics.snapshot().backplane_received,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "redis".into());
    match which.as_str() {
        "redis" => {
            let redis = test_support::RedisServer::start();
            for batch in [1, 16, 128] {
                let provider = hub_redis::RedisProvider::builder()
                    .url(redis.url())
                    .max_batch(batch)
                    .build()?;
                let (a, b) = (bind(&provider)?, bind(&provider)?);
                run(&format!("redis max_batch {batch:>3}"), a, b).await?;
            }
        }
        "nats" => {
            let nats = test_support::NatsServer::start();
            let a = hub_nats::NatsProvider::connect(&nats.url()).await?;
            let b = hub_nats::NatsProvider::connect(&nats.url()).await?;
            run("nats", bind(&a)?, bind(&b)?).await?;
        }
        "bus" => {
            let bus = hub_core::bus::Bus::new();
            run("bus", bind(&bus)?, bind(&bus)?).await?;
        }
        other => return Err(format!("unknown backplane {other:?}: redis, nats or bus").into()),
    }
    Ok(())
}
