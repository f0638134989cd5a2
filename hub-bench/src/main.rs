//! Run with: `cargo run --release -p hub-bench -- fanout --groups memory --servers 1`
//!
//! Benchmarks of the hub framework against raw tonic baselines. Each workload
//! prints one JSON line; `scripts/bench-compare.sh` runs them all next to the peers
//! and prints a table (see `BENCHMARKS.md`).
//!
//! - `fanout`: the peers' workload: C members of one group spread over S hub server
//!   processes, one publisher keeping W broadcasts in flight.
//! - `calls`: clients making echo calls, `in-flight` outstanding each.
//! - `conns`: N idle connections; the server's memory per connection.
//! - `rooms`: R rooms of M members over S servers and a Redis backplane, an emitter
//!   pushing one tick to every room F times a second (the game workload).
//! - `resume`: N clients on one of S servers sharing sessions over Redis; that server
//!   is killed (SIGKILL); the time until each client's session is restored elsewhere.
//! - `serve`, `conn-client`, `rooms-members`: the child processes the workloads start.

mod calls;
mod conns;
mod fanout;
mod hub;
mod proc;
mod raw;
mod resume;
mod rooms;
mod stats;

/// Generated code of `proto/bench/v1/bench.proto`.
mod bench {
    hub_server::include_proto!("bench.v1");
}

use std::net::SocketAddr;

use clap::{Parser, Subcommand, ValueEnum};

/// The error type of the bench: anything, with its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What serves the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// The bench hub on the hub framework.
    Hub,
    /// A hand-written tonic service doing the same work.
    Raw,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Hub => "hub",
            Kind::Raw => "raw",
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Benchmarks of the hub framework; one JSON line per run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fan-out: one publisher, C members of one group over S servers.
    Fanout(fanout::FanoutArgs),
    /// Calls: echo calls, latency and throughput.
    Calls(calls::CallsArgs),
    /// Idle connections: server memory per connection.
    Conns(conns::ConnsArgs),
    /// Rooms: R rooms x M members over S servers, an emitter ticking every room at F Hz.
    Rooms(rooms::RoomsArgs),
    /// Resume: N clients on server A of S (sessions on, Redis backplane), A killed,
    /// time until each client's session is restored on another server.
    Resume(resume::ResumeArgs),
    /// (child) Serves the bench hub or the raw service; prints `LISTEN <addr>`;
    /// exits when stdin closes.
    Serve {
        /// `hub` or `raw`.
        #[arg(long, value_enum, default_value_t = Kind::Hub)]
        kind: Kind,
        /// Group provider of the hub: `memory`, `redis://..`, `nats://..`.
        #[arg(long, default_value = "memory")]
        groups: String,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
        /// Broadcast from a spawned task instead of in the `publish` call.
        #[arg(long)]
        detach_publish: bool,
        /// Keep sessions for dropped streams, this many seconds (resumable; shared
        /// over a Redis backplane).
        #[arg(long)]
        session_grace_s: Option<u64>,
        /// With sessions: pushes to a connection id through its own group
        /// (`SessionConfig::connection_history`).
        #[arg(long)]
        connection_history: bool,
    },
    /// (child) The members of a rooms run's rooms `r % procs == index`: prints `READY
    /// <members>`, answers `POLL` and `RESULTS` on stdin; exits when stdin closes.
    RoomsMembers(rooms::MembersArgs),
    /// (child) Opens N idle connections, prints `READY <ok> <failed>`, holds them
    /// until stdin closes.
    ConnClient {
        /// `hub` or `raw`.
        #[arg(long, value_enum, default_value_t = Kind::Hub)]
        kind: Kind,
        /// The server.
        #[arg(long)]
        addr: SocketAddr,
        /// Connections.
        #[arg(long)]
        n: usize,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli.command).await {
        eprintln!("hub-bench: {e}");
        std::process::exit(1);
    }
}

async fn run(command: Command) -> Result<(), BoxError> {
    let line = match command {
        Command::Fanout(a) => fanout::run(&a).await?,
        Command::Calls(a) => calls::run(&a).await?,
        Command::Conns(a) => conns::run(&a).await?,
        Command::Rooms(a) => rooms::run(&a).await?,
        Command::Resume(a) => resume::run(&a).await?,
        Command::Serve {
            kind,
            groups,
            addr,
            detach_publish,
            session_grace_s,
            connection_history,
        } => {
            proc::exit_on_stdin_eof();
            proc::raise_nofile_limit();
            let listener = tokio::net::TcpListener::bind(addr).await?;
            println!("LISTEN {}", listener.local_addr()?);
            return match kind {
                Kind::Hub => {
                    let bench = hub::Bench { detach_publish };
                    let grace = session_grace_s.map(std::time::Duration::from_secs);
                    hub::serve(listener, &groups, bench, grace, connection_history).await
                }
                Kind::Raw => raw::serve(listener).await,
            };
        }
        Command::RoomsMembers(a) => return rooms::members_child(&a).await,
        Command::ConnClient { kind, addr, n } => {
            proc::exit_on_stdin_eof();
            return conns::client(kind, addr, n).await;
        }
    };
    println!("{line}");
    Ok(())
}
