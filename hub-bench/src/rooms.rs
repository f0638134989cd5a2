//! The rooms workload (a game server's): R rooms of M members spread over S hub
//! server processes joined by a Redis (or NATS) backplane, and a publisher pushing one
//! broadcast to every room F times a second: an emitter outside the servers
//! (`hub_redis::RedisEmitter` under the generated `BenchHubEmitter`), or, as the peers'
//! bench does, a client of server 1 asking it to broadcast (`publish`).
//!
//! The default schedule is the peers' (`shared/peers/socketio/rooms.js`): broadcast `k`
//! is due at `k / (R * F)` s, to room `k % R`, so the broadcasts are spread evenly over
//! each second; `--schedule burst` sends all R of a tick at once instead. The members
//! live in `--client-procs` child processes (`rooms-members`), each owning whole rooms
//! (room `r` in process `r % N`), so a room's last delivery is seen in one process, or
//! in the bench process itself with `--client-procs 0`. Send stamps are the system
//! clock's (shared by every process on the host).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bench::bench_hub_client::{BenchHubClient, BenchHubReceiver};
use crate::bench::bench_hub_emitter::BenchHubEmitter;
use crate::bench::{JoinRequest, PublishRequest, Tick};
use crate::proc::{self, BenchChild};
use crate::stats::{quantile_ms, round};
use crate::{BoxError, Kind, fanout, hub};

/// Connections opened at once while setting up (per process).
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
    /// Broadcasts per room per second.
    #[arg(long, default_value_t = 20)]
    pub hz: u32,
    /// Payload bytes per push.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 5)]
    pub secs: u64,
    /// Seconds to wait after the last send for its pushes to arrive.
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
    /// When the broadcasts go out: `spread` (the peers' schedule: broadcast k at
    /// k/(rooms*hz) s, to room k%rooms) or `burst` (every room at once, hz times a
    /// second).
    #[arg(long, value_enum, default_value_t = Schedule::Spread)]
    pub schedule: Schedule,
    /// Member processes (`rooms-members` children), each owning whole rooms; 0: the
    /// members live in the bench process.
    #[arg(long, default_value_t = 2)]
    pub client_procs: usize,
    /// Who sends the broadcasts: `emitter` (an emitter on the backplane, in the bench
    /// process) or `client` (a hub client of server 1 calling `publish`, fire and
    /// forget, as the peers' publisher does).
    #[arg(long, value_enum, default_value_t = PublisherKind::Emitter)]
    pub publisher: PublisherKind,
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

/// When a rooms run's broadcasts go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Schedule {
    /// Evenly over each second: broadcast k due at k/(rooms*hz) s (the peers').
    Spread,
    /// All rooms at once, hz times a second.
    Burst,
}

/// Who sends a rooms run's broadcasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublisherKind {
    /// An emitter on the backplane (no hub server in the path of the send).
    Emitter,
    /// A hub client of the first server calling `publish` (the peers' publisher).
    Client,
}

/// Parameters of a `rooms-members` child: the members of the rooms it owns.
#[derive(Debug, Clone, clap::Args)]
pub struct MembersArgs {
    /// The hub servers, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub addrs: Vec<SocketAddr>,
    /// Rooms of the whole run.
    #[arg(long)]
    pub rooms: usize,
    /// Members per room.
    #[arg(long)]
    pub members: usize,
    /// Broadcasts per room of the run (slots to count), besides the warm-up.
    #[arg(long)]
    pub ticks: u64,
    /// Member processes of the run.
    #[arg(long)]
    pub procs: usize,
    /// This process's index: it owns the rooms `r` with `r % procs == index`.
    #[arg(long)]
    pub index: usize,
}

/// A running backplane server of a rooms run (stopped when dropped).
#[allow(clippy::large_enum_variant)]
enum BackplaneServer {
    Redis(test_support::RedisServer),
    Nats(#[allow(dead_code)] test_support::NatsServer),
}

/// The clock of a rooms run's send stamps, in nanoseconds: the system clock, which the
/// bench and its member processes share.
fn wall_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
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
    /// Measured deliveries by the server the member is connected to.
    by_server: Vec<AtomicU64>,
    /// Pushes the members' clients reported lost (`on_pushes_lost`).
    lost: AtomicU64,
    /// Send-to-delivery latency of each measured delivery, in nanoseconds.
    latencies: Mutex<Vec<u64>>,
    /// Send-to-last-delivery latency of each complete measured push, in nanoseconds.
    room_latencies: Mutex<Vec<u64>>,
    /// When the last measured push completed, in `wall_nanos`.
    last_complete: AtomicU64,
}

impl RoomTracker {
    /// A tracker of `members`-member rooms for `rooms` rooms × `ticks` broadcasts (plus
    /// the warm-up), `servers` servers; `owned` rooms are counted here.
    fn new(members: usize, rooms: usize, ticks: u64, servers: usize, owned: usize) -> Self {
        let warmup = rooms as u64;
        RoomTracker {
            members: members as u32,
            warmup,
            counts: (0..warmup + ticks * rooms as u64)
                .map(|_| AtomicU32::new(0))
                .collect(),
            complete: AtomicU64::new(0),
            warm: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            by_server: (0..servers).map(|_| AtomicU64::new(0)).collect(),
            lost: AtomicU64::new(0),
            latencies: Mutex::new(Vec::with_capacity(
                (ticks * (owned * members) as u64) as usize,
            )),
            room_latencies: Mutex::new(Vec::with_capacity((ticks * owned as u64) as usize)),
            last_complete: AtomicU64::new(0),
        }
    }

    fn delivered(&self, slot: u64, sent_at_nanos: u64, server: usize) {
        let Some(count) = self.counts.get(slot as usize) else {
            return;
        };
        let now = wall_nanos();
        let completes = count.fetch_add(1, Relaxed) + 1 == self.members;
        if slot < self.warmup {
            if completes {
                self.warm.fetch_add(1, Relaxed);
            }
            return;
        }
        self.deliveries.fetch_add(1, Relaxed);
        if let Some(s) = self.by_server.get(server) {
            s.fetch_add(1, Relaxed);
        }
        let latency = now.saturating_sub(sent_at_nanos);
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(latency);
        if completes {
            self.room_latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(latency);
            self.complete.fetch_add(1, Relaxed);
            self.last_complete.fetch_max(now, Relaxed);
        }
    }

    /// What this tracker counted, for the run's line.
    fn results(&self) -> MemberResults {
        let take =
            |m: &Mutex<Vec<u64>>| std::mem::take(&mut *m.lock().unwrap_or_else(|e| e.into_inner()));
        MemberResults {
            complete: self.complete.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            last_complete: self.last_complete.load(Relaxed),
            by_server: self.by_server.iter().map(|s| s.load(Relaxed)).collect(),
            lost: self.lost.load(Relaxed),
            delivery_latencies: take(&self.latencies),
            room_latencies: take(&self.room_latencies),
        }
    }
}

/// What the members of one process counted.
#[derive(Debug, Default)]
struct MemberResults {
    complete: u64,
    deliveries: u64,
    last_complete: u64,
    by_server: Vec<u64>,
    lost: u64,
    /// Nanoseconds, per delivery.
    delivery_latencies: Vec<u64>,
    /// Nanoseconds, per complete push.
    room_latencies: Vec<u64>,
}

impl MemberResults {
    /// As a `rooms-members` child prints it (latencies in microseconds).
    fn to_json(&self) -> serde_json::Value {
        let us = |v: &[u64]| v.iter().map(|n| n / 1000).collect::<Vec<_>>();
        json!({
            "complete": self.complete,
            "deliveries": self.deliveries,
            "last_complete": self.last_complete,
            "by_server": self.by_server,
            "lost": self.lost,
            "delivery_lat_us": us(&self.delivery_latencies),
            "room_lat_us": us(&self.room_latencies),
        })
    }

    fn from_json(v: &serde_json::Value) -> Result<Self, BoxError> {
        let n = |k: &str| {
            v[k].as_u64()
                .ok_or_else(|| format!("member results: no {k}"))
        };
        let list = |k: &str, scale: u64| -> Result<Vec<u64>, BoxError> {
            Ok(v[k]
                .as_array()
                .ok_or_else(|| format!("member results: no {k}"))?
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x * scale)
                .collect())
        };
        Ok(MemberResults {
            complete: n("complete")?,
            deliveries: n("deliveries")?,
            last_complete: n("last_complete")?,
            by_server: list("by_server", 1)?,
            lost: n("lost")?,
            delivery_latencies: list("delivery_lat_us", 1000)?,
            room_latencies: list("room_lat_us", 1000)?,
        })
    }

    /// Adds another process's counts to these.
    fn merge(&mut self, o: MemberResults) {
        self.complete += o.complete;
        self.deliveries += o.deliveries;
        self.last_complete = self.last_complete.max(o.last_complete);
        if self.by_server.len() < o.by_server.len() {
            self.by_server.resize(o.by_server.len(), 0);
        }
        for (a, b) in self.by_server.iter_mut().zip(o.by_server) {
            *a += b;
        }
        self.lost += o.lost;
        self.delivery_latencies.extend(o.delivery_latencies);
        self.room_latencies.extend(o.room_latencies);
    }
}

/// Feeds a room member's ticks to the tracker.
struct RoomReceiver {
    tracker: Arc<RoomTracker>,
    /// The server this member is connected to (its index).
    server: usize,
}

impl BenchHubReceiver for RoomReceiver {
    fn on_tick(&self, tick: Tick) {
        self.tracker
            .delivered(tick.seq, tick.sent_at_nanos, self.server);
    }

    fn on_pushes_lost(&self, _group: &str, missed: u64, _reason: &str) {
        self.tracker.lost.fetch_add(missed.max(1), Relaxed);
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

/// Where a run's members live.
enum Members {
    /// In the bench process.
    Local(#[allow(dead_code)] Vec<BenchHubClient>, Arc<RoomTracker>),
    /// In `rooms-members` children.
    Procs(Vec<BenchChild>),
}

impl Members {
    /// Starts the members of `a`'s rooms on `addrs`.
    async fn start(a: &RoomsArgs, addrs: &[SocketAddr]) -> Result<Self, BoxError> {
        let ticks = a.hz as u64 * a.secs;
        if a.client_procs == 0 {
            let tracker = Arc::new(RoomTracker::new(
                a.members,
                a.rooms,
                ticks,
                addrs.len(),
                a.rooms,
            ));
            let rooms: Vec<usize> = (0..a.rooms).collect();
            let clients = connect_members(&rooms, a.members, addrs, &tracker).await?;
            return Ok(Members::Local(clients, tracker));
        }
        let procs = a.client_procs.min(a.rooms);
        let addr_list = addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Vec::new();
        for index in 0..procs {
            children.push(BenchChild::spawn(&[
                "rooms-members".to_owned(),
                format!("--addrs={addr_list}"),
                format!("--rooms={}", a.rooms),
                format!("--members={}", a.members),
                format!("--ticks={ticks}"),
                format!("--procs={procs}"),
                format!("--index={index}"),
            ])?);
        }
        tokio::task::block_in_place(|| {
            for c in &mut children {
                let line = c.line(Duration::from_secs(300))?;
                if !line.starts_with("READY ") {
                    return Err(format!("rooms-members: unexpected line {line:?}").into());
                }
            }
            Ok::<_, BoxError>(())
        })?;
        Ok(Members::Procs(children))
    }

    /// Warm-up pushes complete and measured pushes complete, over every process.
    fn poll(&mut self) -> Result<(u64, u64), BoxError> {
        match self {
            Members::Local(_, t) => Ok((t.warm.load(Relaxed), t.complete.load(Relaxed))),
            Members::Procs(children) => tokio::task::block_in_place(|| {
                let (mut warm, mut complete) = (0, 0);
                for c in children.iter_mut() {
                    c.send_line("POLL")?;
                    let line = c.line(Duration::from_secs(30))?;
                    let mut it = line
                        .strip_prefix("POLL ")
                        .ok_or_else(|| format!("rooms-members: unexpected line {line:?}"))?
                        .split(' ')
                        .map(str::parse::<u64>);
                    warm += it.next().ok_or("POLL: no warm count")??;
                    complete += it.next().ok_or("POLL: no complete count")??;
                }
                Ok((warm, complete))
            }),
        }
    }

    /// CPU seconds of the member processes (0 when they live in the bench process,
    /// whose own CPU is counted apart).
    fn cpu_secs(&self) -> f64 {
        match self {
            Members::Local(..) => 0.0,
            Members::Procs(children) => children.iter().map(BenchChild::cpu_secs).sum(),
        }
    }

    /// Every process's counts, merged; the members are closed.
    fn finish(self) -> Result<MemberResults, BoxError> {
        match self {
            Members::Local(clients, t) => {
                drop(clients);
                Ok(t.results())
            }
            Members::Procs(mut children) => tokio::task::block_in_place(|| {
                let mut all = MemberResults::default();
                for c in &mut children {
                    c.send_line("RESULTS")?;
                    let line = c.line(Duration::from_secs(60))?;
                    all.merge(MemberResults::from_json(&serde_json::from_str(&line)?)?);
                }
                for c in children {
                    c.stop(Duration::from_secs(5));
                }
                Ok(all)
            }),
        }
    }
}

/// The sender of a run's broadcasts.
#[derive(Clone)]
enum Publisher {
    Emitter(BenchHubEmitter),
    Client(BenchHubClient),
}

/// Counts the publisher's failed broadcasts and keeps the first error.
#[derive(Default)]
struct PublishErrors {
    failed: AtomicU64,
    first: Mutex<Option<String>>,
}

impl PublishErrors {
    fn add(&self, n: u64, first: Option<String>) {
        if n == 0 {
            return;
        }
        self.failed.fetch_add(n, Relaxed);
        let mut f = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = first;
        }
    }
}

/// The client publisher's receiver: its failed `publish` calls come back as errors.
struct PublisherReceiver(Arc<PublishErrors>);

impl BenchHubReceiver for PublisherReceiver {
    fn on_error(&self, code: tonic::Code, message: &str) {
        self.0.add(1, Some(format!("{code:?}: {message}")));
    }
}

/// Sends the broadcasts of `slots` (slot `s` to room `s % rooms`, `seq` = `s`), each
/// stamped as it goes; returns how many failed and the first error.
async fn publish_slots(
    p: &Publisher,
    rooms: &[String],
    slots: std::ops::Range<u64>,
    payload: &[u8],
) -> (u64, Option<String>) {
    let n = rooms.len() as u64;
    let tick = |s: u64| Tick {
        seq: s,
        sent_at_nanos: wall_nanos(),
        payload: payload.to_vec(),
    };
    let results: Vec<Result<(), String>> = match p {
        Publisher::Emitter(emitter) => {
            let sends = slots.map(|s| async move {
                let push = emitter
                    .group(&rooms[(s % n) as usize])
                    .map_err(|e| e.to_string())?;
                push.on_tick(tick(s)).await.map_err(|e| e.to_string())
            });
            futures_util::future::join_all(sends).await
        }
        Publisher::Client(client) => {
            let mut out = Vec::new();
            for s in slots {
                let request = PublishRequest {
                    group: rooms[(s % n) as usize].clone(),
                    tick: Some(tick(s)),
                };
                out.push(
                    client
                        .send_publish(request)
                        .await
                        .map_err(|e| e.to_string()),
                );
            }
            out
        }
    };
    let first = results.iter().find_map(|r| r.as_ref().err().cloned());
    (results.iter().filter(|r| r.is_err()).count() as u64, first)
}

/// CPU seconds the whole host spent busy (not idle, not waiting for I/O), from the
/// first line of `/proc/stat`.
fn host_busy_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (f.iter().sum::<u64>() - idle) as f64 / proc::clock_ticks()
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
    let setup = Instant::now();
    let mut members = Members::start(a, &addrs).await?;
    let setup_s = setup.elapsed().as_secs_f64();
    let errors = Arc::new(PublishErrors::default());
    let publisher = match a.publisher {
        PublisherKind::Client => {
            let c = hub::connect(addrs[0], PublisherReceiver(errors.clone())).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            Publisher::Client(c)
        }
        PublisherKind::Emitter => Publisher::Emitter(match (a.shards, a.backplane) {
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
                        RoomsBackplane::Redis => {
                            Arc::new(hub_redis::RedisEmitter::connect(url).await?)
                        }
                        RoomsBackplane::Nats => {
                            Arc::new(hub_nats::NatsEmitter::connect(url).await?)
                        }
                    });
                }
                BenchHubEmitter::new(hub_core::shard::ShardedEmit::new(emitters)?)
            }
        }),
    };
    let payload = vec![b'x'; a.payload];

    // Warm-up barrier: one push to every room, all delivered, before measuring.
    let rooms: Vec<String> = (0..a.rooms).map(room).collect();
    let warmup = a.rooms as u64;
    if let (n @ 1.., e) = publish_slots(&publisher, &rooms, 0..warmup, &payload).await {
        return Err(format!("warm-up: {n} publishes failed: {e:?}").into());
    }
    let warm_by = Instant::now() + Duration::from_secs(30);
    loop {
        let (warm, _) = members.poll()?;
        if warm >= warmup && errors.failed.load(Relaxed) == 0 {
            break;
        }
        if Instant::now() > warm_by || errors.failed.load(Relaxed) > 0 {
            return Err(format!(
                "warm-up: {warm} of {warmup} rooms got their push within 30 s ({} publish errors: {:?})",
                errors.failed.load(Relaxed),
                errors.first.lock().unwrap_or_else(|e| e.into_inner())
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let cpu = || servers.iter().map(BenchChild::cpu_secs).sum::<f64>();
    let cpu0 = cpu();
    let backplane_cpu = || pids.iter().map(|&p| proc::cpu_secs(p)).sum::<f64>();
    let redis_cpu0 = backplane_cpu();
    let client_cpu0 = proc::self_cpu_secs() + members.cpu_secs();
    let host0 = host_busy_secs();
    let total = ticks * a.rooms as u64;
    let rate = (a.rooms as u64 * a.hz as u64) as f64;
    // Broadcasts due by `el` seconds after the start, and when broadcast `k` is due.
    let due_by = |el: f64| -> u64 {
        let n = match a.schedule {
            Schedule::Spread => (el * rate) as u64 + 1,
            Schedule::Burst => ((el * a.hz as f64) as u64 + 1) * a.rooms as u64,
        };
        n.min(total)
    };
    let due_at = |k: u64| -> f64 {
        match a.schedule {
            Schedule::Spread => k as f64 / rate,
            Schedule::Burst => (k / a.rooms as u64) as f64 / a.hz as f64,
        }
    };
    let start = wall_nanos();
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut max_lag_s = 0f64;
    let mut inflight = Vec::new();
    // Every millisecond or so, send whatever has fallen due (as the peers' publisher).
    // Each batch runs on a task of its own: a slow backplane makes the publisher fall
    // behind on delivery, not on its schedule.
    while sent < total {
        let el = t0.elapsed().as_secs_f64();
        let due = due_by(el);
        if due > sent {
            max_lag_s = max_lag_s.max(el - due_at(sent));
            let (publisher, rooms, payload, errors) = (
                publisher.clone(),
                rooms.clone(),
                payload.clone(),
                errors.clone(),
            );
            let slots = warmup + sent..warmup + due;
            inflight.push(tokio::spawn(async move {
                let (n, e) = publish_slots(&publisher, &rooms, slots, &payload).await;
                errors.add(n, e);
            }));
            sent = due;
        }
        if sent < total {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let emit_s = t0.elapsed().as_secs_f64();
    let drain_by = tokio::time::Instant::now() + Duration::from_secs(a.drain_s);
    let all_sent = tokio::time::timeout_at(drain_by, futures_util::future::join_all(inflight))
        .await
        .is_ok();
    loop {
        let (_, complete) = members.poll()?;
        if complete >= total || tokio::time::Instant::now() >= drain_by {
            break;
        }
        let step = if matches!(members, Members::Local(..)) {
            10
        } else {
            50
        };
        tokio::time::sleep(Duration::from_millis(step)).await;
    }
    let cpu_s = cpu() - cpu0;
    let redis_cpu_s = backplane_cpu() - redis_cpu0;
    let client_cpu_s = proc::self_cpu_secs() + members.cpu_secs() - client_cpu0;
    let host_s = host_busy_secs() - host0;
    let end = wall_nanos();
    let client_procs = match &members {
        Members::Local(..) => 0,
        Members::Procs(c) => c.len(),
    };
    let mut res = members.finish()?;
    drop(publisher);
    drop(servers);
    drop(backplanes);

    let complete = res.complete;
    let deliveries = res.deliveries;
    // From the first send to the last complete push (at least the sending time).
    let last = res.last_complete;
    let secs = ((last.max(start) - start) as f64 / 1e9).max(a.secs as f64);
    // The peers' elapsed: first send to the last completion, or to the end of the
    // drain if some never completed; at least the sending time.
    let elapsed = (((if complete == total { last } else { end }).max(start) - start) as f64 / 1e9)
        .max(emit_s);
    res.delivery_latencies.sort_unstable();
    res.room_latencies.sort_unstable();
    let (lat, room_lat) = (&res.delivery_latencies, &res.room_latencies);
    let achieved = complete as f64 / secs;
    let offered = total as f64 / emit_s;
    let p99 = quantile_ms(room_lat, 0.99);
    let per_million = |x: f64| (deliveries > 0).then(|| round(x / deliveries as f64 * 1e6, 2));
    let redis = a.backplane == RoomsBackplane::Redis;
    let mut line = json!({
        "peer": match (a.backplane, a.publisher) {
            (RoomsBackplane::Redis, PublisherKind::Emitter) => "hub+redis (emitter)",
            (RoomsBackplane::Nats, PublisherKind::Emitter) => "hub+nats (emitter)",
            (RoomsBackplane::Redis, PublisherKind::Client) => "hub+redis (client publish)",
            (RoomsBackplane::Nats, PublisherKind::Client) => "hub+nats (client publish)",
        },
        "workload": "rooms",
        "schedule": match a.schedule { Schedule::Spread => "spread", Schedule::Burst => "burst" },
        "publisher": match a.publisher { PublisherKind::Emitter => "emitter", PublisherKind::Client => "client" },
        "client_procs": client_procs,
        "shards": a.shards,
        "rooms": a.rooms,
        "members": a.members,
        "clients": a.rooms * a.members,
        "connections": a.rooms * a.members,
        "servers": a.servers,
        "hz": a.hz,
        "payload": a.payload,
        "secs_ticking": a.secs,
        "setup_s": round(setup_s, 2),
        "connect_s": round(setup_s, 2),
        "emit_s": round(emit_s, 3),
        "all_sent": all_sent,
        "publish_errors": errors.failed.load(Relaxed),
        "first_publish_error": errors.first.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        "publisher_max_lag_ms": round(max_lag_s * 1e3, 2),
        "pushes": total,
        "pushes_complete": complete,
        "pushes_lost": res.lost,
        "target_broadcasts_per_sec": rate,
        "offered_broadcasts_per_sec": offered.round(),
        "achieved_broadcasts_per_sec": (complete as f64 / elapsed).round(),
        "broadcasts_sent": total,
        "broadcasts_completed": complete,
        "complete": complete == total,
        "deliveries": deliveries,
        "deliveries_expected": total * a.members as u64,
        "deliveries_by_server": res.by_server,
    });
    // Two objects: one `json!` of every field exceeds the macro's recursion limit.
    let more = json!({
        "secs": round(secs, 3),
        "elapsed_s": round(elapsed, 3),
        "offered_ticks_per_sec": (a.rooms as u64 * a.hz as u64),
        "achieved_ticks_per_sec": achieved.round(),
        "deliveries_per_sec": (deliveries as f64 / secs).round(),
        "p50_ms": quantile_ms(room_lat, 0.5),
        "p99_ms": p99,
        "max_ms": quantile_ms(room_lat, 1.0),
        "delivery_p50_ms": quantile_ms(lat, 0.5),
        "delivery_p99_ms": quantile_ms(lat, 0.99),
        "delivery_max_ms": quantile_ms(lat, 1.0),
        "kept_up": complete == total
            && offered >= 0.99 * rate
            && p99.is_some_and(|p| p < 1000.0 / a.hz as f64),
        "server_cpu_s": round(cpu_s, 3),
        "server_cpu_s_per_million_deliveries": per_million(cpu_s),
        "client_cpu_s": round(client_cpu_s, 3),
        "backplane_cpu_s": round(redis_cpu_s, 3),
        "backplane_cpu_s_per_million_deliveries": per_million(redis_cpu_s),
        "redis_cpu_s": redis.then(|| round(redis_cpu_s, 3)),
        "redis_cpu_s_per_million_deliveries": if redis { per_million(redis_cpu_s) } else { None },
        "host_other_cpu_s": round((host_s - cpu_s - redis_cpu_s - client_cpu_s).max(0.0), 2),
        "backplane_publish_ceiling_per_sec": ceiling.round(),
        "backplane_ceiling_tool": ceiling_tool,
        "backplane_ceiling_payload": ceiling_payload,
        "achieved_over_ceiling": (ceiling > 0.0).then(|| round(achieved / ceiling, 4)),
    });
    if let (Some(line), serde_json::Value::Object(more)) = (line.as_object_mut(), more) {
        line.extend(more);
    }
    Ok(line)
}

/// Opens `members` hub clients for each of `rooms` (member `m` of room `r` on server
/// `(r * members + m) % servers`) and joins each to its room.
async fn connect_members(
    rooms: &[usize],
    members: usize,
    addrs: &[SocketAddr],
    tracker: &Arc<RoomTracker>,
) -> Result<Vec<BenchHubClient>, BoxError> {
    let jobs: Vec<(usize, usize)> = rooms
        .iter()
        .flat_map(|&r| (0..members).map(move |m| (r, r * members + m)))
        .collect();
    futures_util::stream::iter(jobs)
        .map(|(r, i)| {
            let server = i % addrs.len();
            let addr = addrs[server];
            let receiver = RoomReceiver {
                tracker: tracker.clone(),
                server,
            };
            let group = room(r);
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

/// The `rooms-members` child: connects the members of the rooms it owns, prints
/// `READY <members>`, then answers the bench on stdin: `POLL` with `POLL <warm>
/// <complete>` (pushes complete, warm-up and measured), `RESULTS` with one JSON line
/// of its counts and latencies. Exits when stdin closes.
pub async fn members_child(a: &MembersArgs) -> Result<(), BoxError> {
    proc::raise_nofile_limit();
    if a.procs == 0 || a.index >= a.procs || a.addrs.is_empty() {
        return Err("rooms-members: need --procs > --index and at least one address".into());
    }
    let owned: Vec<usize> = (a.index..a.rooms).step_by(a.procs).collect();
    let tracker = Arc::new(RoomTracker::new(
        a.members,
        a.rooms,
        a.ticks,
        a.addrs.len(),
        owned.len(),
    ));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let clients = connect_members(&owned, a.members, &a.addrs, &tracker).await?;
    println!("READY {}", clients.len());
    while let Some(cmd) = rx.recv().await {
        match cmd.trim() {
            "POLL" => println!(
                "POLL {} {}",
                tracker.warm.load(Relaxed),
                tracker.complete.load(Relaxed)
            ),
            "RESULTS" => println!("{}", tracker.results().to_json()),
            other => eprintln!("rooms-members: unknown command {other:?}"),
        }
    }
    // Closing thousands of streams one by one is not worth waiting for.
    std::process::exit(0)
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
