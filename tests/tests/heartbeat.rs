//! Heartbeats, on paused time over an in-memory transport: the server closes a client it
//! hears nothing from; a client that answers stays; the typed client measures latency
//! and treats a silent server as gone. Virtual time makes the intervals exact, so the
//! tests assert when things happen, not only that they do.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use hub_client::ConnectOptions;
use hub_core::proto::server_control::Kind;
use hub_core::proto::{ClientControl, Pong, client_control};
use hub_server::{DisconnectReason, HubConfig, Hubs};
use prost::Message;
use tests::memory::MemoryServer;
use tests::probe::proto::probe_hub_client::ProbeHubClient;
use tests::probe::proto::probe_hub_server::ProbeHubHandle;
use tests::probe::proto::probe_request::Call;
use tests::probe::proto::probe_response::Event;
use tests::probe::proto::*;
use tests::probe::{ProbeRecorder, ProbeServer, ProbeState};
use tests::raw::{Frame, RawConn, drain};
use tokio::time::{Instant, timeout_at};
use tonic::Code;

const PATH: &str = "/test.v1.ProbeHub/Connect";
/// The bound on every wait, in virtual time: a broken heartbeat fails its test at once
/// instead of hanging it.
const WAIT: Duration = Duration::from_secs(60);

const INTERVAL: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_millis(300);
/// How long the tests where a client must stay watch it: many timeouts.
const STAY_FOR: Duration = Duration::from_secs(10);

/// Pings every 50 ms; a client silent for 300 ms is closed.
fn short_heartbeat() -> HubConfig {
    HubConfig::default().heartbeat(Some(INTERVAL), Some(TIMEOUT))
}

/// The probe hub served in memory.
struct Server {
    handle: ProbeHubHandle,
    state: Arc<ProbeState>,
    _hubs: Hubs,
    memory: MemoryServer,
}

impl Server {
    fn start(config: HubConfig) -> Self {
        let (svc, hubs, state) = ProbeServer::service(config);
        let handle = svc.handle();
        let memory = MemoryServer::serve(tonic::transport::Server::builder().add_service(svc));
        Server {
            handle,
            state,
            _hubs: hubs,
            memory,
        }
    }

    async fn raw(&self) -> RawConn<ProbeResponse> {
        RawConn::open(self.memory.channel().await, PATH, &[])
            .await
            .unwrap()
    }

    async fn client(&self, options: ConnectOptions) -> ProbeHubClient {
        let channel = self.memory.channel().await;
        ProbeHubClient::connect_with(channel, options, Arc::new(ProbeRecorder::default()))
            .await
            .unwrap()
    }
}

/// Waits, within [`WAIT`], until the client has measured a round trip.
async fn latency_measured(c: &ProbeHubClient) {
    let deadline = Instant::now() + WAIT;
    while c.raw().latency().is_none() {
        assert!(Instant::now() < deadline, "no latency measured");
        tokio::time::sleep(INTERVAL).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_answers_is_closed_with_unavailable() {
    let server = Server::start(short_heartbeat());
    let mut raw = server.raw().await;
    let opened = Instant::now();
    let deadline = opened + WAIT;
    let mut pings = 0;
    let mut hello = None;
    let status = loop {
        let frame = timeout_at(deadline, raw.stream.message())
            .await
            .expect("still open long after the heartbeat timeout");
        match frame {
            Ok(Some(r)) => match Frame::of(&r).control() {
                Some(Kind::Hello(info)) => hello = Some(info.clone()),
                Some(Kind::Ping(_)) => pings += 1,
                Some(Kind::Goodbye(g)) => {
                    assert_eq!(g.code, Code::Unavailable as i32);
                    assert!(g.reason.contains("heartbeat timeout"), "{g:?}");
                }
                _ => panic!("unexpected frame {r:?}"),
            },
            Ok(None) => panic!("closed with OK"),
            Err(s) => break s,
        }
    };
    // Closed at the first check at or after the timeout: exactly 300 ms, in virtual time.
    assert_eq!(opened.elapsed(), TIMEOUT);
    let hello = hello.expect("a hello");
    assert_eq!(
        (hello.heartbeat_interval_ms, hello.heartbeat_timeout_ms),
        (50, 300)
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("heartbeat timeout"), "{status:?}");
    // A ping at every interval before the timeout (50 ms ... 250 ms).
    assert_eq!(pings, 5, "the server pinged before giving up");
    assert_eq!(server.handle.metrics().heartbeat_timeouts, 1);
    let reason = server
        .state
        .wait_disconnect(&hello.connection_id, WAIT)
        .await;
    assert!(
        matches!(&reason, Some(DisconnectReason::Server { code: Code::Unavailable, message }) if message.contains("heartbeat")),
        "{reason:?}"
    );
    assert_eq!(server.handle.connection_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_answers_pings_stays() {
    let server = Server::start(short_heartbeat());
    let mut raw = server.raw().await;
    let deadline = Instant::now() + STAY_FOR;
    let mut pongs = 0;
    while let Ok(frame) = timeout_at(deadline, raw.stream.message()).await {
        let r = frame
            .expect("the stream stays open")
            .expect("the stream stays open");
        match Frame::of(&r).control() {
            Some(Kind::Ping(p)) => {
                let pong = ClientControl {
                    kind: Some(client_control::Kind::Pong(Pong { nonce: p.nonce })),
                };
                raw.send(
                    ProbeRequest {
                        id: 0,
                        control: Some(pong),
                        call: None,
                    }
                    .encode_to_vec(),
                )
                .await;
                pongs += 1;
            }
            Some(Kind::Hello(_)) => {}
            _ => panic!("unexpected frame {r:?}"),
        }
    }
    // One ping per interval for the whole stay, every one answered.
    let expected = (STAY_FOR.as_millis() / INTERVAL.as_millis()) as usize;
    assert!(
        (expected - 1..=expected).contains(&pongs),
        "{pongs} pings in {STAY_FOR:?}"
    );
    raw.send(
        ProbeRequest {
            id: 1,
            control: None,
            call: Some(Call::Whoami(())),
        }
        .encode_to_vec(),
    )
    .await;
    let (frames, status) = {
        raw.close_send();
        drain(&mut raw).await
    };
    assert!(
        matches!(
            frames.first().and_then(|r| r.event.as_ref()),
            Some(Event::Whoami(_))
        ),
        "{frames:?}"
    );
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    assert_eq!(server.handle.metrics().heartbeat_timeouts, 0);
}

#[tokio::test(start_paused = true)]
async fn the_typed_client_answers_heartbeats_and_measures_latency() {
    let server = Server::start(short_heartbeat());
    let options = ConnectOptions::default()
        .ping_interval(Some(INTERVAL))
        .dead_after(Some(Duration::from_secs(1)));
    let c = server.client(options).await;
    assert_eq!(c.raw().latency(), None);
    latency_measured(&c).await;
    // Stay idle (no calls) for many heartbeat timeouts of both sides.
    tokio::time::sleep(STAY_FOR).await;
    assert!(!c.raw().is_closed());
    c.whoami().await.unwrap();
    assert_eq!(server.handle.metrics().heartbeat_timeouts, 0);
    assert_eq!(server.handle.connection_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_typed_client_gives_up_on_a_silent_server() {
    // The server never pings; the client does not ping either: nothing comes.
    let server = Server::start(HubConfig::default().heartbeat(None, None));
    let limit = Duration::from_millis(300);
    let options = ConnectOptions::default()
        .ping_interval(None)
        .dead_after(Some(limit));
    let c = server.client(options).await;
    assert_eq!(c.raw().info().heartbeat_interval_ms, 0);
    let connected = Instant::now();
    let reason = tokio::time::timeout(WAIT, c.raw().closed())
        .await
        .expect("the client gave up");
    // Checked every quarter of the limit: given up at the first check past it.
    assert_eq!(connected.elapsed(), limit + limit / 4);
    assert_eq!(reason.code, Code::Unavailable);
    assert!(reason.message.contains("heartbeat timeout"), "{reason:?}");
    let err = c.whoami().await.unwrap_err();
    assert!(
        matches!(&err, hub_client::ClientError::Disconnected(r) if *r == reason),
        "{err:?}"
    );
    assert_eq!(err.code(), Code::Unavailable);

    // With its own pings answered, the same limit keeps the connection.
    let options = ConnectOptions::default()
        .ping_interval(Some(INTERVAL))
        .dead_after(Some(limit));
    let c = server.client(options).await;
    latency_measured(&c).await;
    tokio::time::sleep(STAY_FOR).await;
    assert!(!c.raw().is_closed());
    c.whoami().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_timeout_applies_without_server_pings() {
    let server = Server::start(HubConfig::default().heartbeat(None, Some(TIMEOUT)));
    // A silent raw client is closed, and was never pinged.
    let mut raw = server.raw().await;
    let opened = Instant::now();
    let (frames, status) = tokio::time::timeout(WAIT, drain(&mut raw))
        .await
        .expect("closed in time");
    // Checked every quarter of the timeout: closed at the first check at or after it.
    assert_eq!(opened.elapsed(), TIMEOUT);
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("heartbeat timeout"), "{status:?}");
    assert!(
        frames
            .iter()
            .all(|f| matches!(Frame::of(f).control(), Some(Kind::Goodbye(_)))),
        "{frames:?}"
    );
    // A typed client's own pings keep it alive.
    let options = ConnectOptions::default().ping_interval(Some(INTERVAL));
    let c = server.client(options).await;
    tokio::time::sleep(STAY_FOR).await;
    assert!(!c.raw().is_closed());
    c.whoami().await.unwrap();
    assert_eq!(server.handle.metrics().heartbeat_timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn zero_intervals_do_not_break_connections() {
    let server = Server::start(HubConfig::default().heartbeat(Some(Duration::ZERO), None));
    let options = ConnectOptions::default()
        .ping_interval(Some(Duration::ZERO))
        .dead_after(Some(Duration::from_secs(30)));
    let c = server.client(options).await;
    // Pings at the smallest period (1 ms) both ways, for a while.
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.whoami().await.unwrap();
    assert!(!c.raw().is_closed());
    assert!(c.raw().latency().is_some());
}
