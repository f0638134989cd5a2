//! The bench hub (`bench.v1.BenchHub`): join a group, publish a tick to it, echo.

use std::sync::Arc;
use std::time::Duration;

use hub_server::{GroupProvider, Hubs, MemoryProvider, SessionConfig};
use tokio::net::TcpListener;
use tonic::Status;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};

use crate::BoxError;
use crate::bench::bench_hub_client::{BenchHubClient, BenchHubReceiver};
use crate::bench::bench_hub_server::{BenchHub, BenchHubContext, BenchHubServer};
use crate::bench::{Echo, JoinRequest, PublishRequest, Tick};
use crate::stats::Tracker;

/// The bench hub: what the peers' servers do (join a room; broadcast on request), plus echo.
#[derive(Debug, Default, Clone, Copy)]
pub struct Bench {
    /// Broadcast from a spawned task and answer `publish` at once, instead of awaiting
    /// the broadcast in the call (`--detach-publish`). A connection's calls run one at a
    /// time, so awaiting a backplane's reply in `publish` paces the publisher by that
    /// round trip; this shows what the fan-out does without that pacing (the order of
    /// broadcasts is then not guaranteed).
    pub detach_publish: bool,
}

impl BenchHub for Bench {
    async fn join(&self, ctx: &BenchHubContext, request: JoinRequest) -> Result<(), Status> {
        ctx.join(&request.group).await?;
        Ok(())
    }

    async fn publish(&self, ctx: &BenchHubContext, request: PublishRequest) -> Result<(), Status> {
        let tick = request.tick.unwrap_or_default();
        let push = ctx.group(&request.group)?;
        if self.detach_publish {
            tokio::spawn(async move {
                if let Err(e) = push.on_tick(tick).await {
                    eprintln!("hub-bench: detached publish failed: {e}");
                }
            });
            return Ok(());
        }
        push.on_tick(tick).await?;
        Ok(())
    }

    async fn echo(&self, _ctx: &BenchHubContext, request: Echo) -> Result<Echo, Status> {
        Ok(request)
    }
}

/// The group provider named on the command line: `memory`, `redis://..` or `nats://..`.
pub async fn provider(spec: &str) -> Result<Arc<dyn GroupProvider>, BoxError> {
    if spec == "memory" {
        return Ok(Arc::new(MemoryProvider::new()));
    }
    if let Some(addr) = spec.strip_prefix("redis-history://") {
        // Group history on (1,000 entries, a minute), as `fanout --history` asks.
        return Ok(Arc::new(
            hub_redis::RedisProvider::builder()
                .url(format!("redis://{addr}"))
                .history(1_000, Duration::from_secs(60))
                .connect()
                .await?,
        ));
    }
    if spec.contains(',') {
        // Several brokers, groups sharded over them (`hub_core::shard::Sharded`).
        let mut shards = Vec::new();
        for one in spec.split(',') {
            shards.push(Box::pin(provider(one)).await?);
        }
        return Ok(Arc::new(hub_core::shard::Sharded::new(shards)));
    }
    if spec.starts_with("redis://") {
        return Ok(Arc::new(hub_redis::RedisProvider::connect(spec).await?));
    }
    if let Some(addr) = spec.strip_prefix("nats-history://") {
        // Group history in JetStream (1,000 per group, a minute), as `fanout --history` asks.
        return Ok(Arc::new(
            hub_nats::NatsProvider::builder()
                .history(1_000, Duration::from_secs(60))
                .connect(&format!("nats://{addr}"))
                .await?,
        ));
    }
    if spec.starts_with("nats://") {
        return Ok(Arc::new(hub_nats::NatsProvider::connect(spec).await?));
    }
    Err(
        format!("unsupported groups {spec:?}: memory, redis://HOST:PORT or nats://HOST:PORT, or several of those joined by commas (sharded)")
            .into(),
    )
}

/// Serves the bench hub on `listener` with `groups` until the process exits; with
/// `session_grace`, the hub keeps sessions (the default `SessionConfig` but for
/// its grace, and `connection_history`) so that a dropped client can resume.
pub async fn serve(
    listener: TcpListener,
    groups: &str,
    hub: Bench,
    session_grace: Option<Duration>,
    connection_history: bool,
) -> Result<(), BoxError> {
    // A benchmark measures throughput: no per-connection inbound rate limits (the
    // defaults refuse a client past 200 calls/s), and no bound on the calls a
    // connection may queue (the default 64 refuses the rooms publisher, which sends
    // `publish` fire-and-forget at the schedule's rate, as the peers' servers buffer).
    let config = hub_server::HubConfig::default()
        .max_queued_calls(1 << 20)
        .inbound_calls(None)
        .inbound_bytes(None)
        .flood(0, std::time::Duration::ZERO)
        .sessions(session_grace.map(|g| {
            SessionConfig::default()
                .grace(g)
                .connection_history(connection_history)
        }));
    let hubs = Hubs::builder()
        .default_groups_arc(provider(groups).await?)
        .config(config)
        .build();
    let svc = BenchHubServer::builder(hub).hubs(&hubs).build()?;
    tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}

/// A channel (one HTTP/2 connection) to `addr`.
pub async fn channel(addr: std::net::SocketAddr) -> Result<Channel, BoxError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// Feeds the ticks a fan-out member receives to the tracker.
pub struct TickReceiver(pub Arc<Tracker>);

impl BenchHubReceiver for TickReceiver {
    fn on_tick(&self, tick: Tick) {
        self.0.delivered(tick.seq, tick.sent_at_nanos);
    }
}

/// Connects a hub client to `addr`.
pub async fn connect(
    addr: std::net::SocketAddr,
    receiver: impl BenchHubReceiver,
) -> Result<BenchHubClient, BoxError> {
    Ok(BenchHubClient::connect(channel(addr).await?, receiver).await?)
}
