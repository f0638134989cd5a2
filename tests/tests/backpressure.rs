//! A client that stops reading while the server pushes: it is disconnected (or, with
//! `SlowConsumerPolicy::DropNewest`, misses pushes and sees the gap), and the other
//! members of the group keep receiving everything, in order.
//!
//! The pushes go out in lockstep with the fast client (each push waits until the
//! fast client has it), so the tests do not depend on timing: only the slow client
//! falls behind, by as much as its HTTP/2 window and outbound queue hold.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hub_client::ConnectOptions;
use hub_core::proto::server_control::Kind;
use hub_server::{DisconnectReason, HubConfig, SlowConsumerPolicy};
use prost::Message;
use tests::probe::proto::probe_request::Call;
use tests::probe::proto::probe_response::Event;
use tests::probe::proto::*;
use tests::probe::{ProbeRecorder, ProbeServer, group, probe_client_with};
use tests::raw::{Frame, RawConn, drain, next_event};
use tonic::Code;

const PATH: &str = "/test.v1.ProbeHub/Connect";
const WAIT: Duration = Duration::from_secs(10);
const PAD: usize = 4096;
/// Far more than the slow client's HTTP/2 window and queue can hold.
const MAX_PUSHES: usize = 3000;

/// A raw client with a small HTTP/2 window that joins `g` and then reads nothing.
async fn slow_member(server: &ProbeServer) -> (RawConn<ProbeResponse>, String) {
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .expect("url")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut raw = RawConn::<ProbeResponse>::open(channel, PATH, &[])
        .await
        .expect("open");
    let hello = Frame::of(&raw.next().await.unwrap().unwrap());
    let Some(Kind::Hello(info)) = hello.control() else {
        panic!("no hello: {hello:?}")
    };
    let id = info.connection_id.clone();
    raw.send(
        ProbeRequest {
            id: 1,
            control: None,
            call: Some(Call::Join(group("g"))),
        }
        .encode_to_vec(),
    )
    .await;
    let joined = next_event(&mut raw).await;
    assert_eq!((joined.id, joined.error), (1, None));
    (raw, id)
}

/// A typed member of `g` that reads everything.
async fn fast_member(
    server: &ProbeServer,
) -> (
    tests::probe::proto::probe_hub_client::ProbeHubClient,
    std::sync::Arc<ProbeRecorder>,
) {
    let options = ConnectOptions::default().dead_after(Some(Duration::from_secs(60)));
    let (c, rec) = probe_client_with(&server.url(), options).await.unwrap();
    c.join(group("g")).await.unwrap();
    (c, rec)
}

/// Pushes note `n` to `g` and waits until the fast member has it; returns how many
/// local members did not get it.
async fn push_in_lockstep(server: &ProbeServer, fast: &ProbeRecorder, n: usize) -> u32 {
    let d = server
        .handle
        .group("g")
        .unwrap()
        .on_note(Note {
            text: n.to_string(),
            from: String::new(),
            pad: vec![1; PAD],
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while numbered(fast).len() <= n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "the fast member fell behind at push {n}: {:?}",
            fast.got()
        );
        fast.wait_for(fast.got().len() + 1, left).await;
    }
    d.dropped
}

/// The numbered notes a member got (not the `left:..` notes of on_disconnect).
fn numbered(rec: &ProbeRecorder) -> Vec<String> {
    rec.notes()
        .into_iter()
        .filter(|t| t.parse::<usize>().is_ok())
        .collect()
}

fn assert_everything_in_order(fast: &ProbeRecorder, total: usize) {
    let want: Vec<String> = (0..total).map(|n| n.to_string()).collect();
    assert_eq!(numbered(fast), want);
    let pushes = fast.got().len() as u64;
    assert_eq!(fast.seqs(), (1..=pushes).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_others_get_everything() {
    let config = HubConfig::default().outbound_queue(16);
    let server = ProbeServer::start(config).await;
    let (mut slow, slow_id) = slow_member(&server).await;
    let (fast, fast_rx) = fast_member(&server).await;

    let mut n = 0;
    let mut dropped_at = None;
    while n < MAX_PUSHES {
        let dropped = push_in_lockstep(&server, &fast_rx, n).await;
        n += 1;
        if dropped > 0 && dropped_at.is_none() {
            dropped_at = Some(n);
        }
        if server.handle.metrics().slow_consumer_disconnects > 0 {
            break;
        }
    }
    let dropped_at = dropped_at.expect("the slow client was never found behind");
    assert_eq!(server.handle.metrics().slow_consumer_disconnects, 1);
    // The slow client is gone from the group at once...
    let reason = server.state.wait_disconnect(&slow_id, WAIT).await;
    assert!(
        matches!(
            &reason,
            Some(DisconnectReason::Server {
                code: Code::ResourceExhausted,
                ..
            })
        ),
        "{reason:?}"
    );
    assert_eq!(server.handle.member_count("g").await.unwrap(), 1);
    // ...and the others go on.
    for _ in 0..20 {
        assert_eq!(push_in_lockstep(&server, &fast_rx, n).await, 0);
        n += 1;
    }
    assert_everything_in_order(&fast_rx, n);
    assert_eq!(
        fast_rx
            .notes()
            .iter()
            .filter(|t| **t == format!("left:{slow_id}"))
            .count(),
        1
    );
    fast.whoami().await.unwrap();

    // When the slow client reads at last, it finds what was sent before the close,
    // in order and without gaps, then a goodbye and RESOURCE_EXHAUSTED.
    let (frames, status) = drain(&mut slow).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let (goodbye, pushes) = frames.split_last().expect("frames");
    assert!(
        matches!(Frame::of(goodbye).control(), Some(Kind::Goodbye(g)) if g.code == Code::ResourceExhausted as i32 && g.reason.contains("queue full")),
        "{goodbye:?}"
    );
    assert!(
        pushes.len() < dropped_at,
        "{} pushes delivered, the first drop was push {dropped_at}",
        pushes.len()
    );
    for (i, p) in pushes.iter().enumerate() {
        assert_eq!(p.seq, i as u64 + 1);
        assert!(
            matches!(&p.event, Some(Event::OnNote(note)) if note.text == i.to_string()),
            "{p:?}"
        );
    }
}

#[tokio::test]
async fn drop_newest_shows_a_gap_in_the_sequence_and_keeps_the_connection() {
    // Heartbeats on, so pings meet the full queue too: a ping must not close a
    // connection whose policy is to drop pushes.
    let config = HubConfig::default()
        .outbound_queue(16)
        .slow_consumer(SlowConsumerPolicy::DropNewest)
        .heartbeat(
            Some(Duration::from_millis(20)),
            Some(Duration::from_secs(60)),
        );
    let server = ProbeServer::start(config).await;
    let (mut slow, _) = slow_member(&server).await;
    let (_fast, fast_rx) = fast_member(&server).await;

    let mut n = 0;
    while n < MAX_PUSHES && server.handle.metrics().pushes_dropped == 0 {
        push_in_lockstep(&server, &fast_rx, n).await;
        n += 1;
    }
    assert!(
        server.handle.metrics().pushes_dropped > 0,
        "never dropped a push"
    );
    for _ in 0..10 {
        push_in_lockstep(&server, &fast_rx, n).await;
        n += 1;
    }
    // Let several heartbeats meet the full queue. Not a sleep: a watcher connection,
    // opened now with the same heartbeat interval, counts the pings it gets; by its
    // tenth, the slow connection's heartbeat timer has fired about as often (a skipped
    // ping leaves no other trace).
    let mut watcher =
        RawConn::<ProbeResponse>::open(tests::probe::channel(&server.url()).await, PATH, &[])
            .await
            .unwrap();
    let mut pings = 0;
    while pings < 10 {
        let r = watcher
            .next()
            .await
            .unwrap()
            .expect("the watcher's stream goes on");
        if matches!(Frame::of(&r).control(), Some(Kind::Ping(_))) {
            pings += 1;
        }
    }
    assert_eq!(server.handle.metrics().slow_consumer_disconnects, 0);

    // The slow client reads what it got, then a push sent after it caught up.
    let mut seqs = Vec::new();
    let mut texts = Vec::new();
    let mut last_sent = false;
    loop {
        let r = next_event(&mut slow).await;
        assert!(
            Frame::of(&r).control.is_none(),
            "unexpected control frame {r:?}"
        );
        let Some(Event::OnNote(note)) = &r.event else {
            panic!("unexpected frame {r:?}");
        };
        seqs.push(r.seq);
        texts.push(note.text.clone());
        if note.text == "last" {
            break;
        }
        if !last_sent && seqs.len() >= 16 {
            // The queue is drained by now (the client reads again): this one goes through.
            server
                .handle
                .group("g")
                .unwrap()
                .on_note(Note {
                    text: "last".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            last_sent = true;
        }
    }
    n += 1; // "last"
    // Numbers only go up, and the last one counts every push, delivered or not.
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(*seqs.last().unwrap(), n as u64, "{seqs:?}");
    assert!(seqs.len() < n, "no gap: {seqs:?}");
    // The seq of each delivered push is its position in what was sent.
    for (seq, text) in seqs.iter().zip(&texts) {
        if text != "last" {
            assert_eq!(*seq, text.parse::<u64>().unwrap() + 1);
        }
    }
    // Still connected.
    slow.send(
        ProbeRequest {
            id: 9,
            control: None,
            call: Some(Call::Count(group("g"))),
        }
        .encode_to_vec(),
    )
    .await;
    let r = next_event(&mut slow).await;
    assert!(
        matches!(r.event, Some(Event::Count(ref c)) if c.count == 2),
        "{r:?}"
    );
    assert_everything_in_order(&fast_rx, n - 1);
}

const BIG: usize = 500_000;

/// Pushes a note of `BIG` bytes to `g` and waits until the fast member has it.
async fn push_big_in_lockstep(server: &ProbeServer, fast: &ProbeRecorder, n: usize) {
    server
        .handle
        .group("g")
        .unwrap()
        .on_note(Note {
            text: n.to_string(),
            from: String::new(),
            pad: vec![2; BIG],
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while numbered(fast).len() <= n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "the fast member fell behind at push {n}");
        fast.wait_for(fast.got().len() + 1, left).await;
    }
}

/// Outbound queues are bounded in bytes: three members that stopped reading, in a room
/// that gets 500 KB notes, hold at most their byte budget (twice it, within the grace)
/// each, and the notes they share count once; when they are closed their queues are
/// freed though they never read them.
#[tokio::test]
async fn stalled_members_hold_no_more_than_their_byte_budget() {
    let config = HubConfig::default().heartbeat(None, None);
    let budget = config.outbound_queue_bytes;
    let server = ProbeServer::start(config).await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(slow_member(&server).await);
    }
    let (_fast, fast_rx) = fast_member(&server).await;
    let mut n = 0;
    while server.handle.metrics().slow_consumer_disconnects < 3 {
        push_big_in_lockstep(&server, &fast_rx, n).await;
        n += 1;
        assert!(n < 200, "the stalled members were never closed");
    }
    // Each stalled queue reached its hard limit (twice the budget) and was closed at once.
    let m = server.handle.metrics();
    assert_eq!(m.slow_consumer_behind, 3, "{m:?}");
    let peak = server.hubs.outbound().peak();
    let bound = hub_core::HARD_LIMIT_FACTOR * budget + BIG + 64 * 1024;
    eprintln!("peak queued bytes with 3 stalled members: {peak} (bound {bound})");
    assert!(
        peak <= bound,
        "{peak} bytes queued at the peak; the bound is {bound}"
    );
    for (_, id) in &stalled {
        let reason = server.state.wait_disconnect(id, WAIT).await;
        assert!(
            matches!(
                &reason,
                Some(DisconnectReason::Server {
                    code: Code::ResourceExhausted,
                    ..
                })
            ),
            "{reason:?}"
        );
    }
    // The fast member got everything, and nothing stays queued for the closed ones.
    push_big_in_lockstep(&server, &fast_rx, n).await;
    assert_everything_in_order(&fast_rx, n + 1);
    assert!(
        server.hubs.outbound().used() <= BIG + 64 * 1024,
        "{} bytes still queued",
        server.hubs.outbound().used()
    );
}

/// The server-wide budget bounds the total when many queues are each within theirs:
/// the connections holding more than their share are closed, the reader is not.
#[tokio::test]
async fn the_server_budget_closes_the_biggest_queues_only() {
    let total = 3 * 1024 * 1024;
    let config = HubConfig::default()
        .heartbeat(None, None)
        .outbound_queue_bytes(64 * 1024 * 1024);
    let hubs = hub_server::Hubs::builder()
        .config(config)
        .max_outbound_bytes(total)
        .build();
    let server = ProbeServer::start_with(hubs).await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(slow_member(&server).await);
    }
    let (_fast, fast_rx) = fast_member(&server).await;
    let mut n = 0;
    while server.handle.metrics().slow_consumer_disconnects < 3 {
        push_big_in_lockstep(&server, &fast_rx, n).await;
        n += 1;
        assert!(n < 200, "the stalled members were never closed");
    }
    let m = server.handle.metrics();
    assert!(m.outbound_total_hits >= 3, "{m:?}");
    let peak = server.hubs.outbound().peak();
    assert!(peak <= total + 2 * BIG + 64 * 1024, "{peak}");
    push_big_in_lockstep(&server, &fast_rx, n).await;
    assert_everything_in_order(&fast_rx, n + 1);
}

/// A raw client on a small window that sends `calls` (ids from 1) as fast as the
/// stream takes them, without reading.
async fn pipeline(
    server: &ProbeServer,
    calls: impl Iterator<Item = Call> + Send + 'static,
) -> (
    tokio::task::JoinHandle<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    tonic::Streaming<ProbeResponse>,
) {
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            http::uri::PathAndQuery::from_static(PATH),
            tests::raw::RawCodec::<ProbeResponse>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let hello = stream.message().await.unwrap().unwrap();
    assert!(matches!(Frame::of(&hello).control(), Some(Kind::Hello(_))));
    let sender = tokio::spawn(async move {
        for (i, call) in calls.enumerate() {
            let frame = ProbeRequest {
                id: i as u64 + 1,
                control: None,
                call: Some(call),
            }
            .encode_to_vec();
            if tx.send(frame.into()).await.is_err() {
                break;
            }
        }
        tx
    });
    (sender, stream)
}

/// Waits until `cond` holds, or fails the test after `WAIT`.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const PIPELINED: usize = 5000;

/// Replies are backpressure: 5,000 pipelined calls of 1 KB replies from a client that
/// reads nothing fill no queue: the server stops reading until the client reads, the
/// client is never closed for its own replies, and every call gets its answer, in order.
#[tokio::test]
async fn pipelined_calls_pause_reading_instead_of_closing_the_caller() {
    let config = HubConfig::default()
        .inbound_calls(None)
        .heartbeat(None, None);
    let server = ProbeServer::start(config).await;
    let calls = (0..PIPELINED).map(|_| Call::BigReply(BigReplyRequest { size: 1000 }));
    let (sender, mut stream) = pipeline(&server, calls).await;
    eventually("the server paused reading", || {
        server.handle.metrics().reads_paused > 0
    })
    .await;
    assert!(
        !sender.is_finished(),
        "flow control did not hold the client back"
    );
    let queued = server.hubs.outbound().used();
    assert!(queued < 256 * 1024, "{queued} bytes queued while paused");
    // Now the client reads: every answer, in order, no error, no close.
    for id in 1..=PIPELINED as u64 {
        let r = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.id, r.error.as_ref().map(|e| e.code)),
            (id, None),
            "{r:?}"
        );
        assert!(matches!(&r.event, Some(Event::BigReply(b)) if b.data.len() == 1000));
    }
    let tx = sender.await.unwrap();
    tx.send(
        ProbeRequest {
            id: 9999,
            control: None,
            call: Some(Call::Count(group("g"))),
        }
        .encode_to_vec()
        .into(),
    )
    .await
    .unwrap();
    let r = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.id, 9999);
    let m = server.handle.metrics();
    assert_eq!(
        (m.slow_consumer_disconnects, m.calls),
        (0, PIPELINED as u64 + 1)
    );
}

/// Behind a call that waits, pipelined calls fill the queue of `max_queued_calls`; the
/// rest get `RESOURCE_EXHAUSTED` at once (their refusals are backpressure too), and
/// every call gets exactly one answer.
#[tokio::test]
async fn pipelined_calls_behind_a_slow_one_are_refused_as_documented() {
    let config = HubConfig::default()
        .inbound_calls(None)
        .heartbeat(None, None);
    let max = config.max_queued_calls;
    let server = ProbeServer::start(config).await;
    let calls = std::iter::once(Call::Hold(HoldRequest {
        gate: "g".into(),
        tag: "held".into(),
    }))
    .chain((0..PIPELINED).map(|_| Call::Count(group("g"))));
    let (sender, mut stream) = pipeline(&server, calls).await;
    eventually("the server paused reading", || {
        server.handle.metrics().reads_paused > 0
    })
    .await;
    assert!(!sender.is_finished());
    server.state.open("g");
    let mut answered = std::collections::BTreeMap::new();
    while answered.len() < PIPELINED + 1 {
        let r = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if Frame::of(&r).is_chatter() {
            continue;
        }
        let code = r.error.as_ref().map(|e| {
            assert_eq!(e.scope(), hub_core::proto::ErrorScope::Call, "{e:?}");
            Code::from_i32(e.code)
        });
        assert!(
            answered.insert(r.id, code).is_none(),
            "two answers for {}",
            r.id
        );
    }
    assert_eq!(
        answered.keys().copied().collect::<Vec<_>>(),
        (1..=PIPELINED as u64 + 1).collect::<Vec<_>>()
    );
    let refused = answered
        .values()
        .filter(|c| **c == Some(Code::ResourceExhausted))
        .count();
    let ok = answered.values().filter(|c| c.is_none()).count();
    assert_eq!(refused + ok, PIPELINED + 1, "{answered:?}");
    // The queue held `max` calls behind the held one; at least the next was refused.
    assert!(refused >= 1 && ok > max, "refused {refused}, ok {ok}");
    for id in 2..=max as u64 + 1 {
        assert_eq!(answered[&id], None, "call {id} was queued");
    }
    assert_eq!(answered[&(max as u64 + 2)], Some(Code::ResourceExhausted));
    assert_eq!(server.handle.metrics().slow_consumer_disconnects, 0);
    drop(sender);
}
