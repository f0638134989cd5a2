//! The idle-connections workload: N connected clients that do nothing, spread over
//! client processes; the server's resident memory per connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use crate::bench::BenchRequest;
use crate::fanout::start_servers;
use crate::proc::{BenchChild, raise_nofile_limit};
use crate::stats::round;
use crate::{BoxError, Kind, hub, raw};

/// Connections a client process opens at once.
const CONNECT_CONCURRENCY: usize = 64;

/// Parameters of one idle-connections run.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnsArgs {
    /// `hub` (a hub connection each) or `raw` (one idle tonic bidi stream each).
    #[arg(long, value_enum, default_value_t = Kind::Hub)]
    pub kind: Kind,
    /// Idle connections.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Client processes the connections are spread over.
    #[arg(long, default_value_t = 4)]
    pub client_procs: usize,
    /// Give up if the clients are not all connected after this many seconds.
    #[arg(long, default_value_t = 180)]
    pub deadline_s: u64,
}

/// Runs one idle-connections workload and returns its JSON line.
pub async fn run(a: &ConnsArgs) -> Result<serde_json::Value, BoxError> {
    let nofile = raise_nofile_limit();
    let procs = a.client_procs.max(1);
    let (servers, addrs) = start_servers(a.kind, 1, "memory", &[])?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = &servers[0];
    let rss0 = server.rss_kib();
    let cpu0 = server.cpu_secs();
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for i in 0..procs {
        let n = a.conns / procs + usize::from(i < a.conns % procs);
        let args = vec![
            "conn-client".to_owned(),
            "--kind".to_owned(),
            a.kind.as_str().to_owned(),
            "--addr".to_owned(),
            addrs[0].to_string(),
            "--n".to_owned(),
            n.to_string(),
        ];
        clients.push(BenchChild::spawn(&args)?);
    }
    let deadline = Instant::now() + Duration::from_secs(a.deadline_s);
    let (mut connected, mut failed) = (0usize, 0usize);
    for c in &mut clients {
        let line = c.line(deadline.saturating_duration_since(Instant::now()))?;
        let mut parts = line.split_whitespace();
        if parts.next() != Some("READY") {
            return Err(format!("unexpected line from a client process: {line:?}").into());
        }
        connected += parts.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        failed += parts.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    // Let in-flight setup (hello frames, window updates) settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = server.rss_kib();
    let cpu_s = server.cpu_secs() - cpu0;
    for c in clients {
        c.stop(Duration::from_secs(5));
    }
    drop(servers);
    let per_conn = (rss1.saturating_sub(rss0)) as f64 / connected.max(1) as f64;
    Ok(json!({
        "peer": match a.kind { Kind::Hub => "hub", Kind::Raw => "raw-tonic" },
        "workload": "conns",
        "kind": a.kind.as_str(),
        "conns": a.conns,
        "client_procs": procs,
        "connected": connected,
        "failed": failed,
        "connect_secs": round(connect_secs, 3),
        "server_rss_before_kib": rss0,
        "server_rss_after_kib": rss1,
        "server_kib_per_conn": round(per_conn, 2),
        "server_cpu_s": round(cpu_s, 3),
        "nofile_limit": nofile,
    }))
}

/// Opens `n` idle connections to `addr`, prints `READY <connected> <failed>`, and
/// holds them until stdin closes.
pub async fn client(kind: Kind, addr: SocketAddr, n: usize) -> Result<(), BoxError> {
    raise_nofile_limit();
    let results: Vec<Result<Box<dyn std::any::Any + Send>, BoxError>> =
        futures_util::stream::iter(0..n)
            .map(|_| async move {
                let held: Box<dyn std::any::Any + Send> = match kind {
                    Kind::Hub => Box::new(hub::connect(addr, ()).await?),
                    Kind::Raw => {
                        let (tx, rx) = mpsc::channel::<BenchRequest>(1);
                        let stream = raw::echo(hub::channel(addr).await?, rx, false).await?;
                        Box::new((tx, stream))
                    }
                };
                Ok(held)
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect()
            .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        eprintln!("hub-bench conn-client: a connection failed: {e}");
    }
    println!("READY {ok} {}", n - ok);
    // Hold every connection until the bench closes our stdin.
    std::future::pending::<()>().await;
    drop(results);
    Ok(())
}
