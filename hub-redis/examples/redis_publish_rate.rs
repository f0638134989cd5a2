//! Run with: `cargo run --release -p hub-redis --example redis_publish_rate`
//!
//! Measures how many publishes per second one hub's Redis backplane sustains against
//! a local `redis-server` (started on a free port), with many concurrent senders, for
//! a few batch sizes. A second backplane subscribed to the group counts what arrives.
//! Prints figures only; nothing is asserted.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hub_core::{
    BindContext, ConnectionId, Destination, GroupName, GroupProvider, HubMetrics, LocalGroups,
    Member, MemberInfo, NodeId, Outbox, SlowConsumerPolicy,
};
use hub_redis::RedisProvider;

const SENDERS: usize = 256;
const RUN: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis = test_support::RedisServer::start();
    for batch in [1, 16, 128] {
        let provider = RedisProvider::builder()
            .url(redis.url())
            .max_batch(batch)
            .build()?;
        let bind = |node: NodeId| {
            let local = Arc::new(LocalGroups::new(node));
            let metrics = Arc::new(HubMetrics::default());
            let bp = provider.bind(BindContext {
                hub: "bench.v1.Bench",
                local: local.clone(),
                metrics: metrics.clone(),
                events: Default::default(),
            });
            bp.map(|bp| (bp, local, metrics))
        };
        let (sender, _, _) = bind(NodeId::random())?;
        let (receiver, local, metrics) = bind(NodeId::random())?;
        // One member on the receiving server, its queue drained as fast as it fills.
        let group = GroupName::new("room")?;
        let id = ConnectionId {
            node: local.node(),
            local: 1,
        };
        let (outbox, mut rx) =
            Outbox::new(1 << 16, SlowConsumerPolicy::DropNewest, metrics.clone());
        local.register(Member {
            id,
            user: None,
            outbox,
        });
        local.join(&group, id);
        let info = MemberInfo {
            connection: id,
            user: None,
        };
        if let Some(f) = receiver.joined(&group, &info, true) {
            f.await?;
        }
        tokio::spawn(async move { while poll_fn(|cx| rx.poll_next(cx)).await.is_some() {} });

        let frame = Bytes::from(vec![7u8; 100]);
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..SENDERS)
            .map(|_| {
                let (sender, frame) = (sender.clone(), frame.clone());
                let dest = Destination::group(group.clone());
                let (ok, failed) = (ok.clone(), failed.clone());
                tokio::spawn(async move {
                    while start.elapsed() < RUN {
                        let result = match sender.publish(&dest, &frame) {
                            Some(f) => f.await.is_ok(),
                            None => false,
                        };
                        if result {
                            ok.fetch_add(1, Relaxed);
                        } else {
                            failed.fetch_add(1, Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await?;
        }
        let secs = start.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = ok.load(Relaxed);
        println!(
            "max_batch {batch:>3}: {:>8.0} publishes/s ({n} ok, {} failed), {} received by the other server",
            n as f64 / secs,
            failed.load(Relaxed),
            metrics.snapshot().backplane_received,
        );
    }
    Ok(())
}
