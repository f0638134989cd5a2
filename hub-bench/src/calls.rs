//! The calls workload: clients making echo calls, each keeping `in_flight` calls
//! outstanding, against the bench hub or a raw tonic bidi echo.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;
use tokio::sync::mpsc;

use crate::bench::bench_hub_client::BenchHubClient;
use crate::bench::bench_request::Call;
use crate::bench::bench_response::Event;
use crate::bench::{BenchRequest, Echo};
use crate::fanout::start_servers;
use crate::proc::BenchChild;
use crate::stats::{now_nanos, quantile_ms, round};
use crate::{BoxError, Kind, hub, proc, raw};

/// Parameters of one calls run.
#[derive(Debug, Clone, clap::Args)]
pub struct CallsArgs {
    /// `hub` or `raw` (hand-written tonic bidi echo).
    #[arg(long, value_enum, default_value_t = Kind::Hub)]
    pub kind: Kind,
    /// The client with `--kind hub`: `hub` (the hub client runtime) or `raw` (a plain
    /// tonic stream sending the same frames, as the raw baseline's client does).
    #[arg(long, value_enum, default_value_t = Kind::Hub)]
    pub client: Kind,
    /// Client connections.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Calls each client keeps outstanding.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Payload bytes per call.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Seconds of calls.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Call a server already running there (`hub-bench serve`, e.g. under a profiler)
    /// instead of starting one; its CPU is then not measured.
    #[arg(long)]
    pub server: Option<std::net::SocketAddr>,
}

/// Runs one calls workload and returns its JSON line.
pub async fn run(a: &CallsArgs) -> Result<serde_json::Value, BoxError> {
    if a.clients == 0 || a.in_flight == 0 {
        return Err("clients and in-flight must be at least 1".into());
    }
    let (servers, addr) = match a.server {
        Some(addr) => (Vec::new(), addr),
        None => {
            let (servers, addrs) = start_servers(a.kind, 1, "memory", &[])?;
            (servers, addrs[0])
        }
    };
    let server_cpu = || servers.iter().map(BenchChild::cpu_secs).sum::<f64>();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let payload: Vec<u8> = vec![b'x'; a.payload];
    let duration = Duration::from_secs_f64(a.secs);
    let stop = Arc::new(AtomicBool::new(false));

    let cpu0;
    let t0;
    let raw_client = a.kind == Kind::Raw || a.client == Kind::Raw;
    let tasks: Vec<tokio::task::JoinHandle<Vec<u64>>> = match raw_client {
        false => {
            let clients: Vec<_> = futures_util::stream::iter(0..a.clients)
                .map(|_| hub::connect(addr, ()))
                .buffer_unordered(32)
                .try_collect()
                .await?;
            cpu0 = (server_cpu(), proc::self_cpu_secs());
            t0 = Instant::now();
            let mut tasks = Vec::new();
            for c in clients {
                // One task per client keeping `in_flight` calls outstanding, as the raw
                // client does: `in_flight` loops in one task, each making its next call
                // when its last one is answered (as the game logic sharing a client
                // does; a future per call pushed into a `FuturesUnordered` would add an
                // allocation per call, which is the harness's cost, not the client's).
                let (stop, payload, in_flight) = (stop.clone(), payload.clone(), a.in_flight);
                tasks.push(tokio::spawn(async move {
                    let caller = |c: BenchHubClient| {
                        let (stop, payload) = (stop.clone(), payload.clone());
                        async move {
                            let mut lat = Vec::new();
                            while !stop.load(Relaxed) {
                                let sent = now_nanos();
                                let req = Echo {
                                    sent_at_nanos: sent,
                                    payload: payload.clone(),
                                };
                                if c.echo(req).await.is_err() {
                                    break;
                                }
                                lat.push(now_nanos() - sent);
                            }
                            lat
                        }
                    };
                    let mut callers: FuturesUnordered<_> =
                        (0..in_flight).map(|_| caller(c.clone())).collect();
                    let mut lat = Vec::new();
                    while let Some(l) = callers.next().await {
                        lat.extend(l);
                    }
                    lat
                }));
            }
            tasks
        }
        true => {
            let mut streams = Vec::new();
            for _ in 0..a.clients {
                let (tx, rx) = mpsc::channel(a.in_flight + 1);
                streams.push((
                    tx,
                    raw::echo(hub::channel(addr).await?, rx, a.kind == Kind::Hub).await?,
                ));
            }
            cpu0 = (server_cpu(), proc::self_cpu_secs());
            t0 = Instant::now();
            let mut tasks = Vec::new();
            for (tx, mut replies) in streams {
                let (stop, payload, in_flight) = (stop.clone(), payload.clone(), a.in_flight);
                let request = move |id: u64| BenchRequest {
                    id,
                    control: None,
                    call: Some(Call::Echo(Echo {
                        sent_at_nanos: now_nanos(),
                        payload: payload.clone(),
                    })),
                };
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut next_id = 0;
                    for _ in 0..in_flight {
                        next_id += 1;
                        if tx.send(request(next_id)).await.is_err() {
                            return lat;
                        }
                    }
                    let mut outstanding = in_flight;
                    while outstanding > 0 {
                        let Ok(Some(reply)) = replies.message().await else {
                            break;
                        };
                        // The hub's hello (id 0) is not an answer.
                        let Some(Event::Echo(e)) = reply.event else {
                            continue;
                        };
                        outstanding -= 1;
                        lat.push(now_nanos() - e.sent_at_nanos);
                        if !stop.load(Relaxed) {
                            next_id += 1;
                            if tx.send(request(next_id)).await.is_err() {
                                break;
                            }
                            outstanding += 1;
                        }
                    }
                    lat
                }));
            }
            tasks
        }
    };
    tokio::time::sleep(duration.saturating_sub(t0.elapsed())).await;
    stop.store(true, Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu_s = server_cpu() - cpu0.0;
    let client_cpu_s = proc::self_cpu_secs() - cpu0.1;
    drop(servers);
    lat.sort_unstable();
    let calls = lat.len() as f64;
    Ok(json!({
        "peer": match (a.kind, raw_client) {
            (Kind::Hub, false) => "hub",
            (Kind::Hub, true) => "hub (raw client)",
            (Kind::Raw, _) => "raw-tonic",
        },
        "workload": "calls",
        "kind": a.kind.as_str(),
        "client": if raw_client { "raw" } else { "hub" },
        "clients": a.clients,
        "in_flight": a.in_flight,
        "payload": a.payload,
        "calls": lat.len(),
        "secs": round(secs, 3),
        "calls_per_sec": (calls / secs).round(),
        "p50_ms": quantile_ms(&lat, 0.5),
        "p99_ms": quantile_ms(&lat, 0.99),
        "server_cpu_s": round(cpu_s, 3),
        "server_cpu_s_per_million_calls": (calls > 0.0).then(|| round(cpu_s / calls * 1e6, 2)),
        "client_cpu_s": round(client_cpu_s, 3),
        "client_cpu_s_per_million_calls": (calls > 0.0).then(|| round(client_cpu_s / calls * 1e6, 2)),
    }))
}
