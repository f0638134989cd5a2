//! One connection floods; nobody else pays for it. Inbound rate limits answer the
//! flooder with `RESOURCE_EXHAUSTED` and then close it; its victims, slow readers,
//! stay connected and get every push that went through, in order. And the
//! slow-consumer policy tells a client briefly behind from one that stopped reading.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use hub_core::proto::ErrorScope;
use hub_core::proto::server_control::Kind;
use hub_server::{DisconnectReason, HubConfig};
use prost::Message;
use tests::probe::proto::probe_request::Call;
use tests::probe::proto::probe_response::Event;
use tests::probe::proto::*;
use tests::probe::{ProbeServer, group};
use tests::raw::{Frame, RawCodec, RawConn, drain, next_event};

use tokio::sync::mpsc;
use tonic::{Code, Status, Streaming};

const PATH: &str = "/test.v1.ProbeHub/Connect";
const WAIT: Duration = Duration::from_secs(20);
const FLOOD: usize = 5000;
/// Padding of each flooded push: big enough that 5,000 of them overflow a slow
/// reader's HTTP/2 window and the server's buffers before the fix.
const PAD: u32 = 256;

fn frame(id: u64, call: Call) -> Bytes {
    ProbeRequest {
        id,
        control: None,
        call: Some(call),
    }
    .encode_to_vec()
    .into()
}

/// A channel whose HTTP/2 windows are 64 KiB, so a slow reader is slow at once.
async fn small_window(server: &ProbeServer) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap()
}

/// Opens a Connect stream fed by a channel the caller keeps (sends never panic).
async fn open_pipe(
    channel: tonic::transport::Channel,
) -> (mpsc::Sender<Bytes>, Streaming<ProbeResponse>, String) {
    let (tx, rx) = mpsc::channel(FLOOD + 16);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut stream = grpc
        .streaming(
            request,
            http::uri::PathAndQuery::from_static(PATH),
            RawCodec::<ProbeResponse>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let hello = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(Kind::Hello(info)) = Frame::of(&hello).control().cloned() else {
        panic!("no hello: {hello:?}")
    };
    (tx, stream, info.connection_id)
}

/// Reads pushes at `per_second` until the note `end`; returns the notes' texts and seqs.
/// Fails the test if the stream ends first.
async fn read_slowly(
    mut stream: Streaming<ProbeResponse>,
    per_second: u64,
) -> (Vec<String>, Vec<u64>) {
    let mut texts = Vec::new();
    let mut seqs = Vec::new();
    let pause = Duration::from_micros(1_000_000 / per_second);
    loop {
        let r = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("the victim got nothing in time");
        let r = match r {
            Ok(Some(r)) => r,
            other => panic!(
                "the victim's stream ended: {other:?} after {} notes",
                texts.len()
            ),
        };
        let f = Frame::of(&r);
        if f.is_chatter() {
            continue;
        }
        match r.event {
            Some(Event::OnNote(n)) if n.text == "end" => return (texts, seqs),
            Some(Event::OnNote(n)) => {
                texts.push(n.text);
                seqs.push(r.seq);
            }
            _ if r.id != 0 => {}
            other => panic!("unexpected frame for the victim: {other:?} {f:?}"),
        }
        tokio::time::sleep(pause).await;
    }
}

/// Sends `FLOOD` fire-and-forget calls made by `call(n)` as fast as the stream takes
/// them; stops early if the server closed the stream.
async fn flood(tx: &mpsc::Sender<Bytes>, call: impl Fn(usize) -> Call) {
    for n in 0..FLOOD {
        if tx.send(frame(0, call(n))).await.is_err() {
            break;
        }
    }
}

/// Reads the flooder's stream to its end: every frame before the goodbye is a refusal
/// of a fire-and-forget call of case `field`, told apart from a frame error by its scope.
async fn flooder_is_closed(stream: &mut Streaming<ProbeResponse>, field: u32) -> usize {
    let mut refusals = 0;
    let status = loop {
        match tokio::time::timeout(WAIT, stream.message()).await.unwrap() {
            Ok(Some(r)) => {
                let f = Frame::of(&r);
                if let Some(Kind::Goodbye(g)) = f.control() {
                    assert_eq!(g.code, Code::ResourceExhausted as i32, "{g:?}");
                    assert!(g.reason.contains("refused"), "{g:?}");
                    continue;
                }
                if f.is_chatter() {
                    continue;
                }
                let e = f.error.expect("only refusals come back to the flooder");
                assert_eq!(
                    (f.id, e.code, e.scope(), e.call),
                    (0, Code::ResourceExhausted as i32, ErrorScope::Call, field),
                    "{e:?}"
                );
                assert!(e.message.contains("rate limit"), "{e:?}");
                refusals += 1;
            }
            Ok(None) => break Status::ok(""),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    refusals
}

fn assert_in_order(texts: &[String], seqs: &[u64]) {
    let numbers: Vec<usize> = texts.iter().map(|t| t.parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

/// The finding: 5,000 fire-and-forget whispers to a victim that reads 500 frames/s
/// closed the victim ("outbound queue full") and never limited the sender. With the
/// default limits the sender is refused, then closed; the victim stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whisper_flood_closes_the_flooder_not_its_slow_victim() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let (_victim_tx, victim, victim_id) = open_pipe(small_window(&server).await).await;
    let reader = tokio::spawn(read_slowly(victim, 500));

    let (tx, mut flooder, flooder_id) = open_pipe(tests::probe::channel(&server.url()).await).await;
    let victim_for_calls = victim_id.clone();
    let sender = tokio::spawn(async move {
        flood(&tx, |n| {
            Call::Broadcast(BroadcastRequest {
                group: String::new(),
                mode: Mode::Single as i32,
                connections: vec![victim_for_calls.clone()],
                text: n.to_string(),
                pad: PAD,
            })
        })
        .await;
        tx
    });
    let refusals = flooder_is_closed(&mut flooder, 19).await;
    let reason = server.state.wait_disconnect(&flooder_id, WAIT).await;
    assert!(
        matches!(&reason, Some(DisconnectReason::Server { code: Code::ResourceExhausted, message }) if message.contains("refused")),
        "{reason:?}"
    );
    drop(sender.await.unwrap());

    // A barrier: the push sent after the flood reaches the victim behind everything else.
    let victim_id_parsed = victim_id.parse().unwrap();
    server
        .handle
        .connection(victim_id_parsed)
        .on_note(Note {
            text: "end".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (texts, seqs) = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    assert_in_order(&texts, &seqs);
    let m = server.handle.metrics();
    assert!(
        (400..FLOOD / 2).contains(&texts.len()),
        "the burst (400) and the rate (200/s) went through: {}",
        texts.len()
    );
    assert_eq!((m.flood_disconnects, m.slow_consumer_disconnects), (1, 0));
    assert!(m.inbound_rate_limited > 100, "{m:?}");
    assert!(refusals <= 101, "{refusals}");
    assert!(
        server
            .state
            .disconnects()
            .iter()
            .all(|(c, _)| *c != victim_id)
    );
    assert_eq!(server.handle.connection_count(), 1);
}

/// The same with says in a room: three slow members all stay connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_say_flood_in_a_room_keeps_every_slow_member() {
    let server = ProbeServer::start(HubConfig::default()).await;
    let mut readers = Vec::new();
    // The members' request sides stay open until the end.
    let mut senders = Vec::new();
    for _ in 0..3 {
        let (tx, mut stream, _) = open_pipe(small_window(&server).await).await;
        tx.send(frame(1, Call::Join(group("room")))).await.unwrap();
        let joined = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((joined.id, joined.error), (1, None));
        readers.push(tokio::spawn(read_slowly(stream, 500)));
        senders.push(tx);
    }
    let (tx, mut flooder, _) = open_pipe(tests::probe::channel(&server.url()).await).await;
    tx.send(frame(1, Call::Join(group("room")))).await.unwrap();
    let joined = tokio::time::timeout(WAIT, flooder.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((joined.id, joined.error), (1, None));
    let sender = tokio::spawn(async move {
        flood(&tx, |n| {
            Call::Broadcast(BroadcastRequest {
                group: "room".into(),
                mode: Mode::Others as i32,
                connections: Vec::new(),
                text: n.to_string(),
                pad: PAD,
            })
        })
        .await;
        tx
    });
    flooder_is_closed(&mut flooder, 19).await;
    drop(sender.await.unwrap());
    server
        .handle
        .group("room")
        .unwrap()
        .on_note(Note {
            text: "end".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for r in readers {
        let (texts, seqs) = tokio::time::timeout(WAIT, r).await.unwrap().unwrap();
        // The flooder's `left:` note comes from on_disconnect, after the flood.
        let numbered: Vec<String> = texts
            .iter()
            .filter(|t| t.parse::<usize>().is_ok())
            .cloned()
            .collect();
        // The burst is 400 frames and the flooder's join took one of them; what the
        // rate (200/s) adds depends on how long the flood took, possibly nothing.
        assert!(
            (399..FLOOD / 2).contains(&numbered.len()),
            "the burst (400, less the join) and the rate went through: {}",
            numbered.len()
        );
        assert_in_order(&numbered, &seqs[..numbered.len()]);
    }
    let m = server.handle.metrics();
    assert_eq!((m.flood_disconnects, m.slow_consumer_disconnects), (1, 0));
    assert_eq!(server.handle.member_count("room").await.unwrap(), 3);
}

/// A raw member of `g` on a small window, hello and join read.
async fn member(server: &ProbeServer) -> (RawConn<ProbeResponse>, String) {
    let mut raw = RawConn::<ProbeResponse>::open(small_window(server).await, PATH, &[])
        .await
        .unwrap();
    let hello = Frame::of(&raw.next().await.unwrap().unwrap());
    let Some(Kind::Hello(info)) = hello.control() else {
        panic!("no hello: {hello:?}")
    };
    let id = info.connection_id.clone();
    raw.send(frame(1, Call::Join(group("g")))).await;
    let joined = next_event(&mut raw).await;
    assert_eq!((joined.id, joined.error), (1, None));
    (raw, id)
}

/// Pushes 4 KiB notes to `g` until the server counts the member behind; returns how
/// many were sent. Each push is followed by a `count` from `probe` (a round trip), so
/// the pushes do not outrun the server.
async fn push_until_behind(server: &ProbeServer, start: usize) -> usize {
    let mut n = start;
    while server.handle.metrics().slow_consumer_behind == 0 {
        server
            .handle
            .group("g")
            .unwrap()
            .on_note(Note {
                text: n.to_string(),
                from: String::new(),
                pad: vec![1; 4096],
            })
            .await
            .unwrap();
        n += 1;
        assert!(n < start + 5000, "never behind");
        tokio::task::yield_now().await;
    }
    n
}

const GRACE: Duration = Duration::from_secs(2);

fn graced() -> HubConfig {
    HubConfig::default()
        .outbound_queue(16)
        .slow_consumer_grace(GRACE)
}

/// A member that stops reading for less than the grace, while the queue is over its
/// budget, catches up with every push, in order: briefly behind is absorbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_briefly_behind_catches_up_and_misses_nothing() {
    let server = ProbeServer::start(graced()).await;
    let (mut raw, id) = member(&server).await;
    let behind_at = push_until_behind(&server, 0).await;
    // A few more, still within twice the budget.
    let sent = behind_at + 4;
    for n in behind_at..sent {
        server
            .handle
            .group("g")
            .unwrap()
            .on_note(Note {
                text: n.to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut texts = Vec::new();
    while texts.len() < sent {
        let r = next_event(&mut raw).await;
        let Some(Event::OnNote(note)) = r.event else {
            panic!("{r:?}")
        };
        assert_eq!(r.seq, texts.len() as u64 + 1);
        texts.push(note.text);
    }
    assert_eq!(texts, (0..sent).map(|n| n.to_string()).collect::<Vec<_>>());
    // Past the grace, it is still connected: a call still gets its answer.
    tokio::time::sleep(GRACE + Duration::from_millis(500)).await;
    raw.send(frame(2, Call::Count(group("g")))).await;
    let r = next_event(&mut raw).await;
    assert!(
        matches!(r.event, Some(Event::Count(ref c)) if c.count == 1),
        "{r:?}"
    );
    let m = server.handle.metrics();
    assert_eq!(
        (m.slow_consumer_behind, m.slow_consumer_disconnects),
        (1, 0)
    );
    assert!(server.state.disconnects().iter().all(|(c, _)| *c != id));
}

/// A member that stopped reading stays over its budget while pushes trickle in, far
/// below the hard limit, and is closed once the grace is over; what was queued for it
/// is freed without being read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stopped_reading_is_closed_after_the_grace() {
    let server = ProbeServer::start(graced().outbound_queue(64)).await;
    let (mut raw, id) = member(&server).await;
    let mut n = push_until_behind(&server, 0).await;
    let started = tokio::time::Instant::now();
    // One small push every 100 ms: 20 within the grace, the hard limit is 64 more.
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = server
                .handle
                .group("g")
                .unwrap()
                .on_note(Note {
                    text: n.to_string(),
                    ..Default::default()
                })
                .await;
            n += 1;
        }
    };
    let reason = tokio::select! {
        r = server.state.wait_disconnect(&id, WAIT) => r,
        _ = trickle => unreachable!(),
    };
    let waited = started.elapsed();
    assert!(
        matches!(&reason, Some(DisconnectReason::Server { code: Code::ResourceExhausted, message }) if message.contains("for 2s")),
        "{reason:?}"
    );
    assert!(waited >= GRACE, "closed after {waited:?}");
    assert_eq!(server.handle.metrics().slow_consumer_disconnects, 1);
    assert!(
        server.hubs.outbound().used() < 64 * 1024,
        "{} bytes still queued",
        server.hubs.outbound().used()
    );
    let (_, status) = drain(&mut raw).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}
