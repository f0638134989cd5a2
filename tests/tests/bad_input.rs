//! Bad input from a raw client (no client runtime): each gets a clear error frame or
//! status, never a panic or a hang, and after every non-fatal error the connection
//! still works.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hub_core::proto::ErrorScope;
use hub_core::proto::server_control::Kind;
use hub_server::{DisconnectReason, HubConfig};
use prost::Message;
use tests::probe::proto::probe_request::Call;
use tests::probe::proto::probe_response::Event;
use tests::probe::proto::*;
use tests::probe::{ProbeServer, channel, probe_client};
use tests::raw::{Frame, RawConn, drain, grpc_frame, next_event, raw_http};
use tonic::Code;

const PATH: &str = "/test.v1.ProbeHub/Connect";

type Raw = RawConn<ProbeResponse>;

/// Opens a raw connection and reads the hello; returns it with the connection id.
async fn open(server: &ProbeServer) -> (Raw, String) {
    let mut raw = Raw::open(channel(&server.url()).await, PATH, &[])
        .await
        .expect("open");
    let hello = raw.next().await.expect("hello").expect("hello");
    let hello = Frame::of(&hello);
    let Some(Kind::Hello(info)) = hello.control() else {
        panic!("first frame is not a hello: {hello:?}");
    };
    assert_eq!(info.hub, "test.v1.ProbeHub");
    let id = info.connection_id.clone();
    (raw, id)
}

fn call(id: u64, call: Call) -> Vec<u8> {
    ProbeRequest {
        id,
        control: None,
        call: Some(call),
    }
    .encode_to_vec()
}

fn sleep(id: u64, tag: &str) -> Vec<u8> {
    call(
        id,
        Call::Sleep(SleepRequest {
            ms: 0,
            tag: tag.into(),
        }),
    )
}

/// Reads the next frame and checks it is an error frame for `id` with `code`; returns its message.
async fn expect_error(raw: &mut Raw, id: u64, code: Code) -> String {
    let r = next_event(raw).await;
    let f = Frame::of(&r);
    assert_eq!((f.id, f.error_code()), (id, Some(code)), "{r:?}");
    assert!(r.event.is_none(), "{r:?}");
    f.error.expect("error").message
}

/// Checks the connection still answers calls: a `sleep` with `id` gets its reply.
async fn still_works(raw: &mut Raw, id: u64) {
    raw.send(sleep(id, "alive")).await;
    let r = next_event(raw).await;
    assert_eq!(r.id, id, "{r:?}");
    assert!(
        matches!(r.event, Some(Event::Sleep(ref d)) if d.tag == "alive"),
        "{r:?}"
    );
}

#[tokio::test]
async fn malformed_frames_get_an_error_frame_with_id_0() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (mut raw, _) = open(&server).await;
    let malformed: [&[u8]; 4] = [
        &[0x08],                   // the id's key, no value
        &[0xff, 0xff, 0xff],       // a key that never ends
        &[0x82, 0x01, 0x05, 0x01], // call 16 claims 5 bytes, has 1
        &[0x0a, 0x01, 0x00],       // field 1 (the id) with the wrong wire type
    ];
    for (i, bytes) in malformed.iter().enumerate() {
        raw.send(bytes.to_vec()).await;
        let message = expect_error(&mut raw, 0, Code::InvalidArgument).await;
        assert!(message.contains("malformed"), "{message}");
        still_works(&mut raw, 100 + i as u64).await;
    }
    // A call case whose payload is not the call's message.
    raw.send(vec![0x08, 0x09, 0x82, 0x01, 0x02, 0x08, 0x80])
        .await;
    expect_error(&mut raw, 0, Code::InvalidArgument).await;
    still_works(&mut raw, 200).await;
    assert_eq!(server.handle.metrics().frames_rejected, 5);
}

#[tokio::test]
async fn an_empty_frame_carries_no_call() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (mut raw, _) = open(&server).await;
    raw.send(Vec::new()).await;
    let message = expect_error(&mut raw, 0, Code::InvalidArgument).await;
    assert!(message.contains("no call"), "{message}");
    // An id without a call: the error names the id.
    raw.send(vec![0x08, 0x05]).await;
    expect_error(&mut raw, 5, Code::InvalidArgument).await;
    still_works(&mut raw, 6).await;
}

#[tokio::test]
async fn an_unknown_call_is_unimplemented() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (mut raw, _) = open(&server).await;
    // id 7, field 99 (length-delimited, empty): a call from a newer proto.
    raw.send(vec![0x08, 0x07, 0x9a, 0x06, 0x00]).await;
    let message = expect_error(&mut raw, 7, Code::Unimplemented).await;
    assert!(message.contains("99"), "{message}");
    still_works(&mut raw, 8).await;
}

#[tokio::test]
async fn a_control_frame_alone_gets_no_reply() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (mut raw, _) = open(&server).await;
    // A pong for a ping never sent, then a client ping: only the ping is answered.
    let pong = hub_core::proto::ClientControl {
        kind: Some(hub_core::proto::client_control::Kind::Pong(
            hub_core::proto::Pong { nonce: 42 },
        )),
    };
    raw.send_msg(&ProbeRequest {
        id: 0,
        control: Some(pong),
        call: None,
    })
    .await;
    let ping = hub_core::proto::ClientControl {
        kind: Some(hub_core::proto::client_control::Kind::Ping(
            hub_core::proto::Ping {
                nonce: 9,
                last_rtt_us: 0,
            },
        )),
    };
    raw.send_msg(&ProbeRequest {
        id: 0,
        control: Some(ping),
        call: None,
    })
    .await;
    let r = raw.next().await.unwrap().unwrap();
    assert!(
        matches!(Frame::of(&r).control(), Some(Kind::Pong(p)) if p.nonce == 9),
        "{r:?}"
    );
    still_works(&mut raw, 1).await;
    assert_eq!(server.handle.metrics().frames_rejected, 0);
}

#[tokio::test]
async fn a_duplicate_call_id_in_flight_is_refused() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (mut raw, _) = open(&server).await;
    raw.send(call(
        7,
        Call::Hold(HoldRequest {
            gate: "g".into(),
            tag: "held".into(),
        }),
    ))
    .await;
    raw.send(sleep(7, "dup")).await;
    let message = expect_error(&mut raw, 7, Code::AlreadyExists).await;
    assert!(message.contains('7'), "{message}");
    server.state.open("g");
    let r = next_event(&mut raw).await;
    assert_eq!(r.id, 7);
    assert!(
        matches!(r.event, Some(Event::Hold(ref d)) if d.tag == "held"),
        "{r:?}"
    );
    // Once answered, the id may be used again.
    still_works(&mut raw, 7).await;
}

#[tokio::test]
async fn call_ids_above_2_pow_53_are_refused_and_not_run() {
    // 2^53-1 is the largest call id (a JavaScript number holds it exactly).
    let max = hub_core::frame::MAX_SAFE_INTEGER;
    assert_eq!(max, 9_007_199_254_740_991);
    let server = ProbeServer::start(HubConfig::default()).await;
    let (mut raw, _) = open(&server).await;
    for id in [max + 1, u64::MAX] {
        raw.send(sleep(id, "too big")).await;
        // Answered with id 0, as a refused frame: the server never sends a number
        // above 2^53-1.
        let r = next_event(&mut raw).await;
        let e = r.error.clone().expect("an error frame");
        assert_eq!(
            (r.id, e.code, e.scope()),
            (0, Code::InvalidArgument as i32, ErrorScope::Frame),
            "{r:?}"
        );
        assert!(
            e.message.contains(&id.to_string()) && e.message.contains("2^53"),
            "{e:?}"
        );
    }
    // A client ping whose nonce could not be echoed within the range.
    raw.send(
        ProbeRequest {
            id: 0,
            control: Some(hub_core::proto::ClientControl {
                kind: Some(hub_core::proto::client_control::Kind::Ping(
                    hub_core::proto::Ping {
                        nonce: max + 1,
                        last_rtt_us: 0,
                    },
                )),
            }),
            call: None,
        }
        .encode_to_vec(),
    )
    .await;
    let message = expect_error(&mut raw, 0, Code::InvalidArgument).await;
    assert!(message.contains("nonce"), "{message}");
    assert_eq!(server.handle.metrics().frames_rejected, 3);
    // The largest allowed id runs; its reply carries it back exactly, and is the
    // first call this server finished (the refused ones never ran).
    raw.send(sleep(max, "alive")).await;
    let r = next_event(&mut raw).await;
    assert_eq!(r.id, max, "{r:?}");
    assert!(
        matches!(r.event, Some(Event::Sleep(ref d)) if d.tag == "alive" && d.finished == 1),
        "{r:?}"
    );
}

#[tokio::test]
async fn hello_numbers_are_capped_at_2_pow_53_minus_1() {
    // 10^13 s is 10^16 ms, above 2^53: the hello reports the cap, not a wrapped value.
    let forever = Duration::from_secs(10_000_000_000_000);
    let server =
        ProbeServer::start(HubConfig::default().heartbeat(Some(forever), Some(forever))).await;
    let mut raw = Raw::open(channel(&server.url()).await, PATH, &[])
        .await
        .expect("open");
    let hello = raw.next().await.expect("hello").expect("hello");
    let Some(Kind::Hello(info)) = Frame::of(&hello).control().cloned() else {
        panic!("first frame is not a hello: {hello:?}");
    };
    let max = hub_core::frame::MAX_SAFE_INTEGER;
    assert_eq!(
        (info.heartbeat_interval_ms, info.heartbeat_timeout_ms),
        (max, max)
    );
    still_works(&mut raw, 1).await;
}

#[tokio::test]
async fn more_calls_than_the_queue_holds_are_refused() {
    let server = ProbeServer::start(HubConfig::default().max_queued_calls(2)).await;
    let (mut raw, _) = open(&server).await;
    raw.send(call(
        1,
        Call::Hold(HoldRequest {
            gate: "g".into(),
            tag: "1".into(),
        }),
    ))
    .await;
    raw.send(sleep(2, "2")).await;
    raw.send(sleep(3, "3")).await;
    raw.send(sleep(4, "4")).await; // one running, two waiting: this one is too many
    let message = expect_error(&mut raw, 4, Code::ResourceExhausted).await;
    assert!(message.contains("2"), "{message}");
    server.state.open("g");
    for id in 1..=3 {
        let r = next_event(&mut raw).await;
        assert_eq!((r.id, r.error.is_none()), (id, true), "{r:?}");
    }
    still_works(&mut raw, 5).await;
}

#[tokio::test]
async fn an_oversized_frame_ends_the_stream_with_resource_exhausted() {
    let server = ProbeServer::start(HubConfig::default().max_message_bytes(1024)).await;
    let (mut raw, id) = open(&server).await;
    still_works(&mut raw, 1).await;
    raw.send(sleep(2, &"x".repeat(2000))).await;
    let (frames, status) = drain(&mut raw).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let goodbye = frames.last().map(Frame::of);
    assert!(
        matches!(goodbye.as_ref().and_then(|f| f.control()), Some(Kind::Goodbye(g)) if g.code == Code::ResourceExhausted as i32),
        "{frames:?}"
    );
    let reason = server
        .state
        .wait_disconnect(&id, tests::raw::READ_TIMEOUT)
        .await;
    assert!(
        matches!(
            reason,
            Some(DisconnectReason::Server {
                code: Code::ResourceExhausted,
                ..
            })
        ),
        "{reason:?}"
    );
    assert_eq!(server.handle.connection_count(), 0);
}

#[tokio::test]
async fn group_and_target_errors_are_error_frames() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (mut raw, _) = open(&server).await;
    raw.send(call(
        1,
        Call::Join(GroupRequest {
            group: "a b".into(),
        }),
    ))
    .await;
    let message = expect_error(&mut raw, 1, Code::InvalidArgument).await;
    assert!(message.contains("a b"), "{message}");
    still_works(&mut raw, 2).await;

    // A push to a connection that has gone.
    let (gone, _) = probe_client(&server.url()).await;
    let gone_id = gone.connection_id().to_owned();
    drop(gone);
    server
        .state
        .wait_disconnect(&gone_id, tests::raw::READ_TIMEOUT)
        .await
        .expect("gone");
    raw.send(call(
        3,
        Call::PushTo(PushToRequest {
            connection_id: gone_id,
            text: "x".into(),
        }),
    ))
    .await;
    expect_error(&mut raw, 3, Code::NotFound).await;
    still_works(&mut raw, 4).await;

    // A handler panic.
    raw.send(call(5, Call::Panic(()))).await;
    expect_error(&mut raw, 5, Code::Internal).await;
    still_works(&mut raw, 6).await;
}

#[tokio::test]
async fn a_fire_and_forget_failure_is_an_error_frame_with_id_0() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (mut raw, _) = open(&server).await;
    raw.send(call(
        0,
        Call::Sleep(SleepRequest {
            ms: 0,
            tag: String::new(),
        }),
    ))
    .await;
    raw.send(call(
        0,
        Call::Fail(FailRequest {
            code: Code::Aborted as i32,
            message: "boom".into(),
        }),
    ))
    .await;
    // The successful fire-and-forget call sent nothing: the next frame is the failure,
    // scoped to a call, naming the call case (`fail` is field 24).
    let r = next_event(&mut raw).await;
    let e = Frame::of(&r).error.expect("error");
    assert_eq!(
        (r.id, e.code, e.scope(), e.call, e.message.as_str()),
        (0, Code::Aborted as i32, ErrorScope::Call, 24, "boom"),
        "{r:?}"
    );
    // A frame the server cannot read also comes back with id 0: its scope tells it apart.
    raw.send(vec![0xff, 0xff, 0xff]).await;
    let r = next_event(&mut raw).await;
    let e = Frame::of(&r).error.expect("error");
    assert_eq!(
        (r.id, e.code, e.scope(), e.call),
        (0, Code::InvalidArgument as i32, ErrorScope::Frame, 0),
        "{r:?}"
    );
    // So does an unknown call case, and a frame with nothing in it.
    raw.send(vec![0x9a, 0x06, 0x00]).await;
    let r = next_event(&mut raw).await;
    let e = Frame::of(&r).error.expect("error");
    assert_eq!(
        (r.id, e.scope(), e.call),
        (0, ErrorScope::Call, 99),
        "{r:?}"
    );
    raw.send(Vec::new()).await;
    let r = next_event(&mut raw).await;
    let e = Frame::of(&r).error.expect("error");
    assert_eq!((r.id, e.scope()), (0, ErrorScope::Frame), "{r:?}");
    still_works(&mut raw, 1).await;
}

/// A call id that is in use by a call still waiting in the queue (not running) is
/// refused too, and the refusal answers no call: the client gets exactly one answer
/// with that id, the first call's.
#[tokio::test]
async fn a_duplicate_of_a_queued_call_id_is_refused_and_answers_no_call() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (mut raw, _) = open(&server).await;
    raw.send(call(
        1,
        Call::Hold(HoldRequest {
            gate: "g".into(),
            tag: "held".into(),
        }),
    ))
    .await;
    raw.send(sleep(7, "first")).await; // queued behind the held call
    raw.send(sleep(7, "second")).await; // same id, while the first is queued
    let r = next_event(&mut raw).await;
    let e = Frame::of(&r).error.expect("the duplicate is refused");
    assert_eq!(
        (r.id, e.code, e.scope(), e.call),
        (7, Code::AlreadyExists as i32, ErrorScope::Frame, 16),
        "{r:?}"
    );
    server.state.open("g");
    let mut answers = Vec::new();
    // Read up to a barrier: the reply of a call sent after everything else.
    raw.send(sleep(8, "barrier")).await;
    loop {
        let r = next_event(&mut raw).await;
        if r.id == 8 {
            break;
        }
        answers.push(r);
    }
    let sevens: Vec<_> = answers.iter().filter(|r| r.id == 7).collect();
    assert_eq!(sevens.len(), 1, "{answers:?}");
    assert!(
        matches!(&sevens[0].event, Some(Event::Sleep(d)) if d.tag == "first"),
        "{sevens:?}"
    );
    assert!(answers.iter().any(|r| r.id == 1));
    assert_eq!(server.handle.metrics().frames_rejected, 1);
}

#[tokio::test]
async fn an_unknown_method_on_the_hub_service_is_unimplemented() {
    let server = ProbeServer::start(HubConfig::default()).await;
    for path in ["/test.v1.ProbeHub/Nope", "/test.v1.Nope/Connect"] {
        let status = match Raw::open(channel(&server.url()).await, path, &[]).await {
            Err(s) => s,
            Ok(mut raw) => drain(&mut raw).await.1,
        };
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
    }
    // The hub still serves.
    let (mut raw, _) = open(&server).await;
    still_works(&mut raw, 1).await;
}

/// Raw HTTP/2 bodies that break the gRPC framing itself.
#[tokio::test]
async fn broken_grpc_framing_ends_the_stream_with_a_status() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let authority = server.addr.to_string();
    // An ASCII-only request frame (the raw body is a `String`): id 1, a call 16 of 2 bytes.
    let frame = [0x08, 0x01, 0x0a, 0x02, 0x08, 0x01];
    let cases: [(&str, Vec<u8>); 2] = [
        // Compressed flag without a grpc-encoding.
        ("compressed flag", grpc_frame(1, &frame)),
        // A frame that claims more bytes than the body has, then the end of the body.
        ("truncated frame", grpc_frame(0, &frame)[..8].to_vec()),
    ];
    for (what, body) in cases {
        let mut stream =
            raw_http::<ProbeResponse>(channel(&server.url()).await, &authority, PATH, body)
                .await
                .unwrap_or_else(|s| panic!("{what}: refused before the hello: {s:?}"));
        let mut frames = Vec::new();
        let status = loop {
            match tokio::time::timeout(tests::raw::READ_TIMEOUT, stream.message())
                .await
                .expect(what)
            {
                Ok(Some(r)) => frames.push(Frame::of(&r)),
                Ok(None) => break tonic::Status::ok(""),
                Err(s) => break s,
            }
        };
        assert!(
            matches!(status.code(), Code::InvalidArgument | Code::Internal),
            "{what}: the stream must not end with {status:?}"
        );
        assert!(
            frames.iter().any(
                |f| matches!(f.control(), Some(Kind::Goodbye(g)) if g.code == status.code() as i32)
            ),
            "{what}: no goodbye: {frames:?}"
        );
    }
    assert_eq!(server.handle.metrics().frames_rejected, 2);
    let (mut raw, _) = open(&server).await;
    still_works(&mut raw, 1).await;
}
