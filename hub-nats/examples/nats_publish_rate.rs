//! Run with: `cargo run --release -p hub-nats --example nats_publish_rate`
//!
//! Measures how fast one hub's NATS backplane publishes to a group and how fast a
//! second hub server (its own provider and connection) receives, against a local
//! `nats-server` started on a free port. 200,000 broadcasts of 100 bytes, one sender.
//! Prints figures only; nothing is asserted (a measurement, not a test).

use std::future::poll_fn;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hub_core::{
    Backplane, BindContext, ConnectionId, Destination, GroupName, GroupProvider, HubMetrics,
    LocalGroups, Member, MemberInfo, NodeId, Outbox, SlowConsumerPolicy,
};
use hub_nats::NatsProvider;

const N: usize = 200_000;

async fn bind(
    url: &str,
) -> Result<(Arc<dyn Backplane>, Arc<LocalGroups>, Arc<HubMetrics>), Box<dyn std::error::Error>> {
    let provider = NatsProvider::connect(url).await?;
    let local = Arc::new(LocalGroups::new(NodeId::random()));
    let metrics = Arc::new(HubMetrics::default());
    let bp = provider.bind(BindContext {
        hub: "bench.v1.Bench",
        local: local.clone(),
        metrics: metrics.clone(),
        events: Default::default(),
    })?;
    Ok((bp, local, metrics))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nats = test_support::NatsServer::start();
    let (sender, _, _) = bind(&nats.url()).await?;
    let (receiver, local, metrics) = bind(&nats.url()).await?;

    // One member on the receiving server, with a queue as long as the run.
    let group = GroupName::new("room")?;
    let id = ConnectionId {
        node: local.node(),
        local: 1,
    };
    let (outbox, mut rx) = Outbox::new(N, SlowConsumerPolicy::DropNewest, metrics.clone());
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

    let frame = Bytes::from(vec![7u8; 100]);
    let dest = Destination::group(group.clone());
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < N {
            let next = tokio::time::timeout(Duration::from_secs(5), poll_fn(|cx| rx.poll_next(cx)));
            match next.await {
                Ok(Some(_)) => n += 1,
                _ => break,
            }
        }
        (n, Instant::now())
    });
    let mut failed = 0;
    for _ in 0..N {
        if let Some(f) = sender.publish(&dest, &frame)
            && f.await.is_err()
        {
            failed += 1;
        }
    }
    let published = started.elapsed();
    let (n, done) = reader.await?;
    let total = done - started;
    println!(
        "published {N} x 100 B in {published:?} ({:.0}/s, {failed} failed); received {n} in {total:?} ({:.0}/s); receiver metrics {:?}",
        N as f64 / published.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        metrics.snapshot()
    );
    Ok(())
}
