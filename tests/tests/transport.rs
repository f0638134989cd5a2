//! The transport limits of `hub_server::transport`: connections without requests
//! are closed after the handshake or idle timeout, busy ones are not, and one TCP
//! connection has at most `max_concurrent_streams` hub streams open at once.

// Test code: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hub_server::HubConfig;
use hub_server::transport::{Transport, TransportConfig};
use tests::probe::proto::probe_hub_client::ProbeHubClient;
use tests::probe::{ProbeRecorder, ProbeServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than any timeout used here: a wait that takes this long is a failure.
const BOUND: Duration = Duration::from_secs(10);
const TIMEOUT: Duration = Duration::from_millis(400);

struct Served {
    addr: SocketAddr,
    transport: Transport,
    handle: tests::probe::proto::probe_hub_server::ProbeHubHandle,
    _hubs: hub_server::Hubs,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The probe hub served through a [`Transport`] with `config`.
async fn serve(config: TransportConfig) -> Served {
    // No hub heartbeats: they would keep the streams busy in a way these tests do not need.
    let (svc, hubs, _state) = ProbeServer::service(HubConfig::default().heartbeat(None, None));
    let handle = svc.handle();
    let transport = Transport::new(config);
    let (listener, addr) = tests::probe::listener().await;
    let incoming = transport.incoming(listener);
    let mut server = transport.server();
    let task = tokio::spawn(async move {
        let _ = server.add_service(svc).serve_with_incoming(incoming).await;
    });
    Served {
        addr,
        transport,
        handle,
        _hubs: hubs,
        task,
    }
}

fn short_timeouts() -> TransportConfig {
    TransportConfig::default()
        .handshake_timeout(Some(TIMEOUT))
        .idle_timeout(Some(TIMEOUT))
        // Off, so that only the timeouts under test can close a connection.
        .http2_keepalive(None, Duration::from_secs(10))
}

/// Reads until the server closes the socket; returns how long that took.
async fn time_until_closed(mut sock: TcpStream, started: Instant) -> Duration {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(BOUND, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server never closed the socket");
    started.elapsed()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn probe_over(
    channel: tonic::transport::Channel,
) -> Result<ProbeHubClient, hub_client::ClientError> {
    ProbeHubClient::connect_with(
        channel,
        hub_client::ConnectOptions::default(),
        std::sync::Arc::new(ProbeRecorder::default()),
    )
    .await
}

#[tokio::test]
async fn a_bare_tcp_socket_is_closed_after_the_handshake_timeout() {
    let served = serve(short_timeouts()).await;
    let started = Instant::now();
    let sock = TcpStream::connect(served.addr).await.unwrap();
    let lived = time_until_closed(sock, started).await;
    println!("closed after {lived:?} (handshake timeout {TIMEOUT:?})");
    assert!(lived >= TIMEOUT, "closed after {lived:?}");
    assert!(lived < TIMEOUT * 5, "closed after {lived:?}");
    assert_eq!(served.transport.metrics().idle_closed, 1);
}

#[tokio::test]
async fn an_http2_preface_then_silence_is_closed_after_the_handshake_timeout() {
    let served = serve(short_timeouts()).await;
    let started = Instant::now();
    let mut sock = TcpStream::connect(served.addr).await.unwrap();
    // The client preface and an empty SETTINGS frame, then nothing.
    sock.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    sock.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let lived = time_until_closed(sock, started).await;
    println!("closed after {lived:?} (handshake timeout {TIMEOUT:?})");
    assert!(lived >= TIMEOUT, "closed after {lived:?}");
    assert!(lived < TIMEOUT * 5, "closed after {lived:?}");
    assert_eq!(served.transport.metrics().idle_closed, 1);
}

#[tokio::test]
async fn an_http2_client_that_answers_pings_but_opens_no_stream_is_closed() {
    // Keepalive on: a real HTTP/2 client answers the pings, and is closed anyway.
    let config =
        short_timeouts().http2_keepalive(Some(Duration::from_millis(100)), Duration::from_secs(5));
    let served = serve(config).await;
    let _channel = tests::probe::channel(&format!("http://{}", served.addr)).await;
    wait_until("the idle connection is closed", || {
        served.transport.metrics().idle_closed == 1
    })
    .await;
}

#[tokio::test]
async fn a_connection_with_an_open_hub_stream_stays_and_is_closed_once_it_ends() {
    let served = serve(short_timeouts()).await;
    let url = format!("http://{}", served.addr);
    // The channel outlives the hub client, so the client side keeps the connection.
    let channel = tests::probe::channel(&url).await;
    let client = probe_over(channel.clone()).await.unwrap();
    // Several timeouts pass with the stream open and silent.
    tokio::time::sleep(TIMEOUT * 3).await;
    assert!(client.whoami().await.is_ok());
    assert_eq!(served.transport.metrics().idle_closed, 0);
    drop(client);
    wait_until("the connection is closed after its stream ended", || {
        served.transport.metrics().idle_closed == 1
    })
    .await;
    assert_eq!(served.transport.metrics().connections_accepted, 1);
}

#[tokio::test]
async fn the_remote_address_is_still_known_to_the_hub() {
    let served = serve(TransportConfig::default()).await;
    let url = format!("http://{}", served.addr);
    let client = probe_over(tests::probe::channel(&url).await).await.unwrap();
    assert!(client.whoami().await.unwrap().has_remote_addr);
}

#[tokio::test]
async fn streams_over_the_cap_on_one_connection_wait_until_one_ends() {
    const CAP: u32 = 4;
    let served = serve(TransportConfig::default().max_concurrent_streams(CAP)).await;
    let url = format!("http://{}", served.addr);
    // One HTTP/2 connection for every stream below.
    let channel = tests::probe::channel(&url).await;
    let mut open = Vec::new();
    for _ in 0..CAP {
        open.push(probe_over(channel.clone()).await.unwrap());
    }
    assert_eq!(served.handle.connection_count(), CAP as usize);

    // One more on the same connection: the client holds it back (HTTP/2
    // SETTINGS_MAX_CONCURRENT_STREAMS), the server never sees it.
    let extra = tokio::spawn(probe_over(channel.clone()));
    // Barrier: a stream on another connection opens and answers meanwhile.
    let other = probe_over(tests::probe::channel(&url).await).await.unwrap();
    assert!(other.whoami().await.is_ok());
    assert!(!extra.is_finished(), "the stream over the cap was opened");
    assert_eq!(served.handle.connection_count(), CAP as usize + 1);

    // One of the first ends: the waiting one gets its slot.
    drop(open.pop());
    let extra = tokio::time::timeout(BOUND, extra)
        .await
        .expect("the waiting stream never opened")
        .unwrap()
        .unwrap();
    assert!(extra.whoami().await.is_ok());
    for c in &open {
        assert!(c.whoami().await.is_ok());
    }
}
