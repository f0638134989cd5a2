//! Run with: `cargo run -p hub-bench --example ask_rate -- --secs 3 --in-flight 8`
//!
//! Asks per second, and their latency, for a single target on the same server and on
//! another server (the in-process bus, or `--redis URL` / `--nats URL`), next to plain
//! hub calls (`members` on the chat hub with in-memory groups, a round trip through
//! the same connection machinery). One JSON line per measurement. The chat hub and clients run in this
//! process; the target client answers every ready check at once.
//!
//! The hub's inbound rate limits are off here: an answer is a request frame, and the
//! default 200 frames/s per connection would be the figure measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use examples::chat::chat_hub_client::{ChatHubClient, ChatHubReceiver};
use examples::chat::chat_hub_server::ChatHubHandle;
use examples::chat::{JoinRequest, ReadyAnswer, ReadyCheck};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hub_server::{AskOutcome, ConnectionId, GroupProvider, HubConfig, Hubs};
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Asks (or calls) kept outstanding.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Run the cross-server case on Redis at this URL instead of the in-process bus.
    #[arg(long)]
    redis: Option<String>,
    /// Run the cross-server case on NATS at this URL instead of the in-process bus.
    #[arg(long)]
    nats: Option<String>,
}

const SECRET: &str = "the ask benchmark's token secret (not a real one)";

struct Yes;

impl ChatHubReceiver for Yes {
    async fn ready_check(&self, _m: ReadyCheck) -> Result<ReadyAnswer, tonic::Status> {
        Ok(ReadyAnswer { ready: true })
    }
}

struct Server {
    url: String,
    handle: ChatHubHandle,
}

async fn serve(provider: Arc<dyn GroupProvider>) -> Server {
    let mut config = HubConfig::default();
    config.inbound_calls = None;
    config.inbound_bytes = None;
    config.max_asks_per_target = 1024;
    let hubs = Hubs::builder()
        .default_groups_arc(provider)
        .config(config)
        .build();
    let secret = examples::auth::TokenSecret::new(SECRET.as_bytes()).expect("secret");
    let svc = examples::chat_service(&hubs, &secret).expect("hub");
    let login = examples::login_service(&secret, examples::DEFAULT_TOKEN_TTL);
    let handle = svc.handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .add_service(login)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    Server { url, handle }
}

async fn client(url: &str, user: &str) -> ChatHubClient {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let token = examples::login::chat_login_client::ChatLoginClient::new(channel.clone())
        .login(examples::login::LoginRequest { user: user.into() })
        .await
        .expect("login")
        .into_inner()
        .token;
    let options = hub_client::ConnectOptions::default()
        .metadata("authorization", &format!("Bearer {token}"))
        .expect("metadata");
    let c = ChatHubClient::connect_with(channel, options, Yes)
        .await
        .expect("hub");
    c.join(JoinRequest {
        room: "bench".into(),
    })
    .await
    .expect("join");
    c
}

/// Runs `op` with `in_flight` outstanding for `secs`; returns a JSON line.
async fn measure<F, Fut>(what: &str, secs: f64, in_flight: usize, op: F) -> serde_json::Value
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut lat: Vec<u64> = Vec::new();
    let mut failed = 0u64;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let mut outstanding = FuturesUnordered::new();
    let timed = |op: &F| {
        let fut = op();
        async move {
            let s = Instant::now();
            let ok = fut.await;
            (ok, s.elapsed().as_nanos() as u64)
        }
    };
    for _ in 0..in_flight {
        outstanding.push(timed(&op));
    }
    while let Some((ok, ns)) = outstanding.next().await {
        if ok {
            lat.push(ns);
        } else {
            failed += 1;
        }
        if Instant::now() < end {
            outstanding.push(timed(&op));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|n| (*n as f64 / 1e4).round() / 100.0)
    };
    json!({
        "workload": what,
        "in_flight": in_flight,
        "done": lat.len(),
        "failed": failed,
        "per_sec": (lat.len() as f64 / secs).round(),
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
    })
}

async fn ask(handle: &ChatHubHandle, target: ConnectionId) -> bool {
    let r = handle
        .connection(target)
        .ready_check(ReadyCheck {
            room: "bench".into(),
            from: "bench".into(),
        })
        .await;
    matches!(r.as_deref(), Ok([one]) if matches!(one.outcome, AskOutcome::Answered(_)))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let bus = hub_core::bus::Bus::new();
    let (remote_name, p0, p1): (&str, Arc<dyn GroupProvider>, Arc<dyn GroupProvider>) =
        if let Some(url) = &args.redis {
            let make = || -> Arc<dyn GroupProvider> {
                Arc::new(
                    hub_redis::RedisProvider::builder()
                        .url(url.clone())
                        .build()
                        .expect("redis"),
                )
            };
            ("redis", make(), make())
        } else if let Some(url) = &args.nats {
            let make = || async {
                let p: Arc<dyn GroupProvider> =
                    Arc::new(hub_nats::NatsProvider::connect(url).await.expect("nats"));
                p
            };
            ("nats", make().await, make().await)
        } else {
            ("bus", bus.provider(), bus.provider())
        };
    let s0 = serve(p0).await;
    let s1 = serve(p1).await;
    // The calls baseline on a server of its own with in-memory groups: `members` then
    // touches no backplane, only the connection's call path.
    let plain = serve(Arc::new(hub_server::MemoryProvider)).await;
    let caller = client(&plain.url, "caller").await;
    let local = client(&s0.url, "local").await;
    let remote = client(&s1.url, "remote").await;
    let local_id: ConnectionId = local.connection_id().parse().expect("id");
    let remote_id: ConnectionId = remote.connection_id().parse().expect("id");
    let (secs, n) = (args.secs, args.in_flight);

    let calls = measure("hub calls (members)", secs, n, || {
        let c = caller.clone();
        async move { c.members().await.is_ok() }
    })
    .await;
    println!("{calls}");
    let same = measure("ask, same server", secs, n, || ask(&s0.handle, local_id)).await;
    println!("{same}");
    let across = measure(
        &format!("ask, across servers ({remote_name})"),
        secs,
        n,
        || ask(&s0.handle, remote_id),
    )
    .await;
    println!("{across}");
    let m = s0.handle.metrics();
    eprintln!(
        "asks {} answered {} timed out {} refused {}",
        m.asks, m.asks_answered, m.asks_timed_out, m.asks_refused
    );
}
