//! The fan-out workload: the peers' bench (`shared/peers/socketio/bench.js`) against
//! hub servers (or the raw tonic baseline).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;

use crate::bench::bench_request::Call;
use crate::bench::bench_response::Event;
use crate::bench::{BenchRequest, JoinRequest, PublishRequest, Tick};
use crate::proc::{self, BenchChild};
use crate::stats::{Tracker, now_nanos, quantile_ms, round};
use crate::{BoxError, Kind, hub, raw};

/// The group every member joins.
const GROUP: &str = "bench";
/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 32;

/// Parameters of one fan-out run.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// `hub` or `raw` (hand-written tonic service; one server, no backplane).
    #[arg(long, value_enum, default_value_t = Kind::Hub)]
    pub kind: Kind,
    /// The members' client with `--kind hub`: `hub` (the hub client runtime) or `raw`
    /// (a plain tonic stream decoding the same frames, as the raw baseline's members do).
    #[arg(long, value_enum, default_value_t = Kind::Hub)]
    pub client: Kind,
    /// Hub server processes (1 to 3); members are spread over them.
    #[arg(long, default_value_t = 2)]
    pub servers: usize,
    /// Group provider: `memory`, `redis`, `nats` (a server of our own on a free
    /// loopback port), or a `redis://` / `nats://` URL.
    #[arg(long, default_value = "memory")]
    pub groups: String,
    /// Members of the group.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Broadcasts kept in flight by the publisher.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Payload bytes per broadcast.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Broadcasts. The default (4 M deliveries with 200 members, a few seconds) is
    /// long enough for runs to agree within a few percent; the peers' bench uses 2,000.
    #[arg(long, default_value_t = 20_000)]
    pub broadcasts: u64,
    /// The hub broadcasts from a spawned task and answers `publish` at once (see
    /// `hub::Bench::detach_publish`): an experiment, not the peers' workload.
    #[arg(long)]
    pub detach_publish: bool,
    /// With a Redis or NATS provider: keep each group's history in Redis
    /// (`RedisProviderBuilder::history(1000, 60 s)`) or JetStream
    /// (`NatsProviderBuilder::history(1000, 60 s)`), to weigh its cost.
    #[arg(long)]
    pub history: bool,
    /// Give up after this many seconds of publishing (the run is then incomplete).
    #[arg(long, default_value_t = 60)]
    pub deadline_s: u64,
}

/// A Redis or NATS server of our own, stopped on drop.
enum Backplane {
    None,
    Redis(#[allow(dead_code)] test_support::RedisServer),
    Nats(#[allow(dead_code)] test_support::NatsServer),
}

fn backplane(groups: &str) -> (Backplane, String) {
    match groups {
        "redis" => {
            let r = test_support::RedisServer::start();
            let url = r.url();
            (Backplane::Redis(r), url)
        }
        "nats" => {
            let n = test_support::NatsServer::start();
            let url = n.url();
            (Backplane::Nats(n), url)
        }
        other => (Backplane::None, other.to_owned()),
    }
}

fn provider_name(groups: &str) -> &str {
    if groups.starts_with("redis") {
        "redis"
    } else if groups.starts_with("nats") {
        "nats"
    } else {
        groups
    }
}

/// Starts `n` servers of `kind` with `groups`; returns them with their addresses.
pub fn start_servers(
    kind: Kind,
    n: usize,
    groups: &str,
    extra: &[&str],
) -> Result<(Vec<BenchChild>, Vec<SocketAddr>), BoxError> {
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..n {
        let mut args = vec![
            "serve".to_owned(),
            "--kind".to_owned(),
            kind.as_str().to_owned(),
            "--groups".to_owned(),
            groups.to_owned(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let mut child = BenchChild::spawn(&args)?;
        addrs.push(child.listening(Duration::from_secs(30))?);
        servers.push(child);
    }
    Ok((servers, addrs))
}

/// Runs one fan-out and returns its JSON line.
pub async fn run(a: &FanoutArgs) -> Result<serde_json::Value, BoxError> {
    if a.servers == 0 || a.clients == 0 || a.window == 0 || a.broadcasts == 0 {
        return Err("servers, clients, window and broadcasts must be at least 1".into());
    }
    let provider = provider_name(&a.groups).to_owned();
    if a.servers > 1 && (a.kind == Kind::Raw || provider == "memory") {
        return Err(format!(
            "{} groups do not cross servers: use --servers 1 (or a redis/nats provider)",
            if a.kind == Kind::Raw {
                "raw tonic"
            } else {
                "in-memory"
            }
        )
        .into());
    }
    let (backplane, mut groups_url) = backplane(&a.groups);
    if a.history {
        groups_url = if let Some(addr) = groups_url.strip_prefix("redis://") {
            format!("redis-history://{addr}")
        } else if let Some(addr) = groups_url.strip_prefix("nats://") {
            format!("nats-history://{addr}")
        } else {
            return Err("--history needs a Redis or NATS provider".into());
        };
    }
    let backplane_pid = match &backplane {
        Backplane::Redis(r) => r.pid(),
        Backplane::Nats(n) => n.pid(),
        Backplane::None => None,
    };
    let backplane_cpu = || backplane_pid.map(proc::cpu_secs);
    let extra: &[&str] = if a.detach_publish {
        &["--detach-publish"]
    } else {
        &[]
    };
    let (servers, addrs) = start_servers(a.kind, a.servers, &groups_url, extra)?;
    // Let the servers finish starting (backplane connections) before counting CPU.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = || servers.iter().map(BenchChild::cpu_secs).sum::<f64>();
    let cpu0 = cpu();
    let backplane_cpu0 = backplane_cpu();
    let client_cpu0 = proc::self_cpu_secs();

    let tracker = Arc::new(Tracker::new(a.clients as u32, a.broadcasts, a.window));
    let payload = vec![b'x'; a.payload];
    let deadline = Duration::from_secs(a.deadline_s);
    let (complete, secs) = match a.kind {
        Kind::Hub => run_hub(a, &addrs, &tracker, payload, deadline).await?,
        Kind::Raw => run_raw(a, &addrs, &tracker, payload, deadline).await?,
    };
    let cpu_s = cpu() - cpu0;
    let backplane_cpu_s = backplane_cpu().zip(backplane_cpu0).map(|(b, b0)| b - b0);
    let client_cpu_s = proc::self_cpu_secs() - client_cpu0;
    drop(servers);

    let done = tracker.done();
    let lat = tracker.sorted_latencies();
    let delivered = done * a.clients as u64;
    let peer = match a.kind {
        Kind::Hub => {
            format!(
                "hub+{provider}{}{}",
                if a.client == Kind::Raw {
                    " (raw client)"
                } else {
                    ""
                },
                if a.detach_publish {
                    " (detached publish)"
                } else {
                    ""
                }
            ) + if a.history { " (history)" } else { "" }
        }
        Kind::Raw => "raw-tonic".to_owned(),
    };
    Ok(json!({
        "peer": peer,
        "workload": "fanout",
        "kind": a.kind.as_str(),
        "client": if a.kind == Kind::Raw { "raw" } else { a.client.as_str() },
        "groups": provider,
        "detach_publish": a.detach_publish,
        "servers": a.servers,
        "clients": a.clients,
        "broadcasts": a.broadcasts,
        "window": a.window,
        "payload": a.payload,
        "complete": complete,
        "broadcasts_completed": done,
        "deliveries": a.broadcasts * a.clients as u64,
        "deliveries_seen": tracker.deliveries(),
        "secs": round(secs, 3),
        "deliveries_per_sec": (delivered as f64 / secs).round(),
        "p50_ms": quantile_ms(&lat, 0.5),
        "p99_ms": quantile_ms(&lat, 0.99),
        "server_cpu_s": round(cpu_s, 3),
        "server_cpu_s_per_million_deliveries": (delivered > 0).then(|| round(cpu_s / delivered as f64 * 1e6, 2)),
        "history": a.history,
        "backplane_cpu_s": backplane_cpu_s.map(|c| round(c, 3)),
        "backplane_cpu_s_per_million_deliveries": backplane_cpu_s
            .filter(|_| delivered > 0)
            .map(|c| round(c / delivered as f64 * 1e6, 2)),
        "client_cpu_s": round(client_cpu_s, 3),
        "client_cpu_s_per_million_deliveries": (delivered > 0).then(|| round(client_cpu_s / delivered as f64 * 1e6, 2)),
    }))
}

/// Publishes `broadcasts` ticks, never more than `window` incomplete, through `send`;
/// returns whether all completed before `deadline`, and the seconds it took.
async fn pump<F, Fut>(
    a: &FanoutArgs,
    tracker: &Tracker,
    payload: Vec<u8>,
    deadline: Duration,
    mut send: F,
) -> Result<(bool, f64), BoxError>
where
    F: FnMut(Tick) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    let t0 = Instant::now();
    let end = tokio::time::Instant::now() + deadline;
    let all_done = tracker.all_done.notified();
    tokio::pin!(all_done);
    all_done.as_mut().enable();
    let publish = async {
        for seq in 0..a.broadcasts {
            tracker.window.acquire().await?.forget();
            send(Tick {
                seq,
                sent_at_nanos: now_nanos(),
                payload: payload.clone(),
            })
            .await?;
        }
        Ok::<_, BoxError>(())
    };
    let finished = tokio::time::timeout_at(end, async {
        publish.await?;
        if tracker.done() < a.broadcasts {
            all_done.await;
        }
        Ok::<_, BoxError>(())
    })
    .await;
    let secs = t0.elapsed().as_secs_f64();
    match finished {
        Ok(r) => r.map(|()| (true, secs)),
        Err(_) => Ok((false, secs)),
    }
}

async fn run_hub(
    a: &FanoutArgs,
    addrs: &[SocketAddr],
    tracker: &Arc<Tracker>,
    payload: Vec<u8>,
    deadline: Duration,
) -> Result<(bool, f64), BoxError> {
    let raw_client = a.client == Kind::Raw;
    let members: Vec<Member> = futures_util::stream::iter(0..a.clients)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            let tracker = tracker.clone();
            async move {
                if raw_client {
                    let (tx, stream) = raw::hub_member(hub::channel(addr).await?, GROUP).await?;
                    return Ok::<_, BoxError>(Member::Raw(tx, read_ticks(stream, tracker)));
                }
                let c = hub::connect(addr, hub::TickReceiver(tracker)).await?;
                c.join(JoinRequest {
                    group: GROUP.into(),
                })
                .await?;
                Ok::<_, BoxError>(Member::Hub(c))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    let publisher = hub::connect(addrs[0], ()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let result = pump(a, tracker, payload, deadline, |tick| {
        let publisher = &publisher;
        async move {
            publisher
                .send_publish(PublishRequest {
                    group: GROUP.into(),
                    tick: Some(tick),
                })
                .await?;
            Ok(())
        }
    })
    .await;
    for m in members {
        if let Member::Raw(_, reader) = m {
            reader.abort();
        }
    }
    result
}

/// A member of the hub's group, by the client it uses.
enum Member {
    /// The hub client runtime.
    Hub(#[allow(dead_code)] crate::bench::bench_hub_client::BenchHubClient),
    /// A plain tonic stream: the request side (kept open) and the reader task.
    Raw(
        #[allow(dead_code)] tokio::sync::mpsc::Sender<BenchRequest>,
        tokio::task::JoinHandle<()>,
    ),
}

/// Reads pushes from a plain tonic stream into the tracker.
fn read_ticks(
    mut stream: tonic::Streaming<crate::bench::BenchResponse>,
    tracker: Arc<Tracker>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(Some(msg)) = stream.message().await {
            if let Some(Event::OnTick(t)) = msg.event {
                tracker.delivered(t.seq, t.sent_at_nanos);
            }
        }
    })
}

async fn run_raw(
    a: &FanoutArgs,
    addrs: &[SocketAddr],
    tracker: &Arc<Tracker>,
    payload: Vec<u8>,
    deadline: Duration,
) -> Result<(bool, f64), BoxError> {
    let addr = addrs[0];
    let readers: Vec<_> = futures_util::stream::iter(0..a.clients)
        .map(|_| {
            let tracker = tracker.clone();
            async move {
                let stream = raw::subscribe(hub::channel(addr).await?).await?;
                Ok::<_, BoxError>(read_ticks(stream, tracker))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    let publisher = raw::publisher(hub::channel(addr).await?).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let result = pump(a, tracker, payload, deadline, |tick| {
        let publisher = &publisher;
        async move {
            let req = BenchRequest {
                id: 0,
                control: None,
                call: Some(Call::Publish(PublishRequest {
                    group: GROUP.into(),
                    tick: Some(tick),
                })),
            };
            publisher
                .send(req)
                .await
                .map_err(|_| "publish stream closed")?;
            Ok(())
        }
    })
    .await;
    for r in readers {
        r.abort();
    }
    result
}
