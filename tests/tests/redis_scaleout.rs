//! The chat hub on several servers sharing groups through Redis (`hub-redis`): what
//! is specific to Redis (channels and keys as Redis shows them, prefixes, sharded
//! subscriptions, a stalled Redis, `chat-server` processes). What every backplane must
//! do is the conformance suite's (`conformance_redis.rs`, `conformance_redis_cluster.rs`).
//! Every server is real: in-process tonic servers, `redis-server` processes on free
//! ports, a three-master Redis Cluster, `chat-server` processes.

use std::sync::Arc;
use std::time::Duration;

use examples::chat::SayRequest;
use hub_redis::RedisProvider;
use hub_server::{GroupProvider, HubConfig};
use test_support::{ChatServer, RedisCluster, RedisServer};
use tests::{CrashableServer, Seen, TestServer, joined, said};
use tokio::time::{Instant, sleep};

/// Generous: the machine is shared and slow at times.
const WAIT: Duration = Duration::from_secs(10);

fn provider(url: &str) -> Arc<dyn GroupProvider> {
    Arc::new(
        RedisProvider::builder()
            .url(url)
            .presence_ttl(Duration::from_secs(1))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
            .build()
            .expect("provider"),
    )
}

async fn server(redis: &RedisServer) -> TestServer {
    TestServer::start(provider(&redis.url()), HubConfig::default()).await
}

async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    test_support::eventually(what, WAIT, check).await
}

/// Subscribers of a channel, as Redis counts them.
fn numsub(redis: &RedisServer, channel: &str) -> u64 {
    redis.numsub(channel).expect("PUBSUB NUMSUB answer")
}

/// A server subscribes to a group's channel while it has members of the group (one
/// subscription per server, however many members), and to a user's channel while
/// that user is connected there; it unsubscribes with the last one, and subscribes
/// again after a Redis restart. (That a server without members receives nothing is
/// the conformance suite's.)
#[tokio::test]
async fn subscriptions_follow_local_members() {
    let mut redis = RedisServer::start();
    let (a, b) = (server(&redis).await, server(&redis).await);
    let lobby = "hub:chat.v1.ChatHub:g:lobby";
    let (_alice, _) = joined(&a.url(), "lobby", "alice").await;
    let (bob, _) = joined(&b.url(), "lobby", "bob").await;
    let (carol, _) = joined(&b.url(), "lobby", "carol").await;
    assert_eq!(
        numsub(&redis, lobby),
        2,
        "one subscription per server with members"
    );
    assert_eq!(numsub(&redis, "hub:chat.v1.ChatHub:g:$user/carol"), 1);

    // Bob leaves: server B stays subscribed (carol is there).
    bob.leave().await.expect("leave");
    assert_eq!(numsub(&redis, lobby), 2);
    // Carol disconnects: server B has no member left and unsubscribes.
    drop(carol);
    eventually("server B unsubscribed", || async {
        numsub(&redis, lobby) == 1
    })
    .await;
    assert_eq!(numsub(&redis, "hub:chat.v1.ChatHub:g:$user/carol"), 0);
    assert_eq!(numsub(&redis, "hub:chat.v1.ChatHub:g:$user/bob"), 1);

    // Redis restarts empty: both servers subscribe again, and register again.
    redis.restart();
    eventually("subscriptions restored", || async {
        redis.numsub(lobby) == Some(1)
            && redis.numsub("hub:chat.v1.ChatHub:g:$user/bob") == Some(1)
            && redis.cli(&["ZCARD", "hub:chat.v1.ChatHub:nodes"]).trim() == "2"
    })
    .await;
    assert_eq!(b.handle.metrics().backplane_errors, 0);
}

/// A live server deletes a crashed one's presence entries (its members of each
/// group, its incarnation) once it expired. (That its members stop being counted is
/// the conformance suite's.)
#[tokio::test]
async fn a_crashed_servers_keys_are_deleted() {
    let redis = RedisServer::start();
    let a = server(&redis).await;
    let url = redis.url();
    let b =
        CrashableServer::start(move || async move { provider(&url) }, HubConfig::default()).await;
    let (_alice, _) = joined(&a.url(), "lobby", "alice").await;
    let (_bob, _) = joined(&b.url(), "lobby", "bob").await;
    assert_eq!(
        redis
            .cli(&["HLEN", "hub:chat.v1.ChatHub:members:{g:lobby}"])
            .trim(),
        "2"
    );
    assert_eq!(
        redis.cli(&["ZCARD", "hub:chat.v1.ChatHub:nodes"]).trim(),
        "2"
    );

    b.crash();
    let crashed = Instant::now();
    eventually("the dead server's keys deleted", || async {
        redis
            .cli(&["HLEN", "hub:chat.v1.ChatHub:members:{g:lobby}"])
            .trim()
            == "1"
            && redis.cli(&["ZCARD", "hub:chat.v1.ChatHub:nodes"]).trim() == "1"
    })
    .await;
    println!(
        "Redis: a crashed server's keys deleted {:?} after the crash (presence TTL 1 s)",
        crashed.elapsed()
    );
}

/// Applications with different prefixes share one Redis without seeing each other's
/// groups, counts or traffic.
#[tokio::test]
async fn separate_prefixes_keep_applications_apart() {
    let redis = RedisServer::start();
    let app = |prefix: &str| -> Arc<dyn GroupProvider> {
        Arc::new(
            RedisProvider::builder()
                .url(redis.url())
                .prefix(prefix)
                .build()
                .expect("provider"),
        )
    };
    let a1 = TestServer::start(app("app1"), HubConfig::default()).await;
    let a2 = TestServer::start(app("app1"), HubConfig::default()).await;
    let other1 = TestServer::start(app("app2"), HubConfig::default()).await;
    let other2 = TestServer::start(app("app2"), HubConfig::default()).await;
    let (alice, _) = joined(&a1.url(), "lobby", "alice").await;
    let (_bob, bob_rx) = joined(&a2.url(), "lobby", "bob").await;
    let (_eve, eve_rx) = joined(&other1.url(), "lobby", "eve").await;
    let (ed, _) = joined(&other2.url(), "lobby", "ed").await;
    let seen_by_eve = eve_rx.wait_for(1, WAIT).await;
    assert_eq!(seen_by_eve, [tests::join_notice("lobby", "ed")]);
    alice
        .say(SayRequest {
            text: "app1 only".into(),
        })
        .await
        .expect("say");
    assert_eq!(
        bob_rx.wait_for(1, WAIT).await,
        vec![said("lobby", "alice", "app1 only")]
    );
    // Redis has sent alice's say to every subscriber of app1's lobby (bob got it).
    // Ed's say goes after it, to app2's: had eve's server been subscribed to app1's
    // channel too, Redis would have sent it alice's say first, on the same connection.
    ed.say(SayRequest {
        text: "app2 only".into(),
    })
    .await
    .expect("say");
    assert_eq!(
        eve_rx.wait_for(2, WAIT).await,
        [
            tests::join_notice("lobby", "ed"),
            said("lobby", "ed", "app2 only")
        ]
    );
    assert_eq!(a1.handle.member_count("lobby").await.expect("count"), 2);
    assert_eq!(other1.handle.member_count("lobby").await.expect("count"), 2);
    assert_eq!(numsub(&redis, "app1:chat.v1.ChatHub:g:lobby"), 2);
    assert_eq!(numsub(&redis, "app2:chat.v1.ChatHub:g:lobby"), 2);
}

/// With sharded pub/sub on a Redis Cluster, a group's subscriptions are sharded
/// ones (`SSUBSCRIBE`), on the shard owning its channel, one per server with members.
/// (Everything else on a cluster is the conformance suite's.)
#[tokio::test]
async fn sharded_subscriptions_live_on_the_shard_owning_the_channel() {
    let mut cluster = RedisCluster::start();
    let provider = || -> Arc<dyn GroupProvider> {
        Arc::new(
            RedisProvider::builder()
                .cluster(cluster.urls())
                .sharded(true)
                .build()
                .expect("provider"),
        )
    };
    let (a, b) = (
        TestServer::start(provider(), HubConfig::default()).await,
        TestServer::start(provider(), HubConfig::default()).await,
    );
    let (_alice, _) = joined(&a.url(), "lobby", "alice").await;
    let (_bob, _) = joined(&b.url(), "lobby", "bob").await;
    let (_bea, _) = joined(&b.url(), "lobby", "bea").await;

    let channel = "hub:chat.v1.ChatHub:g:lobby";
    let per_node: Vec<(u64, u64)> = cluster
        .nodes()
        .iter()
        .map(|n| {
            let count = |args: &[&str]| {
                n.cli(args)
                    .lines()
                    .nth(1)
                    .and_then(|l| l.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            (
                count(&["PUBSUB", "SHARDNUMSUB", channel]),
                count(&["PUBSUB", "NUMSUB", channel]),
            )
        })
        .collect();
    let sharded: Vec<u64> = per_node.iter().map(|(s, _)| *s).collect();
    assert_eq!(sharded.iter().sum::<u64>(), 2, "{per_node:?}");
    assert_eq!(
        sharded.iter().filter(|n| **n > 0).count(),
        1,
        "on one shard: {per_node:?}"
    );
    assert!(
        per_node.iter().all(|(_, plain)| *plain == 0),
        "no plain subscriptions: {per_node:?}"
    );
}

#[tokio::test]
async fn two_chat_server_processes_share_a_room() {
    let redis = RedisServer::start();
    // The same token secret on both: bob logs in on one and connects to the other.
    let secret = ["--token-secret", tests::TEST_TOKEN_SECRET];
    let s1 = ChatServer::start(&redis.url(), &secret);
    let s2 = ChatServer::start(&redis.url(), &secret);
    let (alice, _) = joined(&s1.url(), "lobby", "alice").await;
    let (_bob, bob_rx) = tests::joined_via(&s1.url(), &s2.url(), "lobby", "bob").await;
    alice
        .say(SayRequest {
            text: "across processes".into(),
        })
        .await
        .expect("say");
    assert_eq!(
        bob_rx.wait_for(1, WAIT).await,
        vec![said("lobby", "alice", "across processes")]
    );
    let members = alice.members().await.expect("members");
    assert_eq!(
        (members.count, members.members),
        (2, vec!["alice".to_string(), "bob".to_string()])
    );
}

/// A Redis that stalls (`SIGSTOP`, as under `DEBUG SLEEP`) while a user talks: a
/// publish Redis does not answer within the publish timeout marks the link down, so
/// the says after it fail at once with `UNAVAILABLE` (as in an outage) instead of
/// being answered OK and lost; every say answered OK either reached the other server
/// or is counted in `backplane_lost_after_ok`; traffic resumes once Redis answers.
#[tokio::test]
async fn a_stalled_redis_fails_fast_and_counts_what_it_may_have_lost() {
    let redis = RedisServer::start();
    let provider = || -> Arc<dyn GroupProvider> {
        Arc::new(
            RedisProvider::builder()
                .url(redis.url())
                .presence_ttl(Duration::from_secs(5))
                .publish_timeout(Duration::from_millis(300))
                .connect_timeout(Duration::from_millis(500))
                .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(300))
                .build()
                .expect("provider"),
        )
    };
    let a = TestServer::start(provider(), HubConfig::default()).await;
    let b = TestServer::start(provider(), HubConfig::default()).await;
    let (alice, _) = joined(&a.url(), "lobby", "alice").await;
    let (_bob, bob_rx) = joined(&b.url(), "lobby", "bob").await;

    // Alice says 0, 1, 2... every 10 ms; Redis stalls for 1.5 s in the middle.
    let alice = Arc::new(alice);
    let talker = {
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..250u32 {
                let started = Instant::now();
                let r = alice
                    .say(SayRequest {
                        text: i.to_string(),
                    })
                    .await;
                results.push((i, r.map_err(|e| e.code()), started.elapsed()));
                sleep(Duration::from_millis(10)).await;
            }
            results
        })
    };
    // Traffic flows before the stall.
    eventually("bob hears alice before the stall", || async {
        bob_rx.seen().len() >= 10
    })
    .await;
    let paused = redis.pause();
    // A wait for time to pass: the stall lasts 1.5 s, five publish timeouts.
    sleep(Duration::from_millis(1500)).await;
    paused.resume();
    let results = tokio::time::timeout(WAIT * 3, talker)
        .await
        .expect("the talker finished")
        .expect("talker");
    // Traffic resumes: a last say gets through (the barrier for what was sent before).
    eventually("a say after the stall gets through", || async {
        alice
            .say(SayRequest {
                text: "last".into(),
            })
            .await
            .is_ok()
    })
    .await;
    eventually("the last say arrived", || async {
        bob_rx.seen().contains(&said("lobby", "alice", "last"))
    })
    .await;
    let received: std::collections::HashSet<String> = bob_rx
        .seen()
        .into_iter()
        .filter_map(|s| match s {
            Seen::Message(m) => Some(m.text),
            _ => None,
        })
        .collect();

    let failed: Vec<_> = results.iter().filter(|(_, r, _)| r.is_err()).collect();
    assert!(
        !failed.is_empty(),
        "no say failed while Redis stalled: they were answered OK and queued behind it"
    );
    for (i, r, took) in &failed {
        assert_eq!(*r, Err(tonic::Code::Unavailable), "say {i}");
        assert!(
            *took < Duration::from_millis(250),
            "say {i} took {took:?} to fail: not fast"
        );
    }
    let oked: Vec<u32> = results
        .iter()
        .filter(|(_, r, _)| r.is_ok())
        .map(|(i, ..)| *i)
        .collect();
    let missing = oked
        .iter()
        .filter(|i| !received.contains(&i.to_string()))
        .count() as u64;
    let counted = a.handle.metrics().backplane_lost_after_ok;
    println!(
        "stall of 1.5 s: {} says OK, {} failed fast with UNAVAILABLE, {missing} OK'd says missing at the other server, backplane_lost_after_ok = {counted}",
        oked.len(),
        failed.len()
    );
    assert!(
        missing <= counted,
        "{missing} says answered OK never arrived, but only {counted} were counted lost"
    );
    // The first say after the stall began is the one that found it out.
    assert!(a.handle.metrics().backplane_publish_failures >= failed.len() as u64);
}
