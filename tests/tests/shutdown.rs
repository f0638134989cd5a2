//! Graceful shutdown: queued frames first, then a goodbye with the reason and
//! UNAVAILABLE; `closed()` tells it; new connections are refused.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hub_client::ClientError;
use hub_core::proto::server_control::Kind;
use hub_server::{DisconnectReason, HubConfig};
use tests::probe::proto::*;
use tests::probe::{ProbeServer, channel, group, probe_client};
use tests::raw::{Frame, RawConn, drain};
use tonic::Code;

const PATH: &str = "/test.v1.ProbeHub/Connect";
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn shutdown_drains_says_goodbye_and_refuses_new_connections() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (a, a_rx) = probe_client(&server.url()).await;
    let (b, _) = probe_client(&server.url()).await;
    let mut raw = RawConn::<ProbeResponse>::open(channel(&server.url()).await, PATH, &[])
        .await
        .unwrap();
    a.join(group("g")).await.unwrap();
    // A call still running when the server goes down.
    let held = tokio::spawn({
        let b = b.clone();
        async move {
            b.hold(HoldRequest {
                gate: "never".into(),
                tag: String::new(),
            })
            .await
        }
    });
    for i in 0..3 {
        server
            .handle
            .group("g")
            .unwrap()
            .on_note(Note {
                text: format!("n{i}"),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    tokio::time::timeout(WAIT, server.hubs.shutdown("maintenance", WAIT))
        .await
        .expect("shutdown finished within its grace");
    assert_eq!(server.handle.connection_count(), 0);

    let want = DisconnectReason::Server {
        code: Code::Unavailable,
        message: "maintenance".into(),
    };
    for c in [&a, &b] {
        let reason = tokio::time::timeout(WAIT, c.closed())
            .await
            .expect("closed");
        assert_eq!(reason.code, Code::Unavailable);
        assert_eq!(reason.message, "maintenance");
        assert_eq!(
            server.state.wait_disconnect(&c.connection_id(), WAIT).await,
            Some(want.clone())
        );
    }
    // What was queued before the shutdown was delivered before the goodbye.
    assert_eq!(a_rx.notes(), vec!["n0", "n1", "n2"]);
    let held = held.await.unwrap().unwrap_err();
    assert!(
        matches!(&held, ClientError::Disconnected(r) if r.code == Code::Unavailable && r.message == "maintenance"),
        "{held:?}"
    );
    assert!(matches!(
        a.whoami().await,
        Err(ClientError::Disconnected(_))
    ));

    // On the wire: a goodbye frame with the reason, then the status.
    let (frames, status) = drain(&mut raw).await;
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "maintenance")
    );
    let last = frames.last().map(Frame::of);
    assert!(
        matches!(last.as_ref().and_then(|f| f.control()), Some(Kind::Goodbye(g)) if g.code == Code::Unavailable as i32 && g.reason == "maintenance"),
        "{frames:?}"
    );

    // New connections are refused.
    let err = tests::probe::probe_client_with(&server.url(), Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Connect(s) if s.code() == Code::Unavailable),
        "{err:?}"
    );
    assert_eq!(server.handle.metrics().connections_rejected, 1);
}

#[tokio::test]
async fn one_hub_can_be_shut_down_through_its_handle() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (a, _) = probe_client(&server.url()).await;
    tokio::time::timeout(WAIT, server.handle.shutdown("hub closing", WAIT))
        .await
        .expect("shutdown");
    let reason = tokio::time::timeout(WAIT, a.closed())
        .await
        .expect("closed");
    assert_eq!(
        (reason.code, reason.message.as_str()),
        (Code::Unavailable, "hub closing")
    );
    let err = tests::probe::probe_client_with(&server.url(), Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test]
async fn the_chat_hub_shuts_down_too() {
    let server = tests::TestServer::memory(HubConfig::default()).await;
    let (alice, _) = tests::joined(&server.url(), "lobby", "alice").await;
    tokio::time::timeout(WAIT, server.hubs.shutdown("bye", WAIT))
        .await
        .expect("shutdown");
    let reason = tokio::time::timeout(WAIT, alice.closed())
        .await
        .expect("closed");
    assert_eq!(
        (reason.code, reason.message.as_str()),
        (Code::Unavailable, "bye")
    );
    assert_eq!(server.handle.connection_count(), 0);
}
