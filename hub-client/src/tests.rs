//! The client's state machine against an in-process fake server, on paused time: call ids
//! matched to replies, the default and per-call timeouts, pushes and error frames, the
//! disconnect reason, `closed()`, heartbeats.
//!
//! The fake is a `GrpcService` in memory (no socket), so `tokio::time::pause()` runs
//! every timer at once and a test measures virtual time exactly.

// Test code: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http_body::Frame;
use hub_core::proto::{self, client_control, server_control};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Code;
use tonic::codec::{Codec, Streaming};

use crate::{
    ClientError, ClientSpec, ConnectOptions, ConnectionState, HubClient, PushHandler,
    ReconnectPolicy, ResponseParts,
};

/// A request frame: a call is a string.
#[derive(Clone, PartialEq, prost::Message)]
struct Req {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(message, optional, tag = "15")]
    control: Option<proto::ClientControl>,
    #[prost(string, optional, tag = "16")]
    call: Option<String>,
}

/// A response frame: a reply or push is a string.
#[derive(Clone, PartialEq, prost::Message)]
struct Resp {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint64, tag = "2")]
    seq: u64,
    #[prost(message, optional, tag = "3")]
    error: Option<proto::CallError>,
    #[prost(message, optional, tag = "15")]
    control: Option<proto::ServerControl>,
    #[prost(string, optional, tag = "16")]
    event: Option<String>,
}

struct Spec;

impl ClientSpec for Spec {
    type Request = Req;
    type Response = Resp;
    type Call = String;
    type Event = String;
    type Answer = ();
    const PATH: &'static str = "/test.v1.FakeHub/Connect";

    fn answer(id: u64, answer: Result<(), tonic::Status>) -> Req {
        let error = answer.err().map(|s| proto::CallError {
            code: s.code() as i32,
            message: s.message().to_owned(),
            ..Default::default()
        });
        Req {
            id: 0,
            call: None,
            control: Some(proto::ClientControl {
                kind: Some(proto::client_control::Kind::Answer(proto::AnswerInfo {
                    id,
                    error,
                })),
            }),
        }
    }

    fn request(id: u64, call: Option<String>, control: Option<proto::ClientControl>) -> Req {
        Req { id, control, call }
    }

    fn split(r: Resp) -> ResponseParts<String> {
        ResponseParts {
            id: r.id,
            seq: r.seq,
            error: r.error,
            control: r.control,
            event: r.event,
        }
    }
}

/// What reached the receiver.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Push(u64, String),
    Error(Code, String),
    State(ConnectionState),
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Got>>);

impl Recorder {
    fn got(&self) -> Vec<Got> {
        self.0.lock().unwrap().clone()
    }
}

impl PushHandler<String> for Recorder {
    fn on_push(&self, seq: u64, event: String) {
        self.0.lock().unwrap().push(Got::Push(seq, event));
    }
    fn on_error(&self, code: Code, message: &str) {
        self.0
            .lock()
            .unwrap()
            .push(Got::Error(code, message.to_owned()));
    }
    fn on_state(&self, state: &ConnectionState) {
        self.0.lock().unwrap().push(Got::State(state.clone()));
    }
}

type ResponseBody = http_body_util::StreamBody<
    tokio_stream::wrappers::UnboundedReceiverStream<Result<Frame<Bytes>, Infallible>>,
>;

/// The server's end of one `Connect` stream.
struct ServerEnd {
    /// The `Connect` request's headers (metadata).
    headers: http::HeaderMap,
    /// The client's request frames, decoded.
    requests: Streaming<Req>,
    /// The response body: gRPC-framed messages, then trailers.
    body: mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>,
}

/// A `GrpcService` that hands each `Connect` stream to the test.
#[derive(Clone)]
struct FakeService {
    accepted: mpsc::UnboundedSender<ServerEnd>,
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for FakeService {
    type Response = http::Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        assert_eq!(req.uri().path(), Spec::PATH);
        let headers = req.headers().clone();
        let mut codec = tonic_prost::ProstCodec::<Resp, Req>::default();
        let requests = Streaming::new_request(codec.decoder(), req.into_body(), None, None);
        let (body, rx) = mpsc::unbounded_channel();
        let _ = self.accepted.send(ServerEnd {
            headers,
            requests,
            body,
        });
        let body = http_body_util::StreamBody::new(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        );
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap();
        Box::pin(async move { Ok(response) })
    }
}

impl ServerEnd {
    fn send(&self, frame: Resp) {
        let msg = frame.encode_to_vec();
        let mut buf = BytesMut::with_capacity(5 + msg.len());
        buf.put_u8(0);
        buf.put_u32(msg.len() as u32);
        buf.put_slice(&msg);
        // The client may be gone already; what it does then is what is tested.
        let _ = self.body.send(Ok(Frame::data(buf.freeze())));
    }

    fn control(&self, kind: server_control::Kind) {
        self.send(Resp {
            control: Some(proto::ServerControl { kind: Some(kind) }),
            ..Default::default()
        });
    }

    fn reply(&self, id: u64, text: &str) {
        self.send(Resp {
            id,
            event: Some(text.into()),
            ..Default::default()
        });
    }

    // The error frame may gain fields; this test sets the two it is about.
    #[allow(clippy::needless_update)]
    fn error(&self, id: u64, code: Code, message: &str) {
        self.send(Resp {
            id,
            error: Some(proto::CallError {
                code: code as i32,
                message: message.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    /// Ends the stream with this status in the trailers.
    fn end(self, code: Code, message: &str) {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", (code as i32).into());
        if !message.is_empty() {
            trailers.insert("grpc-message", message.parse().unwrap());
        }
        let _ = self.body.send(Ok(Frame::trailers(trailers)));
    }

    /// The next request frame that is not a pong or ping (those are answered or skipped).
    async fn next_call(&mut self) -> Req {
        loop {
            let req = bounded(self.requests.message())
                .await
                .unwrap()
                .expect("the request stream ended");
            if req.control.is_none() {
                return req;
            }
        }
    }

    /// The next request frame, whatever it is; `None` once the request stream ended.
    async fn next(&mut self) -> Option<Req> {
        bounded(self.requests.message()).await.unwrap()
    }
}

/// A bound on every wait: a broken client fails its test instead of hanging it.
/// On paused time this costs nothing unless the wait is stuck.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), f)
        .await
        .expect("waited an hour of (paused) time")
}

fn hello(heartbeat_interval_ms: u64) -> server_control::Kind {
    server_control::Kind::Hello(proto::ConnectionInfo {
        connection_id: "c1".into(),
        server_id: "s1".into(),
        hub: "test.v1.FakeHub".into(),
        heartbeat_interval_ms,
        ..Default::default()
    })
}

/// Options with the client's own pings off, so request frames are only calls
/// (tests that are about pings turn them on).
fn quiet() -> ConnectOptions {
    ConnectOptions::default().ping_interval(None)
}

struct Fixture {
    client: HubClient<Spec>,
    server: ServerEnd,
    recorder: Arc<Recorder>,
}

/// Connects a client to a fake server that says hello with this heartbeat interval.
async fn connect_with(options: ConnectOptions, heartbeat_interval_ms: u64) -> Fixture {
    let (accepted, mut incoming) = mpsc::unbounded_channel();
    let recorder = Arc::new(Recorder::default());
    let connecting = tokio::spawn({
        let recorder = recorder.clone();
        async move { HubClient::<Spec>::connect(FakeService { accepted }, options, recorder).await }
    });
    let server = bounded(incoming.recv()).await.unwrap();
    server.control(hello(heartbeat_interval_ms));
    let client = bounded(connecting).await.unwrap().unwrap();
    Fixture {
        client,
        server,
        recorder,
    }
}

async fn connect(options: ConnectOptions) -> Fixture {
    connect_with(options, 0).await
}

#[tokio::test(start_paused = true)]
async fn the_hello_is_the_connection_info() {
    let f = connect(quiet()).await;
    assert_eq!(f.client.connection_id(), "c1");
    assert_eq!(f.client.info().hub, "test.v1.FakeHub");
    assert!(!f.client.is_closed());
}

#[tokio::test(start_paused = true)]
async fn replies_are_matched_to_their_calls_by_id() {
    let mut f = connect(quiet()).await;
    let a = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("a".into()).await }
    });
    let ra = f.server.next_call().await;
    let b = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("b".into()).await }
    });
    let rb = f.server.next_call().await;
    assert_eq!(ra.call.as_deref(), Some("a"));
    assert_eq!(rb.call.as_deref(), Some("b"));
    assert!(ra.id != 0 && rb.id != 0 && ra.id != rb.id, "{ra:?} {rb:?}");
    // Answered in the other order: each call still gets its own reply.
    f.server.reply(rb.id, "reply to b");
    f.server.reply(ra.id, "reply to a");
    assert_eq!(bounded(b).await.unwrap().unwrap(), "reply to b");
    assert_eq!(bounded(a).await.unwrap().unwrap(), "reply to a");
    // Nothing is left waiting.
    assert_eq!(pending(&f.client), 0);
}

#[tokio::test(start_paused = true)]
async fn a_reply_to_an_unknown_id_reaches_no_call() {
    let mut f = connect(quiet()).await;
    let call = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("x".into()).await }
    });
    let req = f.server.next_call().await;
    f.server.reply(req.id + 1000, "not yours");
    f.server
        .error(req.id + 1001, Code::NotFound, "not yours either");
    f.server.reply(req.id, "yours");
    assert_eq!(bounded(call).await.unwrap().unwrap(), "yours");
    // A stray reply is neither a push nor an error frame to the receiver.
    assert_eq!(f.recorder.got(), vec![]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_frees_its_slot_and_its_late_reply_reaches_no_call() {
    let mut f = connect(quiet()).await;
    let call = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("dropped".into()).await }
    });
    let req = f.server.next_call().await;
    assert_eq!(pending(&f.client), 1);
    call.abort();
    assert!(bounded(call).await.unwrap_err().is_cancelled());
    assert_eq!(pending(&f.client), 0);
    a_late_reply_reaches_no_call(&mut f, req.id).await;
}

/// Call `late`'s reply comes after the call was given up: it reaches no call (nor
/// the receiver), and the next call gets its own reply.
async fn a_late_reply_reaches_no_call(f: &mut Fixture, late: u64) {
    f.server.reply(late, "too late");
    let next = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("next".into()).await }
    });
    let req = f.server.next_call().await;
    f.server.reply(req.id, "on time");
    assert_eq!(bounded(next).await.unwrap().unwrap(), "on time");
    assert_eq!(pending(&f.client), 0);
    assert_eq!(f.recorder.got(), vec![]);
}

#[tokio::test(start_paused = true)]
async fn an_error_frame_fails_its_call_with_the_status() {
    let mut f = connect(quiet()).await;
    let call = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("x".into()).await }
    });
    let req = f.server.next_call().await;
    f.server
        .error(req.id, Code::PermissionDenied, "not in the room");
    let err = bounded(call).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, ClientError::Status(s) if s.code() == Code::PermissionDenied && s.message() == "not in the room"),
        "{err:?}"
    );
    // An answer with neither reply nor error is not taken for a reply.
    let call = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("y".into()).await }
    });
    let req = f.server.next_call().await;
    f.server.send(Resp {
        id: req.id,
        ..Default::default()
    });
    let err = bounded(call).await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::UnexpectedReply(_)), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn pushes_and_call_less_errors_go_to_the_receiver_in_order() {
    let mut f = connect(quiet()).await;
    f.server.send(Resp {
        seq: 1,
        event: Some("first".into()),
        ..Default::default()
    });
    f.server
        .error(0, Code::InvalidArgument, "bad fire-and-forget");
    f.server.send(Resp {
        seq: 2,
        event: Some("second".into()),
        ..Default::default()
    });
    // Barrier: a call answered after the pushes; the reader handles frames in order.
    let call = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("barrier".into()).await }
    });
    let req = f.server.next_call().await;
    f.server.reply(req.id, "done");
    bounded(call).await.unwrap().unwrap();
    assert_eq!(
        f.recorder.got(),
        vec![
            Got::Push(1, "first".into()),
            Got::Error(Code::InvalidArgument, "bad fire-and-forget".into()),
            Got::Push(2, "second".into()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_fire_and_forget_call_has_id_zero() {
    let mut f = connect(quiet()).await;
    f.client.send("ping me".into()).await.unwrap();
    let req = f.server.next_call().await;
    assert_eq!((req.id, req.call.as_deref()), (0, Some("ping me")));
}

#[tokio::test(start_paused = true)]
async fn a_call_times_out_after_the_default_call_timeout() {
    let mut f = connect(quiet().call_timeout(Some(Duration::from_secs(5)))).await;
    let started = Instant::now();
    let call = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("never answered".into()).await }
    });
    let req = f.server.next_call().await;
    let err = bounded(call).await.unwrap().unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout(t) if t == Duration::from_secs(5)),
        "{err:?}"
    );
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    // The timed-out call is forgotten: its late reply goes nowhere, the next call works.
    assert_eq!(pending(&f.client), 0);
    a_late_reply_reaches_no_call(&mut f, req.id).await;
    assert!(!f.client.is_closed());
}

#[tokio::test(start_paused = true)]
async fn the_default_call_timeout_is_thirty_seconds() {
    let mut f = connect(quiet()).await;
    let started = Instant::now();
    let call = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("never answered".into()).await }
    });
    f.server.next_call().await;
    let err = bounded(call).await.unwrap().unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout(t) if t == Duration::from_secs(30)),
        "{err:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn a_per_call_timeout_overrides_the_default() {
    let mut f = connect(quiet().call_timeout(Some(Duration::from_secs(5)))).await;
    // Shorter than the default.
    let started = Instant::now();
    let short = tokio::spawn({
        let c = f.client.clone();
        async move {
            c.call_with_timeout("short".into(), Some(Duration::from_millis(250)))
                .await
        }
    });
    f.server.next_call().await;
    let err = bounded(short).await.unwrap().unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout(t) if t == Duration::from_millis(250)),
        "{err:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    // None: no limit, the reply after a minute still arrives.
    let long = tokio::spawn({
        let c = f.client.clone();
        async move { c.call_with_timeout("long".into(), None).await }
    });
    let req = f.server.next_call().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!long.is_finished());
    f.server.reply(req.id, "a minute later");
    assert_eq!(bounded(long).await.unwrap().unwrap(), "a minute later");
}

#[tokio::test(start_paused = true)]
async fn no_default_timeout_waits_for_the_reply() {
    let mut f = connect(quiet().call_timeout(None)).await;
    let call = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("slow".into()).await }
    });
    let req = f.server.next_call().await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    f.server.reply(req.id, "ten minutes later");
    assert_eq!(bounded(call).await.unwrap().unwrap(), "ten minutes later");
}

#[tokio::test(start_paused = true)]
async fn the_goodbye_is_the_disconnect_reason_for_closed_and_for_waiting_calls() {
    let mut f = connect(quiet()).await;
    let closed = tokio::spawn({
        let c = f.client.clone();
        async move { c.closed().await }
    });
    let call = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("cut short".into()).await }
    });
    f.server.next_call().await;
    assert!(!closed.is_finished() && !f.client.is_closed());
    f.server
        .control(server_control::Kind::Goodbye(proto::Goodbye {
            code: Code::Unavailable as i32,
            reason: "server shutting down".into(),
        }));
    f.server.end(Code::Ok, "");
    let reason = bounded(closed).await.unwrap();
    assert_eq!(
        (reason.code, reason.message.as_str()),
        (Code::Unavailable, "server shutting down")
    );
    let err = bounded(call).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, ClientError::Disconnected(r) if *r == reason),
        "{err:?}"
    );
    assert!(f.client.is_closed());
    // Later calls fail at once with the same reason; `closed()` answers at once.
    let err = f.client.call("after".into()).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Disconnected(r) if *r == reason),
        "{err:?}"
    );
    let err = f.client.send("after".into()).await.unwrap_err();
    assert!(matches!(&err, ClientError::Disconnected(_)), "{err:?}");
    assert_eq!(bounded(f.client.closed()).await, reason);
}

#[tokio::test(start_paused = true)]
async fn an_error_status_is_the_disconnect_reason() {
    let mut f = connect(quiet()).await;
    let call = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("x".into()).await }
    });
    f.server.next_call().await;
    f.server.end(Code::ResourceExhausted, "outbound queue full");
    let reason = bounded(f.client.closed()).await;
    assert_eq!(
        (reason.code, reason.message.as_str()),
        (Code::ResourceExhausted, "outbound queue full")
    );
    let err = bounded(call).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test(start_paused = true)]
async fn a_clean_end_without_goodbye_fails_calls_as_unavailable() {
    let mut f = connect(quiet()).await;
    let call = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("x".into()).await }
    });
    f.server.next_call().await;
    f.server.end(Code::Ok, "");
    let reason = bounded(f.client.closed()).await;
    assert_eq!(reason.code, Code::Ok);
    assert!(reason.message.contains("closed the stream"), "{reason:?}");
    let err = bounded(call).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_is_given_up_after_dead_after() {
    let limit = Duration::from_secs(8);
    let f = connect(quiet().dead_after(Some(limit))).await;
    let started = Instant::now();
    let reason = bounded(f.client.closed()).await;
    assert_eq!(reason.code, Code::Unavailable);
    assert!(reason.message.contains("heartbeat timeout"), "{reason:?}");
    // Checked every quarter of the limit: gone after more than the limit, and soon after.
    let waited = started.elapsed();
    assert!(
        waited > limit && waited <= limit + limit / 4,
        "gave up after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn frames_keep_the_connection_alive_and_the_hello_sets_the_limit() {
    // No `dead_after`: three heartbeat intervals of the server's hello (3 s).
    let f = connect_with(quiet(), 1000).await;
    // Frames every second keep it open for a minute.
    for i in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        f.server.control(server_control::Kind::Ping(proto::Ping {
            nonce: i,
            last_rtt_us: 0,
        }));
    }
    assert!(!f.client.is_closed());
    // Then silence: gone after more than 3 s, and within 3 s plus two check periods
    // (the watchdog notes a frame at its next check, and gives up at a check).
    let started = Instant::now();
    let reason = bounded(f.client.closed()).await;
    assert!(reason.message.contains("heartbeat timeout"), "{reason:?}");
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_secs(3) && waited <= Duration::from_millis(4500),
        "gave up after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn server_pings_are_answered_with_their_nonce() {
    let mut f = connect(quiet()).await;
    f.server.control(server_control::Kind::Ping(proto::Ping {
        nonce: 42,
        last_rtt_us: 0,
    }));
    let req = f.server.next().await.unwrap();
    assert_eq!(req.id, 0);
    assert!(
        matches!(
            req.control.and_then(|c| c.kind),
            Some(client_control::Kind::Pong(proto::Pong { nonce: 42 }))
        ),
        "{:?}",
        req.call
    );
}

#[tokio::test(start_paused = true)]
async fn latency_is_measured_from_the_pong_of_the_latest_ping() {
    let period = Duration::from_secs(10);
    let mut f = connect(quiet().ping_interval(Some(period))).await;
    assert_eq!(f.client.latency(), None);
    let first = ping_nonce(f.server.next().await.unwrap());
    // Not answered; the next ping has a new nonce.
    let second = ping_nonce(f.server.next().await.unwrap());
    assert_ne!(first, second);
    // The late pong of the first ping is not a measurement.
    f.server
        .control(server_control::Kind::Pong(proto::Pong { nonce: first }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.server
        .control(server_control::Kind::Pong(proto::Pong { nonce: second }));
    // Barrier: the reader has handled the pongs once a later reply is in.
    let call = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("barrier".into()).await }
    });
    let req = f.server.next_call().await;
    f.server.reply(req.id, "ok");
    bounded(call).await.unwrap().unwrap();
    assert_eq!(f.client.latency(), Some(Duration::from_millis(300)));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_client_ends_the_request_stream() {
    let mut f = connect(quiet()).await;
    let other = f.client.clone();
    drop(f.client);
    other.send("still here".into()).await.unwrap();
    assert_eq!(
        f.server.next().await.unwrap().call.as_deref(),
        Some("still here")
    );
    drop(other);
    assert_eq!(f.server.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn a_server_that_does_not_say_hello_is_refused() {
    // The first frame is not a hello.
    let (accepted, mut incoming) = mpsc::unbounded_channel();
    let connecting = tokio::spawn(HubClient::<Spec>::connect(
        FakeService { accepted },
        quiet(),
        Arc::new(Recorder::default()),
    ));
    let server = bounded(incoming.recv()).await.unwrap();
    server.reply(1, "hi");
    let err = bounded(connecting).await.unwrap().unwrap_err();
    assert!(matches!(&err, ClientError::Connect(_)), "{err:?}");
    assert_eq!(err.code(), Code::Internal);

    // No frame at all: refused after the connect timeout.
    let (accepted, mut incoming) = mpsc::unbounded_channel();
    let started = Instant::now();
    let connecting = tokio::spawn(HubClient::<Spec>::connect(
        FakeService { accepted },
        quiet(),
        Arc::new(Recorder::default()),
    ));
    let _server = bounded(incoming.recv()).await.unwrap();
    let err = bounded(connecting).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(started.elapsed(), ConnectOptions::default().connect_timeout);
}

fn ping_nonce(req: Req) -> u64 {
    match req.control.and_then(|c| c.kind) {
        Some(client_control::Kind::Ping(p)) => p.nonce,
        other => panic!("not a ping: {other:?}"),
    }
}

/// Calls waiting for their reply.
fn pending(client: &HubClient<Spec>) -> usize {
    client.pending_calls()
}

#[tokio::test(start_paused = true)]
async fn a_frame_error_with_a_call_id_is_not_that_calls_answer() {
    let mut f = connect(quiet()).await;
    let call = tokio::spawn({
        let c = f.client.clone();
        async move { c.call("x".into()).await }
    });
    let req = f.server.next_call().await;
    // The server refused another frame that reused this id (scope FRAME): the call
    // still waits for its own answer, and the refusal goes to the receiver.
    f.server.send(Resp {
        id: req.id,
        error: Some(proto::CallError {
            code: Code::AlreadyExists as i32,
            message: "id in use".into(),
            scope: proto::ErrorScope::Frame as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    f.server.reply(req.id, "yours");
    assert_eq!(bounded(call).await.unwrap().unwrap(), "yours");
    assert_eq!(
        f.recorder.got(),
        vec![Got::Error(Code::AlreadyExists, "id in use".into())]
    );
}

#[tokio::test(start_paused = true)]
async fn calls_with_the_default_timeout_each_time_out_at_their_own_deadline() {
    let timeout = Duration::from_secs(5);
    let mut f = connect(quiet().call_timeout(Some(timeout))).await;
    let call = |text: &'static str| {
        let c = f.client.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (c.call(text.into()).await, started.elapsed())
        })
    };
    let a = call("a");
    f.server.next_call().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = call("b");
    f.server.next_call().await;
    let answered = call("answered");
    let req = f.server.next_call().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.server.reply(req.id, "in time");
    let (reply, took) = bounded(answered).await.unwrap();
    assert_eq!(reply.unwrap(), "in time");
    assert_eq!(took, Duration::from_secs(1));
    for late in [a, b] {
        let (reply, took) = bounded(late).await.unwrap();
        assert!(
            matches!(reply, Err(ClientError::Timeout(t)) if t == timeout),
            "{reply:?}"
        );
        assert_eq!(took, timeout);
    }
    assert_eq!(pending(&f.client), 0);
}

#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_room_in_the_send_queue_still_times_out() {
    let timeout = Duration::from_secs(5);
    let mut options = quiet().call_timeout(Some(timeout));
    options.send_queue = 1;
    // The server reads no request: the first call fills the queue, the second waits.
    let f = connect(options).await;
    let started = Instant::now();
    let calls: Vec<_> = ["queued", "waiting for room"]
        .into_iter()
        .map(|text| {
            let c = f.client.clone();
            tokio::spawn(async move { c.call(text.into()).await })
        })
        .collect();
    for call in calls {
        let err = bounded(call).await.unwrap().unwrap_err();
        assert!(
            matches!(err, ClientError::Timeout(t) if t == timeout),
            "{err:?}"
        );
    }
    assert_eq!(started.elapsed(), timeout);
    assert_eq!(pending(&f.client), 0);
}

#[test]
fn deadlines_of_calls_answered_out_of_order_do_not_pile_up() {
    use crate::shared::Slot;
    let mut calls = crate::shared::Calls::<String>::new();
    let now = Instant::now();
    for id in 1..=10_000u64 {
        calls
            .slots
            .insert(id, Slot::Waiting(Some(Waker::noop().clone())));
        calls
            .deadlines
            .push_back((now + Duration::from_secs(30), id));
        // Call 1 is never answered; the others are, as they come, and take their answer.
        if id > 1 {
            assert!(matches!(calls.answer(id, Ok("reply".into())), Ok(Some(_))));
        }
        assert!(calls.deadlines.len() <= 2 * calls.slots.len() + 64 + 1);
        if id > 1 {
            assert!(matches!(calls.slots.remove(&id), Some(Slot::Done(Ok(_)))));
        }
    }
    assert_eq!(calls.slots.len(), 1);
    assert_eq!(calls.next_deadline(), Some(now + Duration::from_secs(30)));
    let mut expired = Vec::new();
    calls.expire(
        now + Duration::from_secs(30),
        Duration::from_secs(30),
        &mut expired,
    );
    assert_eq!(expired.len(), 1);
    assert!(calls.deadlines.is_empty());
    assert!(matches!(
        calls.slots.get(&1),
        Some(Slot::Done(Err(e))) if matches!(**e, ClientError::Timeout(_))
    ));
    // A reply after the timeout reaches no call.
    assert!(calls.answer(1, Ok("late".into())).is_err());
}

// Reconnecting: on a hello that offers a session, a dropped stream is followed by new
// ones, with `hub-resume` and the last push seq seen.

const CREDENTIAL: &str = "c1.0123456789abcdef0123456789abcdef";

/// A hello of connection `id` offering a session; `resumption`: the answer to a resume.
fn session_hello(id: &str, resumption: Option<proto::ResumeOutcome>) -> server_control::Kind {
    server_control::Kind::Hello(proto::ConnectionInfo {
        connection_id: id.into(),
        server_id: "s1".into(),
        hub: "test.v1.FakeHub".into(),
        resume_credential: CREDENTIAL.into(),
        session_grace_ms: 120_000,
        resumption: resumption.map(|outcome| proto::Resumption {
            outcome: outcome as i32,
            reason: format!("{outcome:?}"),
            replayed: 0,
        }),
        ..Default::default()
    })
}

/// Reconnects with exact delays (no jitter): 100 ms, then doubled, up to 1 s.
fn reconnecting() -> ConnectOptions {
    quiet().reconnect(
        ReconnectPolicy::default()
            .backoff(Duration::from_millis(100), Duration::from_secs(1))
            .jitter(0.0),
    )
}

struct Session {
    client: HubClient<Spec>,
    server: ServerEnd,
    recorder: Arc<Recorder>,
    /// The client's later streams.
    incoming: mpsc::UnboundedReceiver<ServerEnd>,
}

async fn session(options: ConnectOptions) -> Session {
    let (accepted, mut incoming) = mpsc::unbounded_channel();
    let recorder = Arc::new(Recorder::default());
    let connecting = tokio::spawn({
        let recorder = recorder.clone();
        async move { HubClient::<Spec>::connect(FakeService { accepted }, options, recorder).await }
    });
    let server = bounded(incoming.recv()).await.unwrap();
    assert!(server.headers.get("hub-resume").is_none());
    server.control(session_hello("c1", None));
    let client = bounded(connecting).await.unwrap().unwrap();
    Session {
        client,
        server,
        recorder,
        incoming,
    }
}

fn push(seq: u64, text: &str) -> Resp {
    Resp {
        seq,
        event: Some(text.into()),
        ..Default::default()
    }
}

/// Makes a call and answers it: every frame the server sent before is handled.
async fn barrier(client: &HubClient<Spec>, server: &mut ServerEnd) {
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.call("barrier".into()).await }
    });
    let req = server.next_call().await;
    assert_eq!(req.call.as_deref(), Some("barrier"));
    server.reply(req.id, "done");
    assert_eq!(bounded(call).await.unwrap().unwrap(), "done");
}

async fn wait_state(client: &HubClient<Spec>, f: impl Fn(&ConnectionState) -> bool) {
    let mut rx = client.watch_state();
    bounded(rx.wait_for(|s| f(s))).await.unwrap();
}

fn header<'a>(server: &'a ServerEnd, name: &str) -> Option<&'a str> {
    server.headers.get(name).map(|v| v.to_str().unwrap())
}

fn dropped() -> ConnectionState {
    ConnectionState::Reconnecting {
        attempt: 1,
        cause: crate::CloseStatus {
            code: Code::Unavailable,
            message: "connection reset".into(),
        },
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_stream_is_resumed_and_missed_pushes_come_once_in_order() {
    let mut s = session(reconnecting()).await;
    s.server.send(push(1, "a"));
    s.server.send(push(2, "b"));
    let in_flight = tokio::spawn({
        let c = s.client.clone();
        async move { c.call("in flight".into()).await }
    });
    let old = s.server.next_call().await;
    // The stream breaks (a status with no goodbye is a transport failure).
    s.server.end(Code::Unavailable, "connection reset");
    let err = bounded(in_flight).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, ClientError::ConnectionLost(r) if r.message == "connection reset"),
        "{err:?}"
    );
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(s.client.state(), dropped());
    assert!(!s.client.is_closed());
    let started = Instant::now();
    let mut server = bounded(s.incoming.recv()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(header(&server, "hub-resume"), Some(CREDENTIAL));
    assert_eq!(header(&server, "hub-resume-seq"), Some("2"));
    server.control(session_hello("c1", Some(proto::ResumeOutcome::Resumed)));
    // A push the client had (sent again by a server that got it wrong), then one it missed.
    server.send(push(2, "b"));
    server.send(push(3, "c"));
    // The reply to the call in flight comes on the new stream: it reaches no one.
    server.reply(old.id, "late");
    barrier(&s.client, &mut server).await;
    assert_eq!(
        s.recorder.got(),
        vec![
            Got::Push(1, "a".into()),
            Got::Push(2, "b".into()),
            Got::State(dropped()),
            Got::State(ConnectionState::Resumed),
            Got::Push(3, "c".into()),
        ]
    );
    assert_eq!(s.client.state(), ConnectionState::Resumed);
    assert_eq!(
        (s.client.connection_id().as_str(), s.client.last_seq()),
        ("c1", 3)
    );
    assert_eq!(pending(&s.client), 0);
}

/// A push of a group with history carries its position: the client keeps the last
/// one of each group and presents them all when it resumes; a new connection (not
/// resumed) starts with none.
#[tokio::test(start_paused = true)]
async fn the_last_position_of_each_group_is_presented_on_a_resume() {
    use prost::Message as _;
    let at = |seq: u64, group: &str, offset: u64, epoch: u64| Resp {
        control: Some(proto::ServerControl {
            kind: Some(proto::server_control::Kind::Position(proto::Position {
                group: group.into(),
                offset,
                epoch,
            })),
        }),
        ..push(seq, "p")
    };
    let mut s = session(reconnecting()).await;
    s.server.send(at(1, "lobby", 7, 3));
    s.server.send(at(2, "lobby", 8, 3));
    s.server.send(at(3, "$user:alice", 2, 5));
    s.server.send(push(4, "no position"));
    barrier(&s.client, &mut s.server).await;
    s.server.end(Code::Unavailable, "connection reset");
    let server = bounded(s.incoming.recv()).await.unwrap();
    let presented = |server: &ServerEnd| {
        tonic::metadata::MetadataMap::from_headers(server.headers.clone())
            .get_bin("hub-resume-positions-bin")
            .map(|v| {
                let bytes = v.to_bytes().expect("base64");
                proto::ResumePositions::decode(bytes).expect("ResumePositions")
            })
    };
    let got = presented(&server).expect("positions presented");
    let list: Vec<(String, u64, u64)> = got
        .positions
        .into_iter()
        .map(|p| (p.group, p.offset, p.epoch))
        .collect();
    assert_eq!(list, [("$user:alice".into(), 2, 5), ("lobby".into(), 8, 3)]);
    // Not resumed: a new connection, whose groups are new.
    server.control(session_hello("c2", Some(proto::ResumeOutcome::Expired)));
    wait_state(&s.client, ConnectionState::is_connected).await;
    server.end(Code::Unavailable, "connection reset");
    let again = bounded(s.incoming.recv()).await.unwrap();
    assert!(presented(&again).is_none());
}

/// At most `MAX_POSITIONS` positions are kept: the least recently updated go first.
#[tokio::test(start_paused = true)]
async fn positions_kept_are_bounded_the_oldest_dropped() {
    use prost::Message as _;
    let mut s = session(reconnecting()).await;
    let n = crate::MAX_POSITIONS as u64 + 2;
    for seq in 1..=n {
        s.server.send(Resp {
            control: Some(proto::ServerControl {
                kind: Some(proto::server_control::Kind::Position(proto::Position {
                    group: format!("g{seq}"),
                    offset: seq,
                    epoch: 1,
                })),
            }),
            ..push(seq, "p")
        });
    }
    barrier(&s.client, &mut s.server).await;
    s.server.end(Code::Unavailable, "connection reset");
    let server = bounded(s.incoming.recv()).await.unwrap();
    let bytes = tonic::metadata::MetadataMap::from_headers(server.headers.clone())
        .get_bin("hub-resume-positions-bin")
        .expect("positions")
        .to_bytes()
        .expect("base64");
    let groups: std::collections::BTreeSet<String> = proto::ResumePositions::decode(bytes)
        .expect("ResumePositions")
        .positions
        .into_iter()
        .map(|p| p.group)
        .collect();
    assert_eq!(groups.len(), crate::MAX_POSITIONS);
    assert!(
        !groups.contains("g1") && !groups.contains("g2"),
        "{groups:?}"
    );
    assert!(groups.contains(&format!("g{n}")));
}

/// Another server restored the session (RESTORED): the same id, pushes numbered on
/// after the seq presented, so the client keeps counting from there and presents it
/// again at the next drop (a reset to 0 would ask for pushes it already had).
#[tokio::test(start_paused = true)]
async fn a_restored_session_keeps_its_seq_for_the_next_resume() {
    let mut s = session(reconnecting()).await;
    s.server.send(push(1, "a"));
    s.server.send(push(2, "b"));
    barrier(&s.client, &mut s.server).await;
    s.server.end(Code::Unavailable, "connection reset");
    let server = bounded(s.incoming.recv()).await.unwrap();
    assert_eq!(header(&server, "hub-resume-seq"), Some("2"));
    server.control(session_hello("c1", Some(proto::ResumeOutcome::Restored)));
    wait_state(&s.client, ConnectionState::is_connected).await;
    assert!(matches!(
        s.client.state(),
        ConnectionState::ResyncNeeded {
            outcome: proto::ResumeOutcome::Restored,
            ..
        }
    ));
    assert_eq!(s.client.last_seq(), 2);
    // Dropped again before any push: the resume still says 2.
    server.end(Code::Unavailable, "connection reset");
    let again = bounded(s.incoming.recv()).await.unwrap();
    assert_eq!(header(&again, "hub-resume-seq"), Some("2"));
}

/// A server bounding its session record lookups refuses a resume past the bound with
/// `UNAVAILABLE`, before any hello: the client backs off and presents the same
/// credential and seq again, and the retry restores the session.
#[tokio::test(start_paused = true)]
async fn a_resume_throttled_with_unavailable_is_retried_with_the_same_credential() {
    let mut s = session(reconnecting()).await;
    s.server.send(push(1, "a"));
    s.server.send(push(2, "b"));
    barrier(&s.client, &mut s.server).await;
    s.server.end(Code::Unavailable, "connection reset");
    for attempt in 1..=2u32 {
        let server = bounded(s.incoming.recv()).await.unwrap();
        assert_eq!(header(&server, "hub-resume"), Some(CREDENTIAL), "{attempt}");
        assert_eq!(header(&server, "hub-resume-seq"), Some("2"), "{attempt}");
        server.end(
            Code::Unavailable,
            "too many sessions are being restored on this server; retry with the same \
             credential after a backoff",
        );
    }
    let started = Instant::now();
    let server = bounded(s.incoming.recv()).await.unwrap();
    // The third attempt, after the second's backoff.
    assert_eq!(started.elapsed(), Duration::from_millis(400));
    assert!(
        matches!(s.client.state(), ConnectionState::Reconnecting { attempt: 3, ref cause } if cause.code == Code::Unavailable),
        "{:?}",
        s.client.state()
    );
    assert_eq!(header(&server, "hub-resume"), Some(CREDENTIAL));
    assert_eq!(header(&server, "hub-resume-seq"), Some("2"));
    server.control(session_hello("c1", Some(proto::ResumeOutcome::Restored)));
    wait_state(&s.client, ConnectionState::is_connected).await;
    assert_eq!(
        (s.client.connection_id().as_str(), s.client.last_seq()),
        ("c1", 2)
    );
}

#[tokio::test(start_paused = true)]
async fn calls_made_while_reconnecting_wait_for_the_new_stream_within_their_timeout() {
    let mut s = session(reconnecting()).await;
    s.server.end(Code::Unavailable, "connection reset");
    wait_state(&s.client, ConnectionState::is_reconnecting).await;
    let started = Instant::now();
    let waits = tokio::spawn({
        let c = s.client.clone();
        async move { c.call("made while reconnecting".into()).await }
    });
    let short = tokio::spawn({
        let c = s.client.clone();
        async move {
            c.call_with_timeout("too short".into(), Some(Duration::from_millis(40)))
                .await
        }
    });
    let sent = tokio::spawn({
        let c = s.client.clone();
        async move { c.send("fire and forget".into()).await }
    });
    let err = bounded(short).await.unwrap().unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout(t) if t == Duration::from_millis(40)),
        "{err:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_millis(40));
    let mut server = bounded(s.incoming.recv()).await.unwrap();
    server.control(session_hello("c1", Some(proto::ResumeOutcome::Resumed)));
    bounded(sent).await.unwrap().unwrap();
    // Each is sent once, on the new stream; the one that timed out never.
    let mut got = Vec::new();
    for _ in 0..2 {
        let req = server.next_call().await;
        if req.id != 0 {
            server.reply(req.id, "answered");
        }
        got.push(req.call.unwrap());
    }
    got.sort();
    assert_eq!(got, ["fire and forget", "made while reconnecting"]);
    assert_eq!(bounded(waits).await.unwrap().unwrap(), "answered");
    barrier(&s.client, &mut server).await;
}

#[tokio::test(start_paused = true)]
async fn a_resume_refused_is_a_new_connection_that_needs_a_resync() {
    let mut s = session(reconnecting()).await;
    s.server.send(push(7, "old"));
    barrier(&s.client, &mut s.server).await;
    s.server.end(Code::Unavailable, "connection reset");
    let mut server = bounded(s.incoming.recv()).await.unwrap();
    assert_eq!(header(&server, "hub-resume-seq"), Some("7"));
    server.control(session_hello("c2", Some(proto::ResumeOutcome::Unknown)));
    // The new connection numbers its pushes from 1: they are not taken for old ones.
    server.send(push(1, "new"));
    barrier(&s.client, &mut server).await;
    let resync = ConnectionState::ResyncNeeded {
        outcome: proto::ResumeOutcome::Unknown,
        reason: "Unknown".into(),
    };
    assert_eq!(s.client.state(), resync);
    assert_eq!(s.client.connection_id(), "c2");
    assert_eq!(
        s.recorder.got(),
        vec![
            Got::Push(7, "old".into()),
            Got::State(dropped()),
            Got::State(resync),
            Got::Push(1, "new".into()),
        ]
    );
    // The next drop presents the new connection's count.
    server.end(Code::Unavailable, "connection reset");
    let server = bounded(s.incoming.recv()).await.unwrap();
    assert_eq!(header(&server, "hub-resume-seq"), Some("1"));
}

#[tokio::test(start_paused = true)]
async fn attempts_back_off_exponentially_then_the_client_gives_up() {
    let policy = ReconnectPolicy::default()
        .backoff(Duration::from_millis(100), Duration::from_millis(400))
        .jitter(0.0)
        .max_attempts(Some(4));
    let mut s = session(quiet().reconnect(policy)).await;
    s.server.end(Code::Unavailable, "connection reset");
    let mut gaps = Vec::new();
    let mut at = Instant::now();
    for attempt in 1..=4u32 {
        let server = bounded(s.incoming.recv()).await.unwrap();
        gaps.push(at.elapsed().as_millis());
        at = Instant::now();
        assert_eq!(header(&server, "hub-resume"), Some(CREDENTIAL));
        assert!(
            matches!(s.client.state(), ConnectionState::Reconnecting { attempt: a, .. } if a == attempt),
            "{:?}",
            s.client.state()
        );
        // Refused before any hello (a server not up yet, a proxy with no upstream).
        server.end(Code::Unavailable, "no upstream");
    }
    assert_eq!(gaps, [100, 200, 400, 400]);
    let reason = bounded(s.client.closed()).await;
    assert_eq!(reason.code, Code::Unavailable);
    assert!(
        reason
            .message
            .contains("gave up reconnecting after 4 attempts")
            && reason.message.contains("no upstream"),
        "{reason:?}"
    );
    assert_eq!(s.client.state(), ConnectionState::Closed(reason.clone()));
    let err = s.client.call("after".into()).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Disconnected(r) if *r == reason),
        "{err:?}"
    );
    // The client is done with the transport: no fifth attempt.
    assert!(bounded(s.incoming.recv()).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn an_attempt_refused_as_unauthenticated_closes_the_client() {
    let mut s = session(reconnecting()).await;
    s.server.end(Code::Unavailable, "connection reset");
    let server = bounded(s.incoming.recv()).await.unwrap();
    server.end(Code::Unauthenticated, "token expired");
    let reason = bounded(s.client.closed()).await;
    assert_eq!(
        (reason.code, reason.message.as_str()),
        (Code::Unauthenticated, "token expired")
    );
    assert!(bounded(s.incoming.recv()).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn an_attempt_with_no_hello_is_bounded_by_the_connect_timeout() {
    let mut s = session(reconnecting()).await;
    s.server.end(Code::Unavailable, "connection reset");
    let _silent = bounded(s.incoming.recv()).await.unwrap();
    let started = Instant::now();
    let server = bounded(s.incoming.recv()).await.unwrap();
    // The silent attempt's 10 s, then the second attempt's 200 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(10_200));
    assert!(
        matches!(s.client.state(), ConnectionState::Reconnecting { attempt: 2, ref cause } if cause.code == Code::DeadlineExceeded),
        "{:?}",
        s.client.state()
    );
    server.control(session_hello("c1", Some(proto::ResumeOutcome::Resumed)));
    wait_state(&s.client, ConnectionState::is_connected).await;
}

#[tokio::test(start_paused = true)]
async fn a_goodbye_a_clean_end_or_reconnect_off_close_the_client() {
    // A goodbye: the server closed the connection on purpose (a kick).
    let mut s = session(reconnecting()).await;
    s.server
        .control(server_control::Kind::Goodbye(proto::Goodbye {
            code: Code::PermissionDenied as i32,
            reason: "kicked".into(),
        }));
    s.server.end(Code::PermissionDenied, "kicked");
    assert_eq!(bounded(s.client.closed()).await.message, "kicked");
    assert!(bounded(s.incoming.recv()).await.is_none());
    // Not even with a code that is not final by itself.
    let mut s = session(reconnecting()).await;
    s.server
        .control(server_control::Kind::Goodbye(proto::Goodbye {
            code: Code::ResourceExhausted as i32,
            reason: "outbound queue full".into(),
        }));
    s.server.end(Code::ResourceExhausted, "outbound queue full");
    assert_eq!(
        bounded(s.client.closed()).await.message,
        "outbound queue full"
    );
    assert!(bounded(s.incoming.recv()).await.is_none());
    // A clean end.
    let mut s = session(reconnecting()).await;
    s.server.end(Code::Ok, "");
    assert_eq!(bounded(s.client.closed()).await.code, Code::Ok);
    assert!(bounded(s.incoming.recv()).await.is_none());
    // Reconnect off.
    let mut s = session(quiet().reconnect(ReconnectPolicy::never())).await;
    s.server.end(Code::Unavailable, "connection reset");
    assert_eq!(bounded(s.client.closed()).await.message, "connection reset");
    assert!(bounded(s.incoming.recv()).await.is_none());
    assert!(matches!(
        s.recorder.got().last(),
        Some(Got::State(ConnectionState::Closed(_)))
    ));
}

/// A server shutting down (a rolling restart) says goodbye with UNAVAILABLE: the
/// client reconnects (behind a load balancer, to another server) and resumes there if
/// it can.
#[tokio::test(start_paused = true)]
async fn a_goodbye_of_a_server_shutting_down_is_reconnected_from() {
    let mut s = session(reconnecting()).await;
    s.server
        .control(server_control::Kind::Goodbye(proto::Goodbye {
            code: Code::Unavailable as i32,
            reason: "server shutting down".into(),
        }));
    s.server.end(Code::Unavailable, "server shutting down");
    let server = bounded(s.incoming.recv()).await.unwrap();
    assert!(server.headers.get("hub-resume").is_some());
    server.control(session_hello("c1", Some(proto::ResumeOutcome::Resumed)));
    wait_state(&s.client, ConnectionState::is_connected).await;
    assert!(!s.client.is_closed());
}

#[tokio::test(start_paused = true)]
async fn without_a_session_only_always_reconnects_and_it_is_a_resync() {
    let (accepted, mut incoming) = mpsc::unbounded_channel();
    let connecting = tokio::spawn(HubClient::<Spec>::connect(
        FakeService { accepted },
        quiet().reconnect(ReconnectPolicy::always().jitter(0.0)),
        Arc::new(Recorder::default()),
    ));
    let server = bounded(incoming.recv()).await.unwrap();
    server.control(hello(0));
    let client = bounded(connecting).await.unwrap().unwrap();
    server.end(Code::Unavailable, "connection reset");
    let server = bounded(incoming.recv()).await.unwrap();
    assert!(server.headers.get("hub-resume").is_none());
    server.control(server_control::Kind::Hello(proto::ConnectionInfo {
        connection_id: "c2".into(),
        ..Default::default()
    }));
    wait_state(&client, ConnectionState::is_connected).await;
    assert!(
        matches!(
            client.state(),
            ConnectionState::ResyncNeeded {
                outcome: proto::ResumeOutcome::Unspecified,
                ..
            }
        ),
        "{:?}",
        client.state()
    );
    assert_eq!(client.connection_id(), "c2");
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_is_reconnected_and_its_stream_not_ended_cleanly() {
    let mut s = session(reconnecting().dead_after(Some(Duration::from_secs(8)))).await;
    let mut old = s.server;
    let server = bounded(s.incoming.recv()).await.unwrap();
    assert!(
        matches!(s.client.state(), ConnectionState::Reconnecting { attempt: 1, ref cause } if cause.message.contains("heartbeat timeout")),
        "{:?}",
        s.client.state()
    );
    server.control(session_hello("c1", Some(proto::ResumeOutcome::Resumed)));
    wait_state(&s.client, ConnectionState::is_connected).await;
    // The old stream is not ended cleanly (that would end the session on the
    // server): its request side stays as it was. (On paused time, in memory: nothing
    // but the client could make it ready, so a minute of virtual time proves it.)
    let end = tokio::time::timeout(Duration::from_secs(60), old.requests.message()).await;
    assert!(end.is_err(), "{end:?}");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_client_while_it_reconnects_stops_it() {
    let policy = ReconnectPolicy::default()
        .backoff(Duration::from_secs(5), Duration::from_secs(5))
        .jitter(0.0);
    let mut s = session(quiet().reconnect(policy)).await;
    s.server.end(Code::Unavailable, "connection reset");
    wait_state(&s.client, ConnectionState::is_reconnecting).await;
    drop(s.client);
    // No attempt after the backoff: the transport is dropped.
    assert!(bounded(s.incoming.recv()).await.is_none());
}
