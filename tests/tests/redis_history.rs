//! Group history on Redis (`RedisProviderBuilder::history`): a server whose
//! subscription misses a group's pushes (its pub/sub connection killed while the other
//! server goes on publishing) delivers them from the group's stream, in order and
//! once, before anything later; what the stream no longer holds, or an epoch that
//! restarted, is told to the members (`ServerControl.pushes_lost`) with its count.
//! On one Redis and on a Redis Cluster with sharded pub/sub.

use std::sync::Arc;
use std::time::Duration;

use examples::chat::SayRequest;
use hub_redis::{RedisProvider, RedisProviderBuilder};
use hub_server::{GroupProvider, HubConfig};
use test_support::{RedisCluster, RedisServer};
use tests::history::{Got, WAIT, alice, assert_exactly_once, say_until_ok, until};
use tests::{TestServer, joined};
const LOBBY: &str = "hub:chat.v1.ChatHub:g:lobby";

/// Where the servers' Redis is: one server or a cluster's nodes.
struct Redis {
    nodes: Vec<RedisServer>,
    cluster: Option<RedisCluster>,
}

impl Redis {
    fn single() -> Self {
        Redis {
            nodes: vec![RedisServer::start()],
            cluster: None,
        }
    }

    fn cluster() -> Self {
        Redis {
            nodes: Vec::new(),
            cluster: Some(RedisCluster::start()),
        }
    }

    fn nodes(&mut self) -> &mut [RedisServer] {
        match &mut self.cluster {
            Some(c) => c.nodes(),
            None => &mut self.nodes,
        }
    }

    /// A provider with history; `backoff`: its first reconnect delay.
    fn provider(
        &mut self,
        backoff: Duration,
        tune: impl FnOnce(RedisProviderBuilder) -> RedisProviderBuilder,
    ) -> Arc<dyn GroupProvider> {
        let b = match &self.cluster {
            Some(c) => RedisProvider::builder().cluster(c.urls()).sharded(true),
            None => RedisProvider::builder().url(self.nodes[0].url()),
        };
        Arc::new(
            tune(b)
                .confirm_publishes(true)
                .presence_ttl(Duration::from_secs(3))
                .reconnect_backoff(backoff, backoff)
                .build()
                .expect("provider"),
        )
    }

    /// Runs a command on every node.
    fn cli_all(&mut self, args: &[&str]) {
        for n in self.nodes() {
            n.cli(args);
        }
    }

    /// Subscribers of the lobby's channel, over every node (classic or sharded).
    fn lobby_subscribers(&mut self) -> u64 {
        let sharded = self.cluster.is_some();
        self.nodes()
            .iter()
            .map(|n| {
                let cmd = if sharded { "SHARDNUMSUB" } else { "NUMSUB" };
                n.cli(&["PUBSUB", cmd, LOBBY])
                    .lines()
                    .nth(1)
                    .and_then(|l| l.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// The subscriber connections of both servers are killed a few times during a
/// stream of says; the receiving server reconnects more slowly than the sender, so
/// what the sender publishes meanwhile is missed on pub/sub and read from history.
async fn continuous(mut redis: Redis) {
    let a = TestServer::start(
        redis.provider(Duration::from_millis(20), |b| {
            b.history(10_000, Duration::from_secs(60))
        }),
        HubConfig::default(),
    )
    .await;
    let b = TestServer::start(
        redis.provider(Duration::from_millis(400), |b| {
            b.history(10_000, Duration::from_secs(60))
        }),
        HubConfig::default(),
    )
    .await;
    let mut alice = alice(&b.url()).await;
    let (bob, _) = joined(&a.url(), "lobby", "bob").await;
    let mut ok = Vec::new();
    let total = 300;
    for i in 0..total {
        if i % 100 == 50 {
            redis.cli_all(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        }
        let text = format!("m{i}");
        if bob.say(SayRequest { text: text.clone() }).await.is_ok() {
            ok.push(text);
        }
        if i % 100 == 50 {
            // Let the sender come back before the receiver does.
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    say_until_ok(&bob, "end").await;
    ok.push("end".into());
    let got = until(&mut alice, "end").await;
    assert!(
        !got.iter().any(|g| matches!(g, Got::Lost(_))),
        "told of a loss: {got:?}"
    );
    assert_exactly_once(&got, &ok, total + 1);
    let m = b.handle.metrics();
    assert!(m.backplane_reconnects >= 1, "{m:?}");
    assert!(
        m.backplane_pushes_recovered > 0,
        "nothing read from history: {m:?}"
    );
    assert_eq!((m.backplane_gaps, m.backplane_pushes_missed), (0, 0));
}

#[tokio::test]
async fn missed_pushes_are_read_from_history_once_and_in_order() {
    continuous(Redis::single()).await;
}

#[tokio::test]
async fn missed_pushes_are_read_from_history_on_a_cluster() {
    continuous(Redis::cluster()).await;
}

/// The receiver is away for a while: only the last few of the pushes it missed are
/// still in a short history. It is told how many it missed, then gets the rest.
async fn trimmed(mut redis: Redis) {
    // One entry per stream node: `MAXLEN ~` trims exactly.
    redis.cli_all(&["CONFIG", "SET", "stream-node-max-entries", "1"]);
    let keep = 3;
    let a = TestServer::start(
        redis.provider(Duration::from_millis(20), |b| {
            b.history(keep, Duration::from_secs(60))
        }),
        HubConfig::default(),
    )
    .await;
    let b = TestServer::start(
        redis.provider(Duration::from_secs(2), |b| {
            b.history(keep, Duration::from_secs(60))
        }),
        HubConfig::default(),
    )
    .await;
    let mut alice = alice(&b.url()).await;
    let (bob, _) = joined(&a.url(), "lobby", "bob").await;
    say_until_ok(&bob, "first").await;
    assert_eq!(
        until(&mut alice, "first").await,
        vec![Got::Line("first".into())]
    );
    redis.cli_all(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    // The sender is back (its say accepted) and the receiver not yet (one subscriber).
    say_until_ok(&bob, "back").await;
    assert_eq!(
        redis.lobby_subscribers(),
        1,
        "the receiver came back too early"
    );
    let mut ok = vec!["back".to_owned()];
    for i in 0..20 {
        let text = format!("m{i}");
        bob.say(SayRequest { text: text.clone() })
            .await
            .expect("say");
        ok.push(text);
    }
    test_support::eventually("the receiver subscribed again", WAIT, async || {
        redis.lobby_subscribers() == 2
    })
    .await;
    say_until_ok(&bob, "end").await;
    let got = until(&mut alice, "end").await;
    // Told first, with the number really missing; then the rest in order.
    let Some(Got::Lost(missed)) = got.first().cloned() else {
        panic!("no notice first: {got:?}");
    };
    let lines: Vec<String> = got[1..]
        .iter()
        .map(|g| match g {
            Got::Line(l) => l.clone(),
            other => panic!("a second notice: {got:?} ({other:?})"),
        })
        .collect();
    assert_eq!(lines.last().map(String::as_str), Some("end"));
    let recovered = &lines[..lines.len() - 1];
    assert_eq!(missed as usize + recovered.len(), ok.len(), "{got:?}");
    assert_eq!(recovered, &ok[ok.len() - recovered.len()..], "{got:?}");
    assert!(recovered.len() <= keep, "{got:?}");
    let m = b.handle.metrics();
    assert_eq!((m.backplane_gaps, m.backplane_pushes_missed), (1, missed));
}

#[tokio::test]
async fn pushes_trimmed_from_history_are_told_with_their_count() {
    trimmed(Redis::single()).await;
}

#[tokio::test]
async fn pushes_trimmed_from_history_are_told_on_a_cluster() {
    trimmed(Redis::cluster()).await;
}

/// Redis restarts empty: the history is gone with the offsets, the new epoch is told
/// (missed unknown), and the pushes after it flow.
#[tokio::test]
async fn a_restarted_redis_is_told() {
    let mut redis = Redis::single();
    let provider = |r: &mut Redis| {
        r.provider(Duration::from_millis(50), |b| {
            b.history(100, Duration::from_secs(60))
        })
    };
    let a = TestServer::start(provider(&mut redis), HubConfig::default()).await;
    let b = TestServer::start(provider(&mut redis), HubConfig::default()).await;
    let mut alice = alice(&b.url()).await;
    let (bob, _) = joined(&a.url(), "lobby", "bob").await;
    say_until_ok(&bob, "m1").await;
    assert_eq!(until(&mut alice, "m1").await, vec![Got::Line("m1".into())]);
    redis.nodes()[0].restart();
    test_support::eventually("both servers subscribed again", WAIT, async || {
        redis.lobby_subscribers() == 2
    })
    .await;
    say_until_ok(&bob, "m2").await;
    assert_eq!(
        until(&mut alice, "m2").await,
        vec![Got::Lost(0), Got::Line("m2".into())]
    );
    assert_eq!(b.handle.metrics().backplane_gaps, 1);
}
