//! Loss detection on NATS, which numbers nothing: each server numbers its pushes to
//! each group (`Envelope.origin_seq`), and a server that sees one origin's numbers
//! skip tells its members of the group (`ServerControl.pushes_lost`) how many.
//!
//! Real `nats-server`s: a three-node cluster, server A on node 0, server B on node 1.
//! Node 1 is killed while A goes on publishing: what A published meanwhile never
//! reaches B.

use std::sync::Arc;
use std::time::Duration;

use examples::chat::chat_response::Event;
use examples::chat::{ChatResponse, SayRequest};
use futures_util::StreamExt;
use hub_core::proto::server_control::Kind;
use hub_core::proto::{Envelope, PushesLost};
use hub_nats::NatsProvider;
use hub_server::HubConfig;
use prost::Message;
use test_support::NatsCluster;
use tests::raw::{Frame, RawConn};
use tests::{TestServer, joined};

const WAIT: Duration = Duration::from_secs(10);

/// A provider on one node only, retrying it every 100 ms when it is gone.
async fn provider(url: &str) -> NatsProvider {
    NatsProvider::builder()
        .options(
            hub_nats::async_nats::ConnectOptions::new()
                .reconnect_delay_callback(|_| Duration::from_millis(100)),
        )
        .operation_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .expect("connect to NATS")
}

/// What alice's raw stream shows: chat lines and loss notices.
#[derive(Debug, PartialEq)]
enum Got {
    Line(String),
    Lost(u64),
}

async fn next(conn: &mut RawConn<ChatResponse>) -> Got {
    let read = async {
        loop {
            let frame = conn.next().await.expect("stream up").expect("stream open");
            if let Some(Kind::PushesLost(PushesLost { group, missed, .. })) =
                Frame::of(&frame).control().cloned()
            {
                assert_eq!(group, "lobby");
                return Got::Lost(missed);
            }
            if let Some(Event::OnMessage(m)) = frame.event {
                return Got::Line(m.text);
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a push or notice in time")
}

#[tokio::test]
async fn pushes_missed_while_a_server_was_cut_off_are_told() {
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    let a = TestServer::start(Arc::new(provider(&urls[0]).await), HubConfig::default()).await;
    let b = TestServer::start(Arc::new(provider(&urls[1]).await), HubConfig::default()).await;
    // alice on B (raw, to see control frames); bob on A says everything.
    let mut alice = tests::resume::joined_raw(&b.url(), "alice", "lobby").await;
    let (bob, _) = joined(&a.url(), "lobby", "bob").await;
    let say = async |text: String| {
        tokio::time::timeout(WAIT, bob.say(SayRequest { text }))
            .await
            .is_ok_and(|r| r.is_ok())
    };
    // A watcher on node 0 sees what A publishes once node 0 has it.
    let watcher = hub_nats::async_nats::connect(&urls[0])
        .await
        .expect("watcher");
    let mut seen = watcher.subscribe(">").await.expect("subscribe");
    watcher.flush().await.expect("flush");

    let mut sent = Vec::new();
    for i in 1..=3 {
        let text = format!("m{i}");
        assert!(say(text.clone()).await, "say {text}");
        assert_eq!(next(&mut alice).await, Got::Line(text.clone()));
        sent.push(text);
    }
    assert_eq!(b.handle.metrics().backplane_gaps, 0);

    // Node 1 goes away with B's connection; A goes on publishing through node 0.
    cluster.nodes()[1].kill();
    for i in 4..=6 {
        let text = format!("m{i}");
        assert!(say(text.clone()).await, "say {text}");
        sent.push(text);
    }
    // Barrier: node 0 had A's last push (6th of the group), so it is gone for B.
    tokio::time::timeout(WAIT, async {
        while let Some(msg) = seen.next().await {
            if let Ok(env) = Envelope::decode(msg.payload)
                && env.group == "lobby"
                && env.origin_seq >= 6
            {
                return;
            }
        }
        panic!("the watcher's subscription ended");
    })
    .await
    .expect("node 0 had m6 in time");

    // Node 1 is back; bob says lines until B, subscribed again, gets one.
    cluster.nodes()[1].restart();
    let mut got = vec!["m1".to_owned(), "m2".to_owned(), "m3".to_owned()];
    let mut notices = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while notices.is_empty() || got.len() == 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no push after the outage: got {got:?}, notices {notices:?}"
        );
        let text = format!("m{}", sent.len() + 1);
        if !say(text.clone()).await {
            continue;
        }
        sent.push(text);
        // Whatever B gets of it: a notice and the line, or nothing (B not back yet).
        match tokio::time::timeout(Duration::from_millis(300), next(&mut alice)).await {
            Ok(Got::Lost(n)) => {
                notices.push(n);
                match next(&mut alice).await {
                    Got::Line(l) => got.push(l),
                    other => panic!("a second notice {other:?}"),
                }
            }
            Ok(Got::Line(l)) => got.push(l),
            Err(_) => {}
        }
    }
    // One more line after the notice, as a barrier: in order, nothing else told.
    let text = format!("m{}", sent.len() + 1);
    assert!(say(text.clone()).await);
    sent.push(text.clone());
    loop {
        match next(&mut alice).await {
            Got::Line(l) if l == text => {
                got.push(l);
                break;
            }
            Got::Line(l) => got.push(l),
            Got::Lost(n) => notices.push(n),
        }
    }

    // Every line alice got came in the order said; the notice counts the ones she
    // did not get, m4 to m6 at least.
    let index = |l: &String| sent.iter().position(|s| s == l).expect("a line said");
    let at: Vec<usize> = got.iter().map(index).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    let missed = (sent.len() - got.len()) as u64;
    assert_eq!(notices, vec![missed], "notices for {got:?} of {sent:?}");
    assert!(missed >= 3, "{missed}");
    let m = b.handle.metrics();
    assert_eq!((m.backplane_gaps, m.backplane_pushes_missed), (1, missed));
}
