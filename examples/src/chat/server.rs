//! Run with: `cargo run -p examples --bin chat-server -- --addr 127.0.0.1:50051 --groups memory`
//!
//! The reference chat hub, served with gRPC reflection and the standard health service.
//!
//! `Connect` needs `authorization: Bearer <token>`; the token names the user (see
//! `examples::auth`). By default the server also serves the development login
//! `chat.v1.ChatLogin/Login` and signs with a random secret of its own. Behind a real
//! identity provider: `--login off --token-secret SECRET` (or `CHAT_TOKEN_SECRET`), and
//! the provider issues tokens in the same format, signed with the same secret. Servers
//! behind one load balancer need the same `--token-secret` to accept each other's tokens.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use examples::FILE_DESCRIPTOR_SET;
use examples::auth::TokenSecret;
use examples::chat::chat_hub_server::ChatHubServer;
use examples::chat_hub::Chat;
use examples::login::chat_login_server::ChatLoginServer;
use hub_server::transport::{Transport, TransportConfig};
use hub_server::{GroupProvider, HubConfig, Hubs, MemoryProvider};

#[derive(Parser, Debug)]
#[command(about = "The reference chat hub server")]
struct Args {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: SocketAddr,
    /// Group provider: `memory`, `redis://HOST:PORT` or `nats://HOST:PORT`.
    #[arg(long, default_value = "memory")]
    groups: String,
    /// Seconds between server pings (0: none).
    #[arg(long, default_value_t = 15)]
    heartbeat_interval: u64,
    /// Seconds of client silence before the connection is closed (0: never).
    #[arg(long, default_value_t = 45)]
    heartbeat_timeout: u64,
    /// Seconds a connection's session waits for a resume after its stream drops (0: no
    /// sessions; a dropped stream ends the connection).
    #[arg(long, default_value_t = 0)]
    session_grace: u64,
    /// With Redis or NATS: keep the last N pushes of each group (Redis streams, a
    /// JetStream stream: NATS needs `-js`), so that a
    /// server fills gaps in a group's pushes and a session that moves to another
    /// server gets the group pushes it missed (0: no history).
    #[arg(long, default_value_t = 0)]
    history: usize,
    /// With `--session-grace` and `--history`: pushes to a connection id go through
    /// the connection's own group (`SessionConfig::connection_history`), so a session
    /// that moves to another server gets those it missed too. Set it on every server.
    #[arg(long)]
    connection_history: bool,
    /// Seconds a group's history is kept after its last push (with `--history`).
    #[arg(long, default_value_t = 120)]
    history_age: u64,
    /// Largest frame in bytes, either direction.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_message_bytes: usize,
    /// Frames each connection's outbound queue holds.
    #[arg(long, default_value_t = 1024)]
    outbound_queue: usize,
    /// Serve the development login `chat.v1.ChatLogin/Login` (`on`: a token for any
    /// valid name, no password; `off`: tokens come from an identity provider in front).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    login: String,
    /// The HMAC-SHA256 secret tokens are signed with (at least 32 bytes). Default: random
    /// per process. Required with `--login off`; the same on every server that must
    /// accept the others' tokens.
    #[arg(long, env = "CHAT_TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<String>,
    /// Seconds a token from the development login is good for.
    #[arg(long, default_value_t = examples::DEFAULT_TOKEN_TTL.as_secs())]
    token_ttl: u64,
    /// Serve the hub's metrics as Prometheus text on `http://ADDR/metrics` (off by
    /// default; port 0 picks a free port, and the address is printed).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

async fn provider(
    spec: &str,
    args: &Args,
) -> Result<Box<dyn GroupProvider>, Box<dyn std::error::Error>> {
    if args.history > 0 && spec == "memory" {
        return Err("--history needs --groups redis://... or nats://...".into());
    }
    if spec == "memory" {
        return Ok(Box::new(MemoryProvider::new()));
    }
    if spec.starts_with("redis://") || spec.starts_with("rediss://") {
        let mut builder = hub_redis::RedisProvider::builder().url(spec);
        if args.history > 0 {
            builder = builder.history(args.history, Duration::from_secs(args.history_age));
        }
        return Ok(Box::new(builder.connect().await?));
    }
    if spec.starts_with("nats://") || spec.starts_with("tls://") {
        let mut builder = hub_nats::NatsProvider::builder();
        if args.history > 0 {
            // JetStream needed (`nats-server -js`).
            builder = builder.history(args.history, Duration::from_secs(args.history_age));
        }
        return Ok(Box::new(builder.connect(spec).await?));
    }
    Err(
        format!("unsupported --groups {spec:?}: use memory, redis://HOST:PORT or nats://HOST:PORT")
            .into(),
    )
}

fn secs(s: u64) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(s))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,hub_server=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(addr) = args.metrics_addr {
        // Before the hubs are built: each registers its metrics when it is built.
        let local = examples::metrics::serve_prometheus(addr).await?;
        println!("chat-server metrics on http://{local}/metrics");
    }

    let config = HubConfig::default()
        .heartbeat(secs(args.heartbeat_interval), secs(args.heartbeat_timeout))
        .max_message_bytes(args.max_message_bytes)
        .outbound_queue(args.outbound_queue)
        .sessions(secs(args.session_grace).map(|grace| {
            hub_server::SessionConfig::default()
                .grace(grace)
                .connection_history(args.connection_history)
        }));
    let login = args.login == "on";
    let secret = match &args.token_secret {
        Some(s) => TokenSecret::new(s.as_bytes())?,
        None if login => TokenSecret::random(),
        None => {
            return Err(
                "--login off needs --token-secret (or CHAT_TOKEN_SECRET): the secret \
                        the identity provider signs tokens with"
                    .into(),
            );
        }
    };
    let groups = provider(&args.groups, &args).await?;
    let hubs = Hubs::builder()
        .default_groups_arc(groups.into())
        .config(config)
        .build();
    let chat = examples::chat_service(&hubs, &secret)?;
    let login_service =
        login.then(|| examples::login_service(&secret, Duration::from_secs(args.token_ttl)));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ChatHubServer<Chat>>().await;
    if login_service.is_some() {
        health
            .set_serving::<ChatLoginServer<examples::auth::Login>>()
            .await;
    }
    let reflection = || {
        let b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        if login {
            b.register_encoded_file_descriptor_set(examples::LOGIN_FILE_DESCRIPTOR_SET)
        } else {
            b
        }
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let local = listener.local_addr()?;
    println!(
        "chat-server listening on {local} (groups: {}, node {}, login {})",
        args.groups,
        hubs.node(),
        args.login
    );

    let shutdown_hubs = hubs.clone();
    let (begun_tx, begun_rx) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        health.set_not_serving::<ChatHubServer<Chat>>().await;
        shutdown_hubs
            .shutdown("server shutting down", Duration::from_secs(5))
            .await;
        let _ = begun_tx.send(());
    };
    // Internet-facing limits: handshake and idle timeouts, HTTP/2 keepalive, streams
    // per connection, an accept loop that backs off when out of file descriptors.
    let transport = Transport::new(TransportConfig::default());
    let serve = transport
        .server()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(chat)
        .add_optional_service(login_service)
        .serve_with_incoming_shutdown(transport.incoming(listener), shutdown);
    // tonic's graceful shutdown waits for every open stream, including ones that are
    // not hubs (a reflection stream grpcurl keeps open until its stdin ends); the hubs
    // are drained by then, so give the rest a bounded grace.
    tokio::select! {
        served = serve => served?,
        _ = async {
            if begun_rx.await.is_ok() {
                tokio::time::sleep(Duration::from_secs(5)).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => tracing::warn!("streams still open 5 s after shutdown; exiting anyway"),
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
