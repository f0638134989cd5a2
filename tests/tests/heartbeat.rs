//! Heartbeats, with short real intervals: the server closes a client it hears
//! nothing from; a client that answers stays; the typed client measures latency and
//! treats a silent server as gone.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hub_client::ConnectOptions;
use hub_core::proto::server_control::Kind;
use hub_core::proto::{ClientControl, Pong, client_control};
use hub_server::{DisconnectReason, HubConfig};
use prost::Message;
use tests::probe::proto::probe_request::Call;
use tests::probe::proto::probe_response::Event;
use tests::probe::proto::*;
use tests::probe::{ProbeServer, channel, probe_client_with};
use tests::raw::{Frame, RawConn, drain};
use tonic::Code;

const PATH: &str = "/test.v1.ProbeHub/Connect";
const WAIT: Duration = Duration::from_secs(10);

/// Pings every 50 ms; a client silent for 300 ms is closed.
fn short_heartbeat() -> HubConfig {
    HubConfig::default().heartbeat(
        Some(Duration::from_millis(50)),
        Some(Duration::from_millis(300)),
    )
}

/// The timeout of the tests where a client must stay: long enough that a busy
/// machine does not make a live client look dead.
const STAY_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long those tests watch the client stay: more than two timeouts.
const STAY_FOR: Duration = Duration::from_millis(2500);

fn stay_heartbeat() -> HubConfig {
    HubConfig::default().heartbeat(Some(Duration::from_millis(50)), Some(STAY_TIMEOUT))
}

#[tokio::test]
async fn a_client_that_never_answers_is_closed_with_unavailable() {
    let server = ProbeServer::start(short_heartbeat()).await;
    let mut raw = RawConn::<ProbeResponse>::open(channel(&server.url()).await, PATH, &[])
        .await
        .unwrap();
    let mut pings = 0;
    let mut hello = None;
    let status = loop {
        match raw.next().await {
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
    let hello = hello.expect("a hello");
    assert_eq!(
        (hello.heartbeat_interval_ms, hello.heartbeat_timeout_ms),
        (50, 300)
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("heartbeat timeout"), "{status:?}");
    assert!(pings >= 1, "the server pinged before giving up");
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

#[tokio::test]
async fn a_client_that_answers_pings_stays() {
    let server = ProbeServer::start(stay_heartbeat()).await;
    let mut raw = RawConn::<ProbeResponse>::open(channel(&server.url()).await, PATH, &[])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + STAY_FOR;
    let mut pongs = 0;
    while tokio::time::Instant::now() < deadline {
        let Ok(Ok(Some(r))) = tokio::time::timeout_at(deadline, raw.stream.message()).await else {
            break;
        };
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
    assert!(pongs >= 3, "only {pongs} pings in {STAY_FOR:?}");
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

#[tokio::test]
async fn the_typed_client_answers_heartbeats_and_measures_latency() {
    let server = ProbeServer::start(stay_heartbeat()).await;
    let options = ConnectOptions::default()
        .ping_interval(Some(Duration::from_millis(50)))
        // Generous: this test is about the server's heartbeat, on a busy machine.
        .dead_after(Some(Duration::from_secs(30)));
    let (c, _) = probe_client_with(&server.url(), options).await.unwrap();
    assert_eq!(c.latency(), None);
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.latency().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no latency measured"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stay idle (no calls) for several heartbeat timeouts.
    tokio::time::sleep(STAY_FOR).await;
    assert!(!c.raw().is_closed());
    c.whoami().await.unwrap();
    assert_eq!(server.handle.metrics().heartbeat_timeouts, 0);
    assert_eq!(server.handle.connection_count(), 1);
}

#[tokio::test]
async fn the_typed_client_gives_up_on_a_silent_server() {
    // The server never pings; the client does not ping either: nothing comes.
    let server = ProbeServer::start(HubConfig::default().heartbeat(None, None)).await;
    let options = ConnectOptions::default()
        .ping_interval(None)
        .dead_after(Some(Duration::from_millis(300)));
    let (c, _) = probe_client_with(&server.url(), options).await.unwrap();
    assert_eq!(c.raw().info().heartbeat_interval_ms, 0);
    let reason = tokio::time::timeout(WAIT, c.closed())
        .await
        .expect("the client gave up");
    assert_eq!(reason.code, Code::Unavailable);
    assert!(reason.message.contains("heartbeat timeout"), "{reason:?}");
    let err = c.whoami().await.unwrap_err();
    assert!(
        matches!(&err, hub_client::ClientError::Disconnected(r) if *r == reason),
        "{err:?}"
    );
    assert_eq!(err.code(), Code::Unavailable);

    // With its own pings answered, the same client settings keep the connection.
    let options = ConnectOptions::default()
        .ping_interval(Some(Duration::from_millis(50)))
        .dead_after(Some(Duration::from_secs(5)));
    let (c, _) = probe_client_with(&server.url(), options).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.latency().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pong from the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!c.raw().is_closed());
}

#[tokio::test]
async fn the_timeout_applies_without_server_pings() {
    let server = ProbeServer::start(HubConfig::default().heartbeat(None, Some(STAY_TIMEOUT))).await;
    // A silent raw client is closed, and was never pinged.
    let mut raw = RawConn::<ProbeResponse>::open(channel(&server.url()).await, PATH, &[])
        .await
        .unwrap();
    let (frames, status) = drain(&mut raw).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("heartbeat timeout"), "{status:?}");
    assert!(
        frames
            .iter()
            .all(|f| matches!(Frame::of(f).control(), Some(Kind::Goodbye(_)))),
        "{frames:?}"
    );
    // A typed client's own pings keep it alive.
    let options = ConnectOptions::default().ping_interval(Some(Duration::from_millis(50)));
    let (c, _) = probe_client_with(&server.url(), options).await.unwrap();
    tokio::time::sleep(STAY_FOR).await;
    assert!(!c.raw().is_closed());
    c.whoami().await.unwrap();
    assert_eq!(server.handle.metrics().heartbeat_timeouts, 1);
}

#[tokio::test]
async fn zero_intervals_do_not_break_connections() {
    let server =
        ProbeServer::start(HubConfig::default().heartbeat(Some(Duration::ZERO), None)).await;
    let options = ConnectOptions::default()
        .ping_interval(Some(Duration::ZERO))
        .dead_after(Some(Duration::from_secs(30)));
    let (c, _) = probe_client_with(&server.url(), options).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.whoami().await.unwrap();
    assert!(!c.raw().is_closed());
}
