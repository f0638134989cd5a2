//! The typed client and server end to end, on the probe hub with in-memory groups:
//! replies, pushes to every kind of target, member counts, ordering, failures.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prost::Message;

use hub_client::{ClientError, ConnectOptions};
use hub_server::{ConnectionId, HubConfig};
use tests::probe::proto::*;
use tests::probe::{Got, ProbeServer, broadcast, group, probe_client, probe_client_with};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

fn status(e: ClientError) -> tonic::Status {
    match e {
        ClientError::Status(s) => s,
        other => panic!("expected a status from the hub, got {other:?}"),
    }
}

fn id(s: &str) -> ConnectionId {
    s.parse().expect("a connection id")
}

fn notes(texts: &[&str]) -> Vec<Got> {
    texts.iter().map(|t| Got::Note(t.to_string())).collect()
}

#[tokio::test]
async fn typed_client_end_to_end() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (a, a_rx) = probe_client(&server.url()).await;
    let (b, b_rx) = probe_client(&server.url()).await;

    assert_eq!(a.raw().info().hub, "test.v1.ProbeHub");
    assert_eq!(a.raw().info().max_message_bytes, 1024 * 1024);
    assert_ne!(a.connection_id(), b.connection_id());
    let me = a.whoami().await.unwrap();
    assert_eq!(me.connection_id, a.connection_id());
    assert!(me.has_remote_addr);

    let done = a
        .sleep(SleepRequest {
            ms: 0,
            tag: "t1".into(),
        })
        .await
        .unwrap();
    assert_eq!(done.tag, "t1");

    a.join(group("room")).await.unwrap();
    b.join(group("room")).await.unwrap();
    let d = a
        .broadcast(broadcast("room", Mode::Others, &[], "hello"))
        .await
        .unwrap();
    assert_eq!((d.local, d.dropped), (1, 0));
    assert_eq!(b_rx.wait_for(1, WAIT).await, notes(&["hello"]));

    // An empty push (google.protobuf.Empty payload) from outside any call.
    let d = server
        .handle
        .group("room")
        .unwrap()
        .on_tick()
        .await
        .unwrap();
    assert_eq!(d.local, 2);
    assert_eq!(a_rx.wait_for(1, WAIT).await, vec![Got::Tick]);
    assert_eq!(
        b_rx.wait_for(2, WAIT).await,
        vec![Got::Note("hello".into()), Got::Tick]
    );
    // The sender was left out of its own broadcast.
    assert_eq!(
        a_rx.barrier(&server.handle, &a.connection_id(), WAIT).await,
        vec![Got::Tick]
    );

    let m = server.handle.metrics();
    assert_eq!(m.connections_opened, 2);
    assert_eq!(m.calls, 5, "whoami, sleep, two joins, broadcast: {m:?}");
    assert_eq!(m.calls_failed, 0);
}

#[tokio::test]
async fn every_target_mode_reaches_exactly_its_connections() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let url = server.url();
    let (a, a_rx) = probe_client(&url).await;
    let (b, b_rx) = probe_client(&url).await;
    let (c, c_rx) = probe_client(&url).await;
    let (d, d_rx) = probe_client(&url).await; // never joins the group
    for client in [&a, &b, &c] {
        client.join(group("g")).await.unwrap();
    }
    let (ai, bi, ci, di) = (
        &a.connection_id(),
        &b.connection_id(),
        &c.connection_id(),
        &d.connection_id(),
    );

    let all = a
        .broadcast(broadcast("g", Mode::All, &[], "all"))
        .await
        .unwrap();
    assert_eq!(all.local, 3);
    let except = a
        .broadcast(broadcast("g", Mode::Except, &[ai], "except-a"))
        .await
        .unwrap();
    assert_eq!(except.local, 2);
    // `only` keeps group members: d is named but is not in the group.
    let only = a
        .broadcast(broadcast("g", Mode::Only, &[ai, di], "only-a-d"))
        .await
        .unwrap();
    assert_eq!(only.local, 1);
    // A single connection, member or not.
    let single = a
        .broadcast(broadcast("", Mode::Single, &[di], "single-d"))
        .await
        .unwrap();
    assert_eq!(single.local, 1);
    let others = b
        .broadcast(broadcast("g", Mode::Others, &[], "others-of-b"))
        .await
        .unwrap();
    assert_eq!(others.local, 2);
    // Composition from outside a call: except then only.
    let composed = server
        .handle
        .group("g")
        .unwrap()
        .except([id(ai)])
        .only([id(ai), id(bi)])
        .on_note(Note {
            text: "b-only".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(composed.local, 1);
    // A connection list and `only` on the hub handle.
    let listed = server
        .handle
        .connections([id(ci), id(di)])
        .only([id(di)])
        .on_note(Note {
            text: "listed-d".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.local, 1);

    let expect_a = notes(&["all", "only-a-d", "others-of-b"]);
    let expect_b = notes(&["all", "except-a", "b-only"]);
    let expect_c = notes(&["all", "except-a", "others-of-b"]);
    let expect_d = notes(&["single-d", "listed-d"]);
    assert_eq!(a_rx.wait_for(expect_a.len(), WAIT).await, expect_a);
    assert_eq!(b_rx.wait_for(expect_b.len(), WAIT).await, expect_b);
    assert_eq!(c_rx.wait_for(expect_c.len(), WAIT).await, expect_c);
    assert_eq!(d_rx.wait_for(expect_d.len(), WAIT).await, expect_d);
    // ...and nothing else arrives anywhere.
    for (rx, conn, expect) in [
        (&a_rx, ai, expect_a),
        (&b_rx, bi, expect_b),
        (&c_rx, ci, expect_c),
        (&d_rx, di, expect_d),
    ] {
        assert_eq!(rx.barrier(&server.handle, conn, WAIT).await, expect);
    }
}

#[tokio::test]
async fn member_counts_follow_joins_leaves_and_disconnects() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let url = server.url();
    let (a, _) = probe_client(&url).await;
    let (b, _) = probe_client(&url).await;
    assert_eq!(a.count(group("g")).await.unwrap().count, 0);

    a.join(group("g")).await.unwrap();
    a.join(group("g")).await.unwrap(); // joining twice is a no-op
    b.join(group("g")).await.unwrap();
    b.join(group("other")).await.unwrap();
    let count = a.count(group("g")).await.unwrap();
    let mut both = vec![a.connection_id().to_owned(), b.connection_id().to_owned()];
    both.sort();
    assert_eq!(count.count, 2);
    assert_eq!(count.members, both);
    assert_eq!(server.handle.member_count("g").await.unwrap(), 2);
    assert_eq!(server.handle.member_count("other").await.unwrap(), 1);
    assert_eq!(server.handle.connection_count(), 2);

    assert!(a.leave(group("g")).await.unwrap().was_member);
    assert!(!a.leave(group("g")).await.unwrap().was_member);
    assert_eq!(
        b.count(group("g")).await.unwrap().members,
        vec![b.connection_id().to_owned()]
    );

    // A disconnected member is removed from every group it was in.
    let b_id = b.connection_id().to_owned();
    drop(b);
    server
        .state
        .wait_disconnect(&b_id, WAIT)
        .await
        .expect("b disconnected");
    assert_eq!(a.count(group("g")).await.unwrap().count, 0);
    assert_eq!(a.count(group("other")).await.unwrap().count, 0);
    assert_eq!(server.handle.connection_count(), 1);
    assert_eq!(server.handle.metrics().connections_closed, 1);
}

#[tokio::test]
async fn disconnected_member_gets_no_pushes_and_others_are_told() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let url = server.url();
    let (a, a_rx) = probe_client(&url).await;
    let (b, _b_rx) = probe_client(&url).await;
    a.join(group("g")).await.unwrap();
    b.join(group("g")).await.unwrap();
    let b_id = b.connection_id().to_owned();
    drop(b);
    let reason = server
        .state
        .wait_disconnect(&b_id, WAIT)
        .await
        .expect("b disconnected");
    assert_eq!(reason, hub_server::DisconnectReason::ClientClosed);
    // The probe hub's on_disconnect tells the rest of the group.
    assert_eq!(
        a_rx.wait_for(1, WAIT).await,
        vec![Got::Note(format!("left:{b_id}"))]
    );

    let d = a
        .broadcast(broadcast("g", Mode::All, &[], "after"))
        .await
        .unwrap();
    assert_eq!((d.local, d.dropped), (1, 0), "only a is left to receive it");
    let err = status(
        a.push_to(PushToRequest {
            connection_id: b_id.clone(),
            text: "x".into(),
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains(&b_id), "{err:?}");
    let pushed = server.handle.connection(id(&b_id)).on_tick().await;
    assert!(
        matches!(pushed, Err(hub_server::PushError::NotConnected(c)) if c == id(&b_id)),
        "{pushed:?}"
    );
}

#[tokio::test]
async fn push_sequence_numbers_count_up_per_connection_and_replies_take_none() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let options = ConnectOptions::default()
        .metadata("x-welcome", "yes")
        .unwrap();
    let (a, a_rx) = probe_client_with(&server.url(), options).await.unwrap();
    let (b, b_rx) = probe_client(&server.url()).await;
    a.join(group("g")).await.unwrap();
    b.join(group("g")).await.unwrap();
    for i in 0..5 {
        b.broadcast(broadcast("g", Mode::All, &[], &format!("n{i}")))
            .await
            .unwrap();
        // Replies in between do not take sequence numbers.
        a.sleep(SleepRequest {
            ms: 0,
            tag: String::new(),
        })
        .await
        .unwrap();
    }
    // The welcome push from on_connect is the connection's first push.
    let want = notes(&["welcome", "n0", "n1", "n2", "n3", "n4"]);
    assert_eq!(a_rx.wait_for(want.len(), WAIT).await, want);
    assert_eq!(a_rx.seqs(), vec![1, 2, 3, 4, 5, 6]);
    b_rx.wait_for(5, WAIT).await;
    assert_eq!(b_rx.seqs(), vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn calls_from_one_connection_run_in_order() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (a, _) = probe_client(&server.url()).await;
    let (opener, _) = probe_client(&server.url()).await;

    let both = async {
        tokio::join!(
            a.hold(HoldRequest {
                gate: "g1".into(),
                tag: "first".into()
            }),
            a.sleep(SleepRequest {
                ms: 0,
                tag: "second".into()
            }),
        )
    };
    tokio::pin!(both);
    // The quick second call waits behind the held first one.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut both)
            .await
            .is_err()
    );
    opener
        .open(GateRequest { gate: "g1".into() })
        .await
        .unwrap();
    let (first, second) = tokio::time::timeout(WAIT, both)
        .await
        .expect("both replies");
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.tag, "first");
    assert_eq!(second.tag, "second");
    assert!(first.finished < second.finished, "{first:?} {second:?}");
}

#[tokio::test]
async fn concurrent_calls_are_multiplexed_and_matched_by_id() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (a, _) = probe_client(&server.url()).await;
    let (b, _) = probe_client(&server.url()).await;

    // A call held on one connection does not hold back another connection.
    let held = tokio::spawn({
        let a = a.clone();
        async move {
            a.hold(HoldRequest {
                gate: "g".into(),
                tag: "held".into(),
            })
            .await
        }
    });
    let quick = tokio::time::timeout(
        WAIT,
        b.sleep(SleepRequest {
            ms: 0,
            tag: "quick".into(),
        }),
    )
    .await
    .expect("b is not held back by a")
    .unwrap();
    assert_eq!(quick.tag, "quick");
    assert!(!held.is_finished());
    server.state.open("g");
    assert_eq!(held.await.unwrap().unwrap().tag, "held");

    // Many calls in flight on one connection, each reply matched to its call.
    let calls = (0..32u64).map(|i| {
        let b = b.clone();
        async move {
            (
                i,
                b.sleep(SleepRequest {
                    ms: i % 3,
                    tag: format!("c{i}"),
                })
                .await,
            )
        }
    });
    for (i, r) in futures_util::future::join_all(calls).await {
        assert_eq!(r.unwrap().tag, format!("c{i}"));
    }
}

#[tokio::test]
async fn fire_and_forget_failure_comes_back_as_an_error_frame() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (a, a_rx) = probe_client(&server.url()).await;
    // A fire-and-forget call that works sends nothing back.
    a.send_sleep(SleepRequest {
        ms: 0,
        tag: String::new(),
    })
    .await
    .unwrap();
    a.send_fail(FailRequest {
        code: Code::NotFound as i32,
        message: "nope".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        a_rx.wait_for(1, WAIT).await,
        vec![Got::Error(Code::NotFound, "nope".into())]
    );
    // The working one sent nothing back.
    assert_eq!(
        a_rx.barrier(&server.handle, &a.connection_id(), WAIT)
            .await
            .len(),
        1
    );
    assert_eq!(server.handle.metrics().calls_failed, 1);
}

#[tokio::test]
async fn a_failed_call_returns_its_status() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (a, a_rx) = probe_client(&server.url()).await;
    let err = a
        .fail(FailRequest {
            code: Code::FailedPrecondition as i32,
            message: "not yet".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let s = status(err);
    assert_eq!(s.message(), "not yet");
    // A bad group name is the caller's mistake.
    for bad in ["", "a b", "$user/x", &"x".repeat(129)] {
        let s = status(a.join(group(bad)).await.unwrap_err());
        assert_eq!(s.code(), Code::InvalidArgument, "{bad:?}: {s:?}");
    }
    assert!(
        a_rx.got().is_empty(),
        "a call's error goes to the call, not to on_error"
    );
}

#[tokio::test]
async fn a_handler_panic_is_an_internal_error_and_the_connection_survives() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (a, _) = probe_client(&server.url()).await;
    a.join(group("g")).await.unwrap();
    let s = status(a.panic().await.unwrap_err());
    assert_eq!(s.code(), Code::Internal);
    assert!(s.message().contains("panic"), "{s:?}");
    // Same connection, same groups, next call works.
    assert_eq!(a.count(group("g")).await.unwrap().count, 1);
    assert_eq!(server.handle.metrics().calls_failed, 1);
    assert_eq!(server.handle.connection_count(), 1);
}

#[tokio::test]
async fn replies_and_pushes_over_the_size_limit_are_refused() {
    let config = HubConfig::default().max_message_bytes(64 * 1024);
    let server = ProbeServer::start(config).await;
    let (a, a_rx) = probe_client(&server.url()).await;
    assert_eq!(a.raw().info().max_message_bytes, 64 * 1024);
    let s = status(
        a.big_reply(BigReplyRequest { size: 100 * 1024 })
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    assert_eq!(
        a.big_reply(BigReplyRequest { size: 1000 })
            .await
            .unwrap()
            .data
            .len(),
        1000
    );

    a.join(group("g")).await.unwrap();
    let mut big = broadcast("g", Mode::All, &[], "big");
    big.pad = 100 * 1024;
    let s = status(a.broadcast(big).await.unwrap_err());
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    assert!(
        a_rx.barrier(&server.handle, &a.connection_id(), WAIT)
            .await
            .is_empty(),
        "the oversized push went nowhere"
    );
    assert!(a.whoami().await.is_ok());
}

#[tokio::test]
async fn pushes_to_one_connection_by_id() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (a, _) = probe_client(&server.url()).await;
    let (b, b_rx) = probe_client(&server.url()).await;
    let d = a
        .push_to(PushToRequest {
            connection_id: b.connection_id(),
            text: "direct".into(),
        })
        .await
        .unwrap();
    assert_eq!(d.local, 1);
    assert_eq!(b_rx.wait_for(1, WAIT).await, notes(&["direct"]));
    let s = status(
        a.push_to(PushToRequest {
            connection_id: "not-an-id".into(),
            text: String::new(),
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code(), Code::InvalidArgument);
    // An id of this server that never existed.
    let a_id = a.connection_id();
    let node = a_id.split_once('-').unwrap().0;
    let s = status(
        a.push_to(PushToRequest {
            connection_id: format!("{node}-999999"),
            text: String::new(),
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code(), Code::NotFound);
}

#[tokio::test]
async fn a_call_times_out_on_the_client_and_the_connection_goes_on() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let options = ConnectOptions::default().call_timeout(Some(Duration::from_millis(200)));
    let (a, _) = probe_client_with(&server.url(), options).await.unwrap();
    // Bounded: a client that ignored its default timeout would wait forever.
    let err = tokio::time::timeout(
        WAIT,
        a.hold(HoldRequest {
            gate: "never".into(),
            tag: String::new(),
        }),
    )
    .await
    .expect("the default call timeout did not apply")
    .unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout(t) if t == Duration::from_millis(200)),
        "{err:?}"
    );
    assert_eq!(err.code(), Code::DeadlineExceeded);
    // A per-call timeout overrides the default one.
    let err = tokio::time::timeout(
        WAIT,
        a.raw().call_with_timeout(
            probe_request::Call::Hold(HoldRequest {
                gate: "never".into(),
                tag: String::new(),
            }),
            Some(Duration::from_millis(50)),
        ),
    )
    .await
    .expect("the per-call timeout did not apply")
    .unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout(t) if t == Duration::from_millis(50)),
        "{err:?}"
    );
    // The held calls still run on the server; once they finish, the connection works
    // and their late replies are ignored.
    server.state.open("never");
    server.state.open("never");
    let done = a
        .raw()
        .call_with_timeout(
            probe_request::Call::Sleep(SleepRequest {
                ms: 0,
                tag: "after".into(),
            }),
            Some(WAIT),
        )
        .await
        .unwrap();
    assert!(matches!(done, probe_response::Event::Sleep(d) if d.tag == "after"));
    assert!(!a.raw().is_closed());
}

#[tokio::test]
async fn on_connect_can_refuse_a_connection_with_a_status() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let options = ConnectOptions::default()
        .metadata("x-reject", "not today")
        .unwrap();
    let err = probe_client_with(&server.url(), options).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Connect(s) if s.message() == "not today"),
        "{err:?}"
    );
    assert_eq!(err.code(), Code::PermissionDenied);
    let m = server.handle.metrics();
    assert_eq!((m.connections_rejected, m.connections_opened), (1, 0));
    assert_eq!(server.handle.connection_count(), 0);
    // Others still get in.
    let (ok, _) = probe_client(&server.url()).await;
    ok.whoami().await.unwrap();
}

#[tokio::test]
async fn the_context_sees_the_connect_metadata() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let options = ConnectOptions::default()
        .metadata("x-user", "alice")
        .unwrap();
    let (a, _) = probe_client_with(&server.url(), options).await.unwrap();
    let me = a.whoami().await.unwrap();
    assert_eq!(me.metadata_user, "alice");
    assert_eq!(me.extension_tag, "");
}

#[tokio::test]
async fn the_hub_can_close_a_connection_with_a_reason() {
    let server = ProbeServer::start(HubConfig::default()).await;
    // A kick: the client learns the code and the reason, after what was queued.
    let (a, a_rx) = probe_client(&server.url()).await;
    server
        .handle
        .connection(id(&a.connection_id()))
        .on_note(Note {
            text: "before".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The call that asks for the close still gets its reply.
    a.close(CloseRequest {
        code: Code::PermissionDenied as i32,
        reason: "kicked".into(),
    })
    .await
    .expect("the close call is answered before the stream ends");
    let reason = tokio::time::timeout(WAIT, a.closed())
        .await
        .expect("closed");
    assert_eq!(
        (reason.code, reason.message.as_str()),
        (Code::PermissionDenied, "kicked")
    );
    assert_eq!(a_rx.notes(), vec!["before"]);
    let on_server = server.state.wait_disconnect(&a.connection_id(), WAIT).await;
    assert_eq!(
        on_server,
        Some(hub_server::DisconnectReason::Server {
            code: Code::PermissionDenied,
            message: "kicked".into()
        })
    );
    let err = a.whoami().await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Disconnected(r) if *r == reason),
        "{err:?}"
    );
    assert_eq!(err.code(), Code::PermissionDenied);

    // A clean close still tells why; a call after it is unavailable, not "OK".
    let (b, _) = probe_client(&server.url()).await;
    b.close(CloseRequest {
        code: Code::Ok as i32,
        reason: "game over".into(),
    })
    .await
    .expect("the close call is answered before the stream ends");
    let reason = tokio::time::timeout(WAIT, b.closed())
        .await
        .expect("closed");
    assert_eq!(
        (reason.code, reason.message.as_str()),
        (Code::Ok, "game over")
    );
    let err = b.whoami().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test]
async fn calls_sent_before_the_client_closes_its_side_still_run() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (a, _) = probe_client(&server.url()).await;
    let (b, b_rx) = probe_client(&server.url()).await;
    a.join(group("g")).await.unwrap();
    b.join(group("g")).await.unwrap();
    let a_id = a.connection_id().to_owned();
    a.send_sleep(SleepRequest {
        ms: 100,
        tag: String::new(),
    })
    .await
    .unwrap();
    a.send_broadcast(broadcast("g", Mode::Others, &[], "sent before the close"))
        .await
        .unwrap();
    drop(a); // the last handle: the request stream ends after what was sent
    assert_eq!(
        b_rx.wait_for(2, WAIT).await,
        notes(&["sent before the close", &format!("left:{a_id}")])
    );
    assert_eq!(
        server.state.wait_disconnect(&a_id, WAIT).await,
        Some(hub_server::DisconnectReason::ClientClosed)
    );
    b.whoami().await.unwrap();
}

#[tokio::test]
async fn panicking_connect_and_disconnect_hooks_are_contained() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let options = ConnectOptions::default().metadata("x-panic", "1").unwrap();
    let err = probe_client_with(&server.url(), options).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Connect(s) if s.code() == Code::Internal),
        "{err:?}"
    );
    assert_eq!(server.handle.connection_count(), 0);

    let options = ConnectOptions::default()
        .metadata("x-panic-on-disconnect", "1")
        .unwrap();
    let (a, _) = probe_client_with(&server.url(), options).await.unwrap();
    let (b, _) = probe_client(&server.url()).await;
    a.join(group("g")).await.unwrap();
    let a_id = a.connection_id().to_owned();
    drop(a);
    server
        .state
        .wait_disconnect(&a_id, WAIT)
        .await
        .expect("a disconnected");
    // The hook panicked after recording; the cleanup still ran.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.handle.connection_count() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a was never cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.count(group("g")).await.unwrap().count, 0);
    assert_eq!(server.handle.metrics().connections_closed, 1);
}

#[tokio::test]
async fn frames_above_the_default_limits_pass_when_both_sides_allow_them() {
    const MAX: usize = 8 << 20;
    let server = ProbeServer::start(HubConfig::default().max_message_bytes(MAX)).await;
    let options = ConnectOptions::default().max_message_bytes(MAX);
    let (a, a_rx) = probe_client_with(&server.url(), options).await.unwrap();
    let (b, _) = probe_client(&server.url()).await;
    a.join(group("g")).await.unwrap();
    assert_eq!(
        a.big_reply(BigReplyRequest { size: 5 << 20 })
            .await
            .unwrap()
            .data
            .len(),
        5 << 20
    );

    // The largest push the server accepts still fits a client with the same limit
    // once the sequence number is appended; one byte more is refused to the sender.
    let note = |pad: usize| Note {
        text: "big".into(),
        from: String::new(),
        pad: vec![1; pad],
    };
    let frame_len = |pad: usize| {
        ProbeResponse {
            event: Some(probe_response::Event::OnNote(note(pad))),
            ..Default::default()
        }
        .encoded_len()
    };
    let mut pad = MAX - 64;
    while frame_len(pad + 1) <= MAX - 11 {
        pad += 1;
    }
    let push = server.handle.group("g").unwrap();
    let err = push.clone().on_note(note(pad + 1)).await.unwrap_err();
    assert!(
        matches!(err, hub_server::PushError::TooLarge { .. }),
        "{err:?}"
    );
    assert_eq!(push.on_note(note(pad)).await.unwrap().local, 1);
    assert_eq!(a_rx.wait_for(1, WAIT).await, notes(&["big"]));
    assert!(a.whoami().await.is_ok());

    // A client left at the default limit loses its connection on a larger frame, with a clear code.
    let err = b
        .big_reply(BigReplyRequest { size: 5 << 20 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
}
