//! A Prometheus endpoint for the hub's metrics (`chat-server --metrics-addr`).
//!
//! Installs the `metrics-exporter-prometheus` recorder as the process's `metrics`
//! recorder and serves its text on `GET /metrics`. Install it before the hubs are
//! built: each hub registers its handles when it is built.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Histogram buckets of the durations (`*_seconds`): 100 µs to 10 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Histogram buckets of `hub_push_fanout` (connections per push): 0 to 10 000.
const FANOUT: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// Installs the Prometheus recorder and serves it on `addr` (port 0: a free one);
/// returns the address it listens on. The server runs until the process exits.
pub async fn serve_prometheus(addr: SocketAddr) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Full("hub_push_fanout".into()), FANOUT)?
        .install_recorder()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                // The recorder spawns no upkeep task of its own: do it per scrape.
                handle.run_upkeep();
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });
    Ok(local)
}
