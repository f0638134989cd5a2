//! No frame the server sends grows with what a client sent, and none is larger than
//! the limit the hello advertises: error messages quote a short prefix of the input,
//! every error and goodbye message is bounded, and replies and pushes over the
//! advertised limit are refused to their sender with `OUT_OF_RANGE`.

// Test code: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use hub_core::proto::server_control::Kind;
use hub_core::quote::MAX_ERROR_MESSAGE_BYTES;
use hub_server::HubConfig;
use prost::Message;
use tests::probe::proto::probe_request::Call;
use tests::probe::proto::probe_response::Event;
use tests::probe::proto::*;
use tests::probe::{ProbeServer, channel, probe_client};
use tests::raw::{Frame, RawConn, drain, next_event};
use tonic::Code;

const PATH: &str = "/test.v1.ProbeHub/Connect";
/// An error frame is its message plus a few bytes of id, code and framing.
const MAX_ERROR_FRAME: usize = MAX_ERROR_MESSAGE_BYTES + 32;

type Raw = RawConn<ProbeResponse>;

/// Opens a raw connection and reads the hello.
async fn open(server: &ProbeServer) -> (Raw, hub_core::proto::ConnectionInfo) {
    let mut raw = Raw::open(channel(&server.url()).await, PATH, &[])
        .await
        .expect("open");
    let hello = raw.next().await.expect("hello").expect("hello");
    let Some(Kind::Hello(info)) = Frame::of(&hello).control().cloned() else {
        panic!("first frame is not a hello: {hello:?}");
    };
    (raw, info)
}

fn call(id: u64, call: Call) -> Vec<u8> {
    ProbeRequest {
        id,
        control: None,
        call: Some(call),
    }
    .encode_to_vec()
}

/// Reads the next frame: an error for `id` with `code`. Returns its encoded size and message.
async fn expect_error(raw: &mut Raw, id: u64, code: Code) -> (usize, String) {
    let r = next_event(raw).await;
    let f = Frame::of(&r);
    assert_eq!((f.id, f.error_code()), (id, Some(code)), "{r:?}");
    (r.encoded_len(), f.error.expect("error").message)
}

async fn still_works(raw: &mut Raw, id: u64) {
    raw.send(call(
        id,
        Call::Sleep(SleepRequest {
            ms: 0,
            tag: "alive".into(),
        }),
    ))
    .await;
    let r = next_event(raw).await;
    assert!(
        r.id == id && matches!(r.event, Some(Event::Sleep(ref d)) if d.tag == "alive"),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_megabyte_of_control_characters_gives_a_small_error_frame() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (mut raw, hello) = open(&server).await;
    assert_eq!(hello.max_outbound_message_bytes, hello.max_message_bytes);
    let bad = "\u{1}".repeat(1_000_000);

    // A connection id the framework parses (and quotes in its error).
    raw.send(call(
        1,
        Call::PushTo(PushToRequest {
            connection_id: bad.clone(),
            text: "x".into(),
        }),
    ))
    .await;
    let (size, message) = expect_error(&mut raw, 1, Code::InvalidArgument).await;
    println!("error frame for a 1 MB connection id of \\x01: {size} bytes");
    assert!(size <= 300, "{size} bytes: {message}");
    assert!(message.contains("…(1000000 bytes)"), "{message}");
    still_works(&mut raw, 2).await;

    // A group name with control characters (the longest valid length).
    raw.send(call(
        3,
        Call::Join(GroupRequest {
            group: "\u{1}".repeat(hub_core::MAX_GROUP_NAME_BYTES),
        }),
    ))
    .await;
    let (size, message) = expect_error(&mut raw, 3, Code::InvalidArgument).await;
    assert!(size <= 300, "{size} bytes: {message}");
    still_works(&mut raw, 4).await;

    // A handler that puts the whole input in its status: the frame is bounded anyway.
    raw.send(call(
        5,
        Call::Fail(FailRequest {
            code: Code::InvalidArgument as i32,
            message: bad.clone(),
        }),
    ))
    .await;
    let (size, message) = expect_error(&mut raw, 5, Code::InvalidArgument).await;
    assert!(size <= MAX_ERROR_FRAME, "{size} bytes");
    assert!(message.ends_with("…(1000000 bytes)"), "{message}");
    still_works(&mut raw, 6).await;
    assert_eq!(server.handle.connection_count(), 1);
}

#[tokio::test]
async fn a_megabyte_user_name_in_a_chat_whisper_gives_a_small_error() {
    let server = tests::TestServer::memory(HubConfig::default()).await;
    let (alice, _) = tests::joined(&server.url(), "lobby", "alice").await;
    let err = alice
        .whisper(examples::chat::WhisperRequest {
            user: "\u{1}".repeat(1_000_000),
            text: "psst".into(),
        })
        .await
        .unwrap_err();
    let hub_client::ClientError::Status(status) = err else {
        panic!("{err:?}");
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    println!(
        "chat whisper error for a 1 MB user name: {} bytes of message",
        status.message().len()
    );
    assert!(status.message().len() <= 300, "{}", status.message().len());
    assert!(status.message().contains("…(1000000 bytes)"), "{status:?}");
    // The connection is still usable.
    assert_eq!(alice.members().await.unwrap().count, 1);
}

#[tokio::test]
async fn a_long_close_reason_gives_a_bounded_goodbye_and_status() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (mut raw, _) = open(&server).await;
    raw.send(call(
        1,
        Call::Close(CloseRequest {
            code: Code::PermissionDenied as i32,
            reason: "\u{1}".repeat(100_000),
        }),
    ))
    .await;
    let (frames, status) = drain(&mut raw).await;
    let goodbye = frames
        .iter()
        .find_map(|r| match Frame::of(r).control() {
            Some(Kind::Goodbye(g)) => Some((r.encoded_len(), g.clone())),
            _ => None,
        })
        .expect("a goodbye");
    assert!(goodbye.0 <= MAX_ERROR_FRAME, "{} bytes", goodbye.0);
    assert!(goodbye.1.reason.ends_with("…(100000 bytes)"));
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().len() <= MAX_ERROR_MESSAGE_BYTES);
}

#[tokio::test]
async fn replies_and_pushes_over_the_advertised_limit_are_refused_with_out_of_range() {
    const LIMIT: usize = 64 * 1024;
    let config = HubConfig::default().max_outbound_message_bytes(Some(LIMIT));
    let server = ProbeServer::start(config).await;
    let (mut raw, hello) = open(&server).await;
    assert_eq!(hello.max_outbound_message_bytes, LIMIT as u64);
    assert_eq!(hello.max_message_bytes, 1024 * 1024);
    let (member, member_rx) = probe_client(&server.url()).await;
    member.join(tests::probe::group("g")).await.unwrap();

    // A reply over the limit: an error frame, the connection goes on.
    raw.send(call(
        1,
        Call::BigReply(BigReplyRequest { size: 100 * 1024 }),
    ))
    .await;
    let (_, message) = expect_error(&mut raw, 1, Code::OutOfRange).await;
    assert!(message.contains(&LIMIT.to_string()), "{message}");
    still_works(&mut raw, 2).await;
    assert_eq!(server.handle.metrics().frames_too_large, 1);

    // A push over the limit: refused to its sender, sent to no one.
    let mut big = tests::probe::broadcast("g", Mode::All, &[], "big");
    big.pad = 100 * 1024;
    raw.send(call(3, Call::Broadcast(big))).await;
    expect_error(&mut raw, 3, Code::OutOfRange).await;
    assert_eq!(server.handle.metrics().frames_too_large, 2);
    // Barrier: the next push from the same sender is the first the member sees.
    raw.send(call(
        4,
        Call::Broadcast(tests::probe::broadcast("g", Mode::All, &[], "small")),
    ))
    .await;
    let r = next_event(&mut raw).await;
    assert_eq!(r.id, 4, "{r:?}");
    let got = member_rx.wait_for(1, tests::raw::READ_TIMEOUT).await;
    assert_eq!(got, vec![tests::probe::Got::Note("small".into())]);

    // The largest reply that fits is sent, and is within the advertised limit.
    raw.send(call(5, Call::BigReply(BigReplyRequest { size: 60 * 1024 })))
        .await;
    let r = next_event(&mut raw).await;
    assert!(matches!(r.event, Some(Event::BigReply(_))), "{:?}", r.id);
    assert!(r.encoded_len() <= LIMIT);
    assert_eq!(server.handle.connection_count(), 2);
}
