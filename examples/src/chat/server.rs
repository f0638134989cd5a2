//! Run with: `cargo run -p examples --bin chat-server -- --addr 127.0.0.1:50051 --groups memory`
//!
//! The reference chat hub, served with gRPC reflection and the standard health service.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use examples::FILE_DESCRIPTOR_SET;
use examples::chat::chat_hub_server::ChatHubServer;
use examples::chat_hub::Chat;
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
    /// Largest frame in bytes, either direction.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_message_bytes: usize,
    /// Frames each connection's outbound queue holds.
    #[arg(long, default_value_t = 1024)]
    outbound_queue: usize,
    /// Serve the hub's metrics as Prometheus text on `http://ADDR/metrics` (off by
    /// default; port 0 picks a free port, and the address is printed).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

async fn provider(spec: &str) -> Result<Box<dyn GroupProvider>, Box<dyn std::error::Error>> {
    if spec == "memory" {
        return Ok(Box::new(MemoryProvider::new()));
    }
    if spec.starts_with("redis://") || spec.starts_with("rediss://") {
        return Ok(Box::new(hub_redis::RedisProvider::connect(spec).await?));
    }
    if spec.starts_with("nats://") || spec.starts_with("tls://") {
        return Ok(Box::new(hub_nats::NatsProvider::connect(spec).await?));
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
        .outbound_queue(args.outbound_queue);
    let groups = provider(&args.groups).await?;
    let hubs = Hubs::builder()
        .default_groups_arc(groups.into())
        .config(config)
        .build();
    let chat = ChatHubServer::builder(Chat).hubs(&hubs).build()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ChatHubServer<Chat>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let local = listener.local_addr()?;
    println!(
        "chat-server listening on {local} (groups: {}, node {})",
        args.groups,
        hubs.node()
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
