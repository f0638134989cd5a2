//! Group history on NATS JetStream (`NatsProviderBuilder::history`): a server that
//! misses a group's pushes (its connection to NATS lost, and back later than the
//! publisher's) delivers them from the hub's history stream, in order and once,
//! before anything later; what the stream no longer holds is told to the members
//! (`ServerControl.pushes_lost`, count unknown: the stream's sequences are shared by
//! the hub's groups). One real nats-server with JetStream, restarted on its store.

use std::sync::Arc;
use std::time::Duration;

use examples::chat::SayRequest;
use hub_nats::NatsProvider;
use hub_server::{GroupProvider, HubConfig};
use test_support::NatsServer;
use tests::history::{Got, WAIT, alice, assert_exactly_once, say_until_ok, until};
use tests::{TestServer, joined};

/// A provider with history of `keep` per group, retrying NATS every `backoff`.
async fn provider(url: &str, backoff: Duration, keep: usize) -> Arc<dyn GroupProvider> {
    Arc::new(
        NatsProvider::builder()
            .options(
                hub_nats::async_nats::ConnectOptions::new()
                    .reconnect_delay_callback(move |_| backoff),
            )
            .operation_timeout(Duration::from_secs(2))
            .history(keep, Duration::from_secs(60))
            .connect(url)
            .await
            .expect("connect to NATS"),
    )
}

/// Servers A (bob, back quickly after NATS restarts) and B (alice, back 2 s later).
async fn servers(nats: &NatsServer, keep: usize) -> (TestServer, TestServer) {
    let a = TestServer::start(
        provider(&nats.url(), Duration::from_millis(20), keep).await,
        HubConfig::default(),
    )
    .await;
    let b = TestServer::start(
        provider(&nats.url(), Duration::from_secs(2), keep).await,
        HubConfig::default(),
    )
    .await;
    (a, b)
}

/// Restarts NATS (on its store), has bob say `back` and then `m0`.. `m{n-1}` before
/// B is back, and waits for B to be.
async fn away(
    nats: &mut NatsServer,
    bob: &examples::chat::chat_hub_client::ChatHubClient,
    b: &TestServer,
    n: usize,
) -> Vec<String> {
    nats.restart();
    say_until_ok(bob, "back").await;
    let mut ok = vec!["back".to_owned()];
    for i in 0..n {
        let text = format!("m{i}");
        bob.say(SayRequest { text: text.clone() })
            .await
            .expect("say");
        ok.push(text);
    }
    assert_eq!(
        b.handle.metrics().backplane_reconnects,
        0,
        "the receiver came back too early"
    );
    test_support::eventually("the receiver reconnected", WAIT, async || {
        b.handle.metrics().backplane_reconnects >= 1
    })
    .await;
    ok
}

#[tokio::test]
async fn pushes_missed_while_away_from_nats_are_read_from_history_once_and_in_order() {
    let mut nats = NatsServer::start();
    let (a, b) = servers(&nats, 10_000).await;
    let mut alice = alice(&b.url()).await;
    let (bob, _) = joined(&a.url(), "lobby", "bob").await;
    say_until_ok(&bob, "first").await;
    assert_eq!(
        until(&mut alice, "first").await,
        vec![Got::Line("first".into())]
    );
    let mut ok = vec!["first".to_owned()];
    ok.extend(away(&mut nats, &bob, &b, 30).await);
    say_until_ok(&bob, "end").await;
    ok.push("end".into());
    let mut got = vec![Got::Line("first".into())];
    got.extend(until(&mut alice, "end").await);
    assert!(
        !got.iter().any(|g| matches!(g, Got::Lost(_))),
        "told of a loss: {got:?}"
    );
    assert_exactly_once(&got, &ok, ok.len());
    assert_eq!(got.len(), ok.len(), "{got:?}");
    let m = b.handle.metrics();
    assert!(
        m.backplane_pushes_recovered >= 31,
        "not read from history: {m:?}"
    );
    assert_eq!((m.backplane_gaps, m.backplane_pushes_missed), (0, 0));
}

#[tokio::test]
async fn pushes_the_stream_no_longer_holds_are_told() {
    let mut nats = NatsServer::start();
    let keep = 3;
    let (a, b) = servers(&nats, keep).await;
    let mut alice = alice(&b.url()).await;
    let (bob, _) = joined(&a.url(), "lobby", "bob").await;
    say_until_ok(&bob, "first").await;
    assert_eq!(
        until(&mut alice, "first").await,
        vec![Got::Line("first".into())]
    );
    let ok = away(&mut nats, &bob, &b, 20).await;
    say_until_ok(&bob, "end").await;
    let got = until(&mut alice, "end").await;
    // Told (how many unknown), then what the stream held when the receiver read it,
    // in order, then the live one. The stream keeps the group's last `keep`: read
    // before `end` was stored, that is the last `keep` of the missed pushes; read
    // after, `end` is one of them and the last `keep - 1` of the missed precede it.
    let held = |n: usize| {
        let mut want = vec![Got::Lost(0)];
        want.extend(ok[ok.len() - n..].iter().map(|l| Got::Line(l.clone())));
        want.push(Got::Line("end".into()));
        want
    };
    assert!(got == held(keep) || got == held(keep - 1), "{got:?}");
    let m = b.handle.metrics();
    assert_eq!((m.backplane_gaps, m.backplane_pushes_missed), (1, 0));
}
