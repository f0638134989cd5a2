//! The rooms workload (a game server's): R rooms of M members spread over S hub
//! server processes joined by a Redis backplane, and an emitter outside the servers
//! (`hub_redis::RedisEmitter` under the generated `BenchHubEmitter`) pushing one tick
//! to every room F times a second.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bench::bench_hub_client::{BenchHubClient, BenchHubReceiver};
use crate::bench::bench_hub_emitter::BenchHubEmitter;
use crate::bench::{JoinRequest, Tick};
use crate::proc::{self, BenchChild};
use crate::stats::{now_nanos, quantile_ms, round};
use crate::{BoxError, Kind, fanout, hub};

/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 32;
/// Publishes of one PUBLISH ceiling run.
const CEILING_PUBLISHES: u64 = 300_000;
/// Bytes an envelope adds to a tick's payload on the backplane (origin, destination,
/// frame header), roughly: the ceiling publishes payload plus this.
const ENVELOPE_OVERHEAD: usize = 64;

/// Parameters of one rooms run.
#[derive(Debug, Clone, clap::Args)]
pub struct RoomsArgs {
    /// Rooms.
    #[arg(long, default_value_t = 500)]
    pub rooms: usize,
    /// Members of each room, spread over the servers (member `m` of room `r` on
    /// server `(r * members + m) % servers`).
    #[arg(long, default_value_t = 4)]
    pub members: usize,
    /// Hub server processes.
    #[arg(long, default_value_t = 2)]
    pub servers: usize,
    /// Ticks per second: each is one push to every room.
    #[arg(long, default_value_t = 20)]
    pub hz: u32,
    /// Payload bytes per push.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Seconds of ticking.
    #[arg(long, default_value_t = 5)]
    pub secs: u64,
    /// Seconds to wait after the last tick for its pushes to arrive.
    #[arg(long, default_value_t = 5)]
    pub drain_s: u64,
    /// The backplane between the servers and the emitter.
    #[arg(long, value_enum, default_value_t = RoomsBackplane::Redis)]
    pub backplane: RoomsBackplane,
    /// Backplane servers the rooms are sharded over (`hub_core::shard::Sharded` in the
    /// hub servers, `ShardedEmit` in the emitter); the ceiling is measured on the
    /// first one and multiplied by this.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
}

/// The backplane of a rooms run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoomsBackplane {
    /// A redis-server; the emitter is a `RedisEmitter`; the ceiling is
    /// redis-benchmark's pipelined `PUBLISH`.
    Redis,
    /// A nats-server; the emitter is a `NatsEmitter`; the ceiling is an async-nats
    /// publisher sending as fast as the client takes them, then a flush.
    Nats,
}

/// A running backplane server of a rooms run (stopped when dropped).
#[allow(clippy::large_enum_variant)]
enum BackplaneServer {
    Redis(test_support::RedisServer),
    Nats(#[allow(dead_code)] test_support::NatsServer),
}

/// Counts deliveries per room push (slot `tick * rooms + room`; tick 0 is the
/// warm-up, not measured).
struct RoomTracker {
    /// Members per room: deliveries that complete one push.
    members: u32,
    /// Pushes of the warm-up tick (slots below this are not measured).
    warmup: u64,
    /// Deliveries per slot.
    counts: Vec<AtomicU32>,
    /// Measured pushes delivered to every member.
    complete: AtomicU64,
    /// Warm-up pushes delivered to every member.
    warm: AtomicU64,
    /// Measured deliveries.
    deliveries: AtomicU64,
    /// Send-to-delivery latency of each measured delivery, in nanoseconds.
    latencies: Mutex<Vec<u64>>,
    /// When the last measured push completed, in `now_nanos`.
    last_complete: AtomicU64,
}

impl RoomTracker {
    fn delivered(&self, slot: u64, sent_at_nanos: u64) {
        let Some(count) = self.counts.get(slot as usize) else {
            return;
        };
        let now = now_nanos();
        let completes = count.fetch_add(1, Relaxed) + 1 == self.members;
        if slot < self.warmup {
            if completes {
                self.warm.fetch_add(1, Relaxed);
            }
            return;
        }
        self.deliveries.fetch_add(1, Relaxed);
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(now.saturating_sub(sent_at_nanos));
        if completes {
            self.complete.fetch_add(1, Relaxed);
            self.last_complete.fetch_max(now, Relaxed);
        }
    }
}

/// Feeds a room member's ticks to the tracker.
struct RoomReceiver(Arc<RoomTracker>);

impl BenchHubReceiver for RoomReceiver {
    fn on_tick(&self, tick: Tick) {
        self.0.delivered(tick.seq, tick.sent_at_nanos);
    }
}

/// The name of room `r`.
fn room(r: usize) -> String {
    format!("room-{r}")
}

/// The redis-server's process id, from `INFO server`.
pub fn redis_pid(redis: &test_support::RedisServer) -> Option<u32> {
    redis
        .cli(&["INFO", "server"])
        .lines()
        .find_map(|l| l.trim().strip_prefix("process_id:")?.parse().ok())
}

/// Runs one rooms workload and returns its JSON line.
pub async fn run(a: &RoomsArgs) -> Result<serde_json::Value, BoxError> {
    if a.rooms == 0 || a.members == 0 || a.servers == 0 || a.hz == 0 || a.secs == 0 {
        return Err("rooms, members, servers, hz and secs must be at least 1".into());
    }
    if a.shards == 0 {
        return Err("shards must be at least 1".into());
    }
    proc::raise_nofile_limit();
    let mut backplanes = Vec::new();
    for _ in 0..a.shards {
        backplanes.push(match a.backplane {
            RoomsBackplane::Redis => {
                let redis = test_support::RedisServer::start();
                let url = redis.url();
                let pid = redis_pid(&redis).ok_or("no process_id in redis INFO")?;
                (BackplaneServer::Redis(redis), url, pid)
            }
            RoomsBackplane::Nats => {
                let nats = test_support::NatsServer::start();
                let url = nats.url();
                let pid = nats.pid().ok_or("no nats-server pid")?;
                (BackplaneServer::Nats(nats), url, pid)
            }
        });
    }
    let urls: Vec<String> = backplanes.iter().map(|b| b.1.clone()).collect();
    let pids: Vec<u32> = backplanes.iter().map(|b| b.2).collect();
    let (servers, addrs) = fanout::start_servers(Kind::Hub, a.servers, &urls.join(","), &[])?;
    // The backplane's ceiling first, while nothing else runs on the machine's behalf
    // of this bench (the servers are up but idle).
    let ceiling_payload = a.payload + ENVELOPE_OVERHEAD;
    let (one_ceiling, ceiling_tool) = match &backplanes[0].0 {
        BackplaneServer::Redis(redis) => publish_ceiling(redis.port(), ceiling_payload).await?,
        BackplaneServer::Nats(_) => nats_publish_ceiling(&urls[0], ceiling_payload).await?,
    };
    let ceiling = one_ceiling * a.shards as f64;

    let ticks = a.hz as u64 * a.secs;
    let warmup = a.rooms as u64;
    let tracker = Arc::new(RoomTracker {
        members: a.members as u32,
        warmup,
        counts: (0..warmup + ticks * a.rooms as u64)
            .map(|_| AtomicU32::new(0))
            .collect(),
        complete: AtomicU64::new(0),
        warm: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        latencies: Mutex::new(Vec::with_capacity(
            (ticks * (a.rooms * a.members) as u64) as usize,
        )),
        last_complete: AtomicU64::new(0),
    });
    let setup = Instant::now();
    let members = connect_members(a, &addrs, &tracker).await?;
    let setup_s = setup.elapsed().as_secs_f64();
    let emitter = match (a.shards, a.backplane) {
        (1, RoomsBackplane::Redis) => {
            BenchHubEmitter::new(hub_redis::RedisEmitter::connect(&urls[0]).await?)
        }
        (1, RoomsBackplane::Nats) => {
            BenchHubEmitter::new(hub_nats::NatsEmitter::connect(&urls[0]).await?)
        }
        _ => {
            let mut emitters: Vec<Arc<dyn hub_core::emit::Emit>> = Vec::new();
            for url in &urls {
                emitters.push(match a.backplane {
                    RoomsBackplane::Redis => Arc::new(hub_redis::RedisEmitter::connect(url).await?),
                    RoomsBackplane::Nats => Arc::new(hub_nats::NatsEmitter::connect(url).await?),
                });
            }
            BenchHubEmitter::new(hub_core::shard::ShardedEmit::new(emitters)?)
        }
    };
    let payload = vec![b'x'; a.payload];

    // Warm-up barrier: one push to every room, all delivered, before measuring.
    let rooms: Vec<String> = (0..a.rooms).map(room).collect();
    if let (n @ 1.., e) = tick_all(&emitter, &rooms, 0, &payload).await {
        return Err(format!("warm-up: {n} publishes failed: {e:?}").into());
    }
    let warm_by = Instant::now() + Duration::from_secs(30);
    while tracker.warm.load(Relaxed) < warmup {
        if Instant::now() > warm_by {
            return Err(format!(
                "warm-up: {} of {} rooms got their push within 30 s",
                tracker.warm.load(Relaxed),
                warmup
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let cpu = || servers.iter().map(BenchChild::cpu_secs).sum::<f64>();
    let cpu0 = cpu();
    let backplane_cpu = || pids.iter().map(|&p| proc::cpu_secs(p)).sum::<f64>();
    let redis_cpu0 = backplane_cpu();
    let client_cpu0 = proc::self_cpu_secs();
    let start = now_nanos();
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / a.hz as f64));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = Vec::with_capacity(ticks as usize);
    for t in 1..=ticks {
        interval.tick().await;
        // Each tick's pushes run on their own task: a slow backplane makes the
        // emitter fall behind on delivery, not on its schedule.
        let (emitter, rooms, payload, failed, first_error) = (
            emitter.clone(),
            rooms.clone(),
            payload.clone(),
            failed.clone(),
            first_error.clone(),
        );
        inflight.push(tokio::spawn(async move {
            let (n, e) = tick_all(&emitter, &rooms, t, &payload).await;
            failed.fetch_add(n, Relaxed);
            let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
            if first.is_none() {
                *first = e;
            }
        }));
    }
    let emit_s = (now_nanos() - start) as f64 / 1e9;
    let drain_by = tokio::time::Instant::now() + Duration::from_secs(a.drain_s);
    let expected = ticks * a.rooms as u64;
    let sent = tokio::time::timeout_at(drain_by, futures_util::future::join_all(inflight))
        .await
        .is_ok();
    while tracker.complete.load(Relaxed) < expected && tokio::time::Instant::now() < drain_by {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_s = cpu() - cpu0;
    let redis_cpu_s = backplane_cpu() - redis_cpu0;
    let client_cpu_s = proc::self_cpu_secs() - client_cpu0;
    let complete = tracker.complete.load(Relaxed);
    let deliveries = tracker.deliveries.load(Relaxed);
    // From the first tick to the last complete push (at least the ticking time).
    let last = tracker.last_complete.load(Relaxed);
    let secs = ((last.max(start) - start) as f64 / 1e9).max(a.secs as f64);
    drop(members);

    drop(servers);
    drop(backplanes);

    let lat = {
        let mut v = tracker
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        v.sort_unstable();
        v
    };
    let achieved = complete as f64 / secs;
    Ok(json!({
        "peer": match a.backplane {
            RoomsBackplane::Redis => "hub+redis (emitter)",
            RoomsBackplane::Nats => "hub+nats (emitter)",
        },
        "workload": "rooms",
        "shards": a.shards,
        "rooms": a.rooms,
        "members": a.members,
        "connections": a.rooms * a.members,
        "servers": a.servers,
        "hz": a.hz,
        "payload": a.payload,
        "secs_ticking": a.secs,
        "setup_s": round(setup_s, 2),
        "emit_s": round(emit_s, 3),
        "all_sent": sent,
        "publish_errors": failed.load(Relaxed),
        "first_publish_error": first_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        "pushes": expected,
        "pushes_complete": complete,
        "deliveries": deliveries,
        "deliveries_expected": expected * a.members as u64,
        "secs": round(secs, 3),
        "offered_ticks_per_sec": (a.rooms as u64 * a.hz as u64),
        "achieved_ticks_per_sec": achieved.round(),
        "deliveries_per_sec": (deliveries as f64 / secs).round(),
        "p50_ms": quantile_ms(&lat, 0.5),
        "p99_ms": quantile_ms(&lat, 0.99),
        "max_ms": quantile_ms(&lat, 1.0),
        "server_cpu_s": round(cpu_s, 3),
        "server_cpu_s_per_million_deliveries": (deliveries > 0).then(|| round(cpu_s / deliveries as f64 * 1e6, 2)),
        "client_cpu_s": round(client_cpu_s, 3),
        "backplane_cpu_s": round(redis_cpu_s, 3),
        "backplane_publish_ceiling_per_sec": ceiling.round(),
        "backplane_ceiling_tool": ceiling_tool,
        "backplane_ceiling_payload": ceiling_payload,
        "achieved_over_ceiling": (ceiling > 0.0).then(|| round(achieved / ceiling, 4)),
    }))
}

/// Opens `rooms * members` hub clients and joins each to its room.
async fn connect_members(
    a: &RoomsArgs,
    addrs: &[SocketAddr],
    tracker: &Arc<RoomTracker>,
) -> Result<Vec<BenchHubClient>, BoxError> {
    let n = a.rooms * a.members;
    futures_util::stream::iter(0..n)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            let receiver = RoomReceiver(tracker.clone());
            let group = room(i / a.members);
            async move {
                let c = tokio::time::timeout(Duration::from_secs(30), async {
                    let c = hub::connect(addr, receiver).await?;
                    c.join(JoinRequest { group }).await?;
                    Ok::<_, BoxError>(c)
                })
                .await
                .map_err(|_| "connect and join took over 30 s")??;
                Ok::<_, BoxError>(c)
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await
}

/// Pushes tick `t` to every room at once; returns how many publishes failed and the
/// first error.
async fn tick_all(
    emitter: &BenchHubEmitter,
    rooms: &[String],
    t: u64,
    payload: &[u8],
) -> (u64, Option<String>) {
    let n = rooms.len() as u64;
    let sends = rooms.iter().enumerate().map(|(r, name)| async move {
        let push = emitter.group(name)?;
        push.on_tick(Tick {
            seq: t * n + r as u64,
            sent_at_nanos: now_nanos(),
            payload: payload.to_vec(),
        })
        .await
    });
    let results = futures_util::future::join_all(sends).await;
    let first = results
        .iter()
        .find_map(|r| r.as_ref().err().map(|e| e.to_string()));
    (results.iter().filter(|r| r.is_err()).count() as u64, first)
}

/// Pipelined `PUBLISH`es per second the redis-server on `port` takes (to a channel
/// nobody subscribes to, `payload` bytes each): `redis-benchmark` if installed, else
/// a pipelined loop of our own. Returns the rate and the tool.
async fn publish_ceiling(port: u16, payload: usize) -> Result<(f64, &'static str), BoxError> {
    let body = "x".repeat(payload);
    let run = tokio::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", "4", "-P", "32", "--csv"])
        .args(["-n", &CEILING_PUBLISHES.to_string()])
        .args(["PUBLISH", "hub:ceiling", &body])
        .kill_on_drop(true)
        .output();
    if let Ok(Ok(out)) = tokio::time::timeout(Duration::from_secs(60), run).await {
        let csv = String::from_utf8_lossy(&out.stdout);
        let rate = csv
            .lines()
            .filter(|l| l.starts_with("\"PUBLISH"))
            .find_map(|l| l.split(',').nth(1)?.trim_matches('"').parse::<f64>().ok());
        if let Some(rate) = rate {
            return Ok((rate, "redis-benchmark -c 4 -P 32"));
        }
    }
    let rate = tokio::time::timeout(Duration::from_secs(60), publish_loop(port, &body))
        .await
        .map_err(|_| "publish ceiling loop took over 60 s")??;
    Ok((rate, "pipelined PUBLISH loop (32 deep)"))
}

/// The NATS publish ceiling: one async-nats client publishing [`CEILING_PUBLISHES`]
/// messages of `payload` bytes to a subject nobody subscribes to (as the Redis
/// ceiling's channel), as fast as the client takes them, then a flush; publishes per
/// second over the whole.
async fn nats_publish_ceiling(url: &str, payload: usize) -> Result<(f64, &'static str), BoxError> {
    let client = async_nats::connect(url).await?;
    let body = bytes::Bytes::from(vec![b'x'; payload]);
    let run = async {
        let started = Instant::now();
        for _ in 0..CEILING_PUBLISHES {
            client.publish("hub.ceiling", body.clone()).await?;
        }
        client.flush().await?;
        Ok::<_, BoxError>(CEILING_PUBLISHES as f64 / started.elapsed().as_secs_f64())
    };
    let rate = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .map_err(|_| "NATS publish ceiling took over 60 s")??;
    Ok((rate, "async-nats publish loop + flush"))
}

/// One connection sending `PUBLISH hub:ceiling <body>` 32 at a time.
async fn publish_loop(port: u16, body: &str) -> Result<f64, BoxError> {
    const DEPTH: u64 = 32;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    conn.set_nodelay(true)?;
    let cmd = format!(
        "*3\r\n$7\r\nPUBLISH\r\n$11\r\nhub:ceiling\r\n${}\r\n{body}\r\n",
        body.len()
    );
    let batch = cmd.repeat(DEPTH as usize);
    let mut buf = vec![0u8; 4096];
    let t0 = Instant::now();
    for _ in 0..CEILING_PUBLISHES / DEPTH {
        conn.write_all(batch.as_bytes()).await?;
        // Each answer is one line (`:0\r\n`).
        let mut lines = 0;
        while lines < DEPTH {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                return Err("redis closed the connection".into());
            }
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        }
    }
    Ok((CEILING_PUBLISHES / DEPTH * DEPTH) as f64 / t0.elapsed().as_secs_f64())
}
