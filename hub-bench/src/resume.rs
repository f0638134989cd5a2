//! The resume workload: N hub clients, all on server A of S hub servers that keep
//! sessions and share them over a Redis backplane, joined to a few groups. After a
//! barrier (every client got a push) A is killed with SIGKILL; each client's runtime
//! (`hub-client`) reconnects by itself, its transport reaches another server, and the
//! session comes back there (`ResyncNeeded { outcome: RESTORED }`: the same connection
//! id and groups; with `--history` the group pushes missed while down are replayed).
//! Measured per client: the time from the kill to the outcome of its resume, and
//! with `--history` to the push sent while it was away.
//!
//! How a client's new stream reaches another server (`--dial`):
//! - `failover`: one HTTP/2 connection per client, dialled by a connector that tries
//!   the servers' addresses in order and takes the first that accepts (A while it
//!   lives; a dead A refuses at once, so the next is B).
//! - `balance`: tonic's `Channel::balance_channel` with A, B added after the clients
//!   connected (so that they all start on A). tonic keeps a dead endpoint in the
//!   balancer (its reconnecting service reports ready and fails the request instead),
//!   so a new stream sent to A fails and the client tries again after its backoff.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed,
    Ordering::Release,
};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use hub_client::{ConnectOptions, ConnectionState, ReconnectPolicy, ResumeOutcome};
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

use crate::bench::bench_hub_client::{BenchHubClient, BenchHubReceiver};
use crate::bench::bench_hub_emitter::BenchHubEmitter;
use crate::bench::{JoinRequest, Tick};
use crate::proc::{self, BenchChild};
use crate::stats::{now_nanos, quantile_ms, round};
use crate::{BoxError, Kind, fanout, rooms};

/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 32;

/// How a client's transport finds a live server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dial {
    /// A connector trying the servers in order (A first).
    Failover,
    /// tonic's balancer over the servers' endpoints (B added after the connect).
    Balance,
}

impl Dial {
    fn as_str(self) -> &'static str {
        match self {
            Dial::Failover => "failover",
            Dial::Balance => "balance",
        }
    }
}

/// Parameters of one resume run.
#[derive(Debug, Clone, clap::Args)]
pub struct ResumeArgs {
    /// Clients, all connected to server A.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Hub server processes (A and at least one to resume on).
    #[arg(long, default_value_t = 2)]
    pub servers: usize,
    /// Groups; client `i` joins group `i % groups`.
    #[arg(long, default_value_t = 4)]
    pub groups: usize,
    /// Session grace period of the servers, in seconds.
    #[arg(long, default_value_t = 30)]
    pub grace_s: u64,
    /// Seconds after the kill by which every client must have an outcome (the rest
    /// count as failed).
    #[arg(long, default_value_t = 30)]
    pub deadline_s: u64,
    /// How a client's transport reaches another server after A dies.
    #[arg(long, value_enum, default_value_t = Dial::Failover)]
    pub dial: Dial,
    /// The client's first reconnect delay, in milliseconds (doubled per attempt up to
    /// `--max-backoff-ms`, less up to half of it at random: hub-client's jitter).
    #[arg(long, default_value_t = 100)]
    pub backoff_ms: u64,
    /// The client's longest reconnect delay, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub max_backoff_ms: u64,
    /// Group history on the servers and the emitter (Redis streams, 1,000 entries, a
    /// minute): a push sent to every group right after the kill, while the clients
    /// are away, is replayed to each when its session is restored; measured: the
    /// time from the kill to that push, and that each client got it exactly once.
    #[arg(long)]
    pub history: bool,
    /// The servers route pushes to connection ids through each connection's own
    /// group (`SessionConfig::connection_history`): every connection joins one more
    /// group when it opens, and a restored session rejoins it.
    #[arg(long)]
    pub connection_history: bool,
}

/// The push round sent while the clients are away (with `--history`); the barrier
/// before the kill is round 1, the push after every resume the next one.
const MISSED_ROUND: u64 = 2;

/// What became of one client's resume.
#[derive(Debug, Clone)]
enum Outcome {
    /// `ResyncNeeded { RESTORED }`: the session restored on another server.
    Restored,
    /// `Resumed`: resumed on the server that held it.
    Resumed,
    /// Any other `ResyncNeeded` outcome (its name): a new connection.
    Other(&'static str),
    /// The client gave up (`Closed`).
    Closed(String),
}

/// Shared by every client's probe.
struct Board {
    /// The last push round each client got.
    rounds: Vec<AtomicU32>,
    /// Set just before the kill: states before it are not outcomes.
    killed: AtomicBool,
    /// `now_nanos` at the kill.
    kill_at: AtomicU64,
    /// Each client's first outcome after the kill: nanoseconds from the kill, what.
    outcomes: Vec<OnceLock<(u64, Outcome)>>,
    /// The highest reconnect attempt each client reached.
    attempts: Vec<AtomicU32>,
    /// Clients with an outcome.
    settled: AtomicUsize,
    /// Pinged when the last client settles.
    all_settled: Notify,
    /// (history) Nanoseconds from the kill to each client's copy of the push sent
    /// while it was away (round 2), and how many copies it got.
    missed_at: Vec<OnceLock<u64>>,
    missed_copies: Vec<AtomicU32>,
}

impl Board {
    fn settle(&self, i: usize, outcome: Outcome) {
        let since = now_nanos().saturating_sub(self.kill_at.load(Relaxed));
        if self.outcomes[i].set((since, outcome)).is_ok()
            && self.settled.fetch_add(1, Relaxed) + 1 == self.outcomes.len()
        {
            self.all_settled.notify_one();
        }
    }

    /// Clients that got push round `round` (or a later one).
    fn got(&self, round: u32) -> usize {
        self.rounds
            .iter()
            .filter(|r| r.load(Relaxed) >= round)
            .count()
    }
}

/// Client `i`'s receiver: records its pushes and its state changes.
struct Probe {
    i: usize,
    board: Arc<Board>,
}

impl BenchHubReceiver for Probe {
    fn on_tick(&self, tick: Tick) {
        self.board.rounds[self.i].fetch_max(tick.seq as u32, Relaxed);
        if tick.seq == MISSED_ROUND && self.board.killed.load(Acquire) {
            self.board.missed_copies[self.i].fetch_add(1, Relaxed);
            let since = now_nanos().saturating_sub(self.board.kill_at.load(Relaxed));
            let _ = self.board.missed_at[self.i].set(since);
        }
    }

    fn on_connection_state(&self, state: &ConnectionState) {
        // Acquire: pairs with the kill's Release, so `kill_at` is set when read.
        if !self.board.killed.load(Acquire) {
            return;
        }
        match state {
            ConnectionState::Reconnecting { attempt, .. } => {
                self.board.attempts[self.i].fetch_max(*attempt, Relaxed);
            }
            ConnectionState::Resumed => self.board.settle(self.i, Outcome::Resumed),
            ConnectionState::ResyncNeeded { outcome, .. } => {
                let o = if *outcome == ResumeOutcome::Restored {
                    Outcome::Restored
                } else {
                    Outcome::Other(outcome.as_str_name())
                };
                self.board.settle(self.i, o);
            }
            ConnectionState::Closed(status) => {
                self.board
                    .settle(self.i, Outcome::Closed(format!("{status:?}")));
            }
            _ => {}
        }
    }
}

/// An endpoint of `addr` as the bench dials it.
fn endpoint(addr: SocketAddr) -> Result<Endpoint, BoxError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5)))
}

/// A client's transport, and (balance) the sender that adds the other servers.
async fn transport(
    dial: Dial,
    addrs: &[SocketAddr],
) -> Result<(Channel, Option<mpsc::Sender<Change<usize, Endpoint>>>), BoxError> {
    match dial {
        Dial::Failover => Ok((
            hub_client::Failover::new(addrs)
                .channel(Duration::from_secs(5))
                .await?,
            None,
        )),
        Dial::Balance => {
            let (channel, tx) = Channel::balance_channel(addrs.len().max(1));
            tx.send(Change::Insert(0, endpoint(addrs[0])?)).await?;
            Ok((channel, Some(tx)))
        }
    }
}

/// One connected client.
struct Member {
    client: BenchHubClient,
    /// Its connection id before the kill.
    id: String,
    /// (balance) Adds the other servers; held so the balancer keeps its endpoints.
    discover: Option<mpsc::Sender<Change<usize, Endpoint>>>,
}

/// Runs one resume workload and returns its JSON line.
pub async fn run(a: &ResumeArgs) -> Result<serde_json::Value, BoxError> {
    if a.clients == 0 || a.servers < 2 || a.groups == 0 || a.grace_s == 0 {
        return Err("clients, groups and grace-s must be at least 1, servers at least 2".into());
    }
    proc::raise_nofile_limit();
    let redis = test_support::RedisServer::start();
    let url = redis.url();
    let redis_pid = rooms::redis_pid(&redis).ok_or("no process_id in redis INFO")?;
    let grace = a.grace_s.to_string();
    // `redis-history://`: the servers' provider keeps group history (hub::provider).
    let groups_url = if a.history {
        url.replacen("redis://", "redis-history://", 1)
    } else {
        url.clone()
    };
    let mut server_args = vec!["--session-grace-s", grace.as_str()];
    if a.connection_history {
        server_args.push("--connection-history");
    }
    let (mut servers, addrs) =
        fanout::start_servers(Kind::Hub, a.servers, &groups_url, &server_args)?;

    let board = Arc::new(Board {
        rounds: (0..a.clients).map(|_| AtomicU32::new(0)).collect(),
        killed: AtomicBool::new(false),
        kill_at: AtomicU64::new(0),
        outcomes: (0..a.clients).map(|_| OnceLock::new()).collect(),
        attempts: (0..a.clients).map(|_| AtomicU32::new(0)).collect(),
        settled: AtomicUsize::new(0),
        all_settled: Notify::new(),
        missed_at: (0..a.clients).map(|_| OnceLock::new()).collect(),
        missed_copies: (0..a.clients).map(|_| AtomicU32::new(0)).collect(),
    });
    let options = ConnectOptions::default().reconnect(ReconnectPolicy::default().backoff(
        Duration::from_millis(a.backoff_ms),
        Duration::from_millis(a.max_backoff_ms),
    ));
    let setup = Instant::now();
    let members: Vec<Member> = futures_util::stream::iter(0..a.clients)
        .map(|i| {
            let (board, options, addrs) = (board.clone(), options.clone(), addrs.clone());
            let group = format!("g-{}", i % a.groups);
            async move {
                tokio::time::timeout(Duration::from_secs(30), async {
                    let (channel, discover) = transport(a.dial, &addrs).await?;
                    let client =
                        BenchHubClient::connect_with(channel, options, Probe { i, board }).await?;
                    client.join(JoinRequest { group }).await?;
                    let id = client.connection_id();
                    Ok::<_, BoxError>(Member {
                        client,
                        id,
                        discover,
                    })
                })
                .await
                .map_err(|_| "connect and join took over 30 s")?
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    // Balance: now that every client is on A, the balancers learn the other servers.
    for m in &members {
        if let Some(tx) = &m.discover {
            for (k, addr) in addrs.iter().enumerate().skip(1) {
                tx.send(Change::Insert(k, endpoint(*addr)?)).await?;
            }
        }
    }
    let setup_s = setup.elapsed().as_secs_f64();

    // Barrier: one push to every group, received by every client.
    let mut emitter_options = hub_redis::RedisProvider::builder().url(&url);
    if a.history {
        // The servers' history options, so its pushes take the groups' offsets.
        emitter_options = emitter_options.history(1_000, Duration::from_secs(60));
    }
    let emitter =
        BenchHubEmitter::new(hub_redis::RedisEmitter::connect_with(emitter_options).await?);
    push_round(&emitter, a.groups, 1).await?;
    wait_for(Duration::from_secs(30), || board.got(1) == a.clients)
        .await
        .map_err(|_| {
            format!(
                "barrier: {} of {} clients got the push within 30 s",
                board.got(1),
                a.clients
            )
        })?;

    let others = || servers[1..].iter().map(BenchChild::cpu_secs).sum::<f64>();
    let cpu0 = others();
    let redis_cpu0 = proc::cpu_secs(redis_pid);
    let client_cpu0 = proc::self_cpu_secs();
    board.kill_at.store(now_nanos(), Relaxed);
    board.killed.store(true, Release);
    servers[0].kill()?;
    if a.history {
        // Sent while every client is between servers: recovered only by the replay.
        push_round(&emitter, a.groups, MISSED_ROUND as u32).await?;
    }
    let deadline = Duration::from_secs(a.deadline_s);
    let all = tokio::time::timeout(deadline, async {
        while board.settled.load(Relaxed) < a.clients {
            // A bounded wait: the last settle may have pinged before this waits.
            let _ =
                tokio::time::timeout(Duration::from_millis(50), board.all_settled.notified()).await;
        }
    })
    .await
    .is_ok();
    let cpu_s = servers[1..].iter().map(BenchChild::cpu_secs).sum::<f64>() - cpu0;
    let redis_cpu_s = proc::cpu_secs(redis_pid) - redis_cpu0;
    let client_cpu_s = proc::self_cpu_secs() - client_cpu0;

    let mut restored = Vec::new();
    let mut resumed = 0u64;
    let mut other: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut closed = 0u64;
    let mut first_close = None;
    for (i, slot) in board.outcomes.iter().enumerate() {
        match slot.get() {
            Some((ns, Outcome::Restored)) => restored.push((i, *ns)),
            Some((ns, Outcome::Resumed)) => {
                resumed += 1;
                restored.push((i, *ns));
            }
            Some((_, Outcome::Other(name))) => *other.entry(name).or_default() += 1,
            Some((_, Outcome::Closed(why))) => {
                closed += 1;
                first_close.get_or_insert_with(|| why.clone());
            }
            None => {}
        }
    }
    let no_outcome = a.clients - board.settled.load(Relaxed);
    let same_id = restored
        .iter()
        .filter(|(i, _)| members[*i].client.connection_id() == members[*i].id)
        .count();
    // The groups came back too: one more push to every group reaches every restored
    // client (bounded; the count says how many it reached).
    let after_round = MISSED_ROUND as u32 + 1;
    push_round(&emitter, a.groups, after_round).await?;
    let reached = |b: &Board| {
        restored
            .iter()
            .filter(|(i, _)| b.rounds[*i].load(Relaxed) >= after_round)
            .count()
    };
    let _ = wait_for(Duration::from_secs(10), || {
        reached(&board) == restored.len()
    })
    .await;
    let pushed_after = reached(&board);
    let mut lat: Vec<u64> = restored.iter().map(|(_, ns)| *ns).collect();
    lat.sort_unstable();
    let attempts: Vec<u32> = board.attempts.iter().map(|n| n.load(Relaxed)).collect();
    let attempts_mean = attempts.iter().map(|&n| n as f64).sum::<f64>() / a.clients as f64;
    let mut missed_lat: Vec<u64> = board
        .missed_at
        .iter()
        .filter_map(|t| t.get().copied())
        .collect();
    missed_lat.sort_unstable();
    let copies = |want: fn(u32) -> bool| {
        board
            .missed_copies
            .iter()
            .filter(|c| want(c.load(Relaxed)))
            .count()
    };
    let missed = a.history.then(|| {
        json!({
            "got_once": copies(|n| n == 1),
            "got_twice_or_more": copies(|n| n > 1),
            "never_got": copies(|n| n == 0),
            "p50_ms": quantile_ms(&missed_lat, 0.5),
            "p99_ms": quantile_ms(&missed_lat, 0.99),
            "max_ms": quantile_ms(&missed_lat, 1.0),
        })
    });

    drop(members);
    drop(servers);
    drop(redis);
    Ok(json!({
        "peer": "hub+redis (sessions)",
        "workload": "resume",
        "clients": a.clients,
        "servers": a.servers,
        "groups": a.groups,
        "grace_s": a.grace_s,
        "dial": a.dial.as_str(),
        "backoff_ms": [a.backoff_ms, a.max_backoff_ms],
        "setup_s": round(setup_s, 2),
        "all_settled": all,
        "restored": restored.len() as u64 - resumed,
        "resumed_same_server": resumed,
        "other_outcomes": other,
        "closed": closed,
        "first_close": first_close,
        "no_outcome_by_deadline": no_outcome,
        "failed": closed as usize + no_outcome,
        "same_connection_id": same_id,
        "push_after_resume_delivered": pushed_after,
        "min_ms": quantile_ms(&lat, 0.0),
        "p50_ms": quantile_ms(&lat, 0.5),
        "p99_ms": quantile_ms(&lat, 0.99),
        "max_ms": quantile_ms(&lat, 1.0),
        "reconnect_attempts_mean": round(attempts_mean, 2),
        "reconnect_attempts_max": attempts.iter().max(),
        "server_b_cpu_s": round(cpu_s, 3),
        "backplane_cpu_s": round(redis_cpu_s, 3),
        "client_cpu_s": round(client_cpu_s, 3),
        "history": a.history,
        "connection_history": a.connection_history,
        "missed_push": missed,
    }))
}

/// Pushes round `round` to every group through the emitter.
async fn push_round(emitter: &BenchHubEmitter, groups: usize, round: u32) -> Result<(), BoxError> {
    for g in 0..groups {
        emitter
            .group(format!("g-{g}"))?
            .on_tick(Tick {
                seq: round as u64,
                sent_at_nanos: now_nanos(),
                payload: Vec::new(),
            })
            .await?;
    }
    Ok(())
}

/// Polls `done` every 10 ms until it holds or `within` passes.
async fn wait_for(within: Duration, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    tokio::time::timeout(within, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .map_err(|_| ())
}
