//! The chat hub on several servers sharing groups through Redis (`hub-redis`): every
//! server is real (in-process tonic servers, real `redis-server` processes on free
//! ports, a real three-master Redis Cluster, real `chat-server` processes).

use std::sync::Arc;
use std::time::Duration;

use examples::chat::{ChatMessage, SayRequest, WhisperRequest};
use hub_core::ConnectionId;
use hub_redis::RedisProvider;
use hub_server::{GroupProvider, HubConfig};
use test_support::{ChatServer, RedisCluster, RedisServer};
use tests::{CrashableServer, Seen, TestServer, join_notice, joined, said};
use tokio::time::{Instant, sleep};

/// Generous: the machine is shared and slow at times.
const WAIT: Duration = Duration::from_secs(10);
/// How long to wait before concluding that nothing more arrives.
const QUIET: Duration = Duration::from_millis(400);

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

fn conn_id(client: &examples::chat::chat_hub_client::ChatHubClient) -> ConnectionId {
    client.connection_id().parse().expect("connection id")
}

async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    test_support::eventually(what, WAIT, check).await
}

/// Subscribers of a channel, as Redis counts them.
fn numsub(redis: &RedisServer, channel: &str) -> u64 {
    redis.numsub(channel).expect("PUBSUB NUMSUB answer")
}

fn leave_notice(room: &str, user: &str) -> Seen {
    Seen::Leave(examples::chat::UserEvent {
        room: room.into(),
        user: user.into(),
    })
}

fn whisper(from: &str, text: &str) -> impl Fn(&Seen) -> bool {
    let (from, text) = (from.to_owned(), text.to_owned());
    move |s| matches!(s, Seen::Whisper(m) if m.from == from && m.text == text)
}

#[tokio::test]
async fn say_on_one_server_reaches_every_other_server() {
    let redis = RedisServer::start();
    let (a, b, c) = (
        server(&redis).await,
        server(&redis).await,
        server(&redis).await,
    );
    let (alice, alice_rx) = joined(&a.url(), "lobby", "alice").await;
    let (_bob, bob_rx) = joined(&b.url(), "lobby", "bob").await;
    let (_carol, carol_rx) = joined(&c.url(), "lobby", "carol").await;
    // Join notices cross servers too (`except` the joiner).
    assert_eq!(
        alice_rx.wait_for(2, WAIT).await,
        vec![join_notice("lobby", "bob"), join_notice("lobby", "carol")]
    );
    assert_eq!(
        bob_rx.wait_for(1, WAIT).await,
        vec![join_notice("lobby", "carol")]
    );

    alice
        .say(SayRequest {
            text: "hi all".into(),
        })
        .await
        .expect("say");
    assert_eq!(
        bob_rx.wait_for(2, WAIT).await[1],
        said("lobby", "alice", "hi all")
    );
    assert_eq!(
        carol_rx.wait_for(1, WAIT).await,
        vec![said("lobby", "alice", "hi all")]
    );
    // Exactly once each, and never back to the sender.
    assert_eq!(bob_rx.settle(QUIET).await.len(), 2);
    assert_eq!(carol_rx.seen().len(), 1);
    assert_eq!(alice_rx.seen().len(), 2);
    assert!(b.handle.metrics().backplane_received >= 1);
    assert!(a.handle.metrics().backplane_published >= 1);
}

#[tokio::test]
async fn every_target_mode_crosses_servers() {
    let redis = RedisServer::start();
    let (a, b, c) = (
        server(&redis).await,
        server(&redis).await,
        server(&redis).await,
    );
    let (alice, alice_rx) = joined(&a.url(), "lobby", "alice").await;
    let (bob, bob_rx) = joined(&b.url(), "lobby", "bob").await;
    let (carol, carol_rx) = joined(&c.url(), "lobby", "carol").await;
    alice_rx.wait_for(2, WAIT).await;
    bob_rx.wait_for(1, WAIT).await;
    let (a0, b0, c0) = (
        alice_rx.seen().len(),
        bob_rx.seen().len(),
        carol_rx.seen().len(),
    );

    // A user (`$user/carol` group on server C), from server A.
    alice
        .whisper(WhisperRequest {
            user: "carol".into(),
            text: "psst".into(),
        })
        .await
        .expect("whisper");
    let seen = carol_rx.wait_for(c0 + 1, WAIT).await;
    assert!(whisper("alice", "psst")(&seen[c0]), "{seen:?}");

    // `only` one member of the group, from the hub handle of a server she is not on.
    let m = ChatMessage {
        room: "lobby".into(),
        from: "system".into(),
        text: "only carol".into(),
    };
    a.handle
        .group("lobby")
        .expect("group")
        .only([conn_id(&carol)])
        .on_message(m)
        .await
        .expect("push");
    assert_eq!(
        carol_rx.wait_for(c0 + 2, WAIT).await[c0 + 1],
        said("lobby", "system", "only carol")
    );

    // One connection on another server, without a group (its server's node channel).
    let m = ChatMessage {
        room: "lobby".into(),
        from: "system".into(),
        text: "direct".into(),
    };
    a.handle
        .connection(conn_id(&bob))
        .on_message(m)
        .await
        .expect("push");
    assert_eq!(
        bob_rx.wait_for(b0 + 1, WAIT).await[b0],
        said("lobby", "system", "direct")
    );

    // `all`: bob leaves, everyone left in the room hears it, on both other servers.
    bob.leave().await.expect("leave");
    assert_eq!(
        alice_rx.wait_for(a0 + 1, WAIT).await[a0],
        leave_notice("lobby", "bob")
    );
    assert_eq!(
        carol_rx.wait_for(c0 + 3, WAIT).await[c0 + 2],
        leave_notice("lobby", "bob")
    );

    // Nothing went where it was not addressed.
    assert_eq!(alice_rx.settle(QUIET).await.len(), a0 + 1);
    assert_eq!(bob_rx.seen().len(), b0 + 1);
    assert_eq!(carol_rx.seen().len(), c0 + 3);
}

#[tokio::test]
async fn members_and_counts_cover_every_server() {
    let redis = RedisServer::start();
    let (a, b, c) = (
        server(&redis).await,
        server(&redis).await,
        server(&redis).await,
    );
    let (alice, _) = joined(&a.url(), "lobby", "alice").await;
    let (_bob, _) = joined(&b.url(), "lobby", "bob").await;
    let (_bea, _) = joined(&b.url(), "lobby", "bea").await;
    let (_carol, _) = joined(&c.url(), "garden", "carol").await;

    let members = alice.members().await.expect("members");
    assert_eq!(members.members, ["alice", "bea", "bob"]);
    assert_eq!(members.count, 3);
    for s in [&a, &b, &c] {
        assert_eq!(s.handle.member_count("lobby").await.expect("count"), 3);
        assert_eq!(s.handle.member_count("garden").await.expect("count"), 1);
        assert_eq!(s.handle.user_connections("bea").await.expect("count"), 1);
        let infos = s.handle.members("lobby").await.expect("members");
        assert_eq!(infos.len(), 3);
        assert!(
            infos
                .iter()
                .any(|m| m.connection == conn_id(&alice) && m.user.as_deref() == Some("alice"))
        );
    }
}

#[tokio::test]
async fn leave_and_disconnect_clean_up_deliveries_subscriptions_and_counts() {
    let redis = RedisServer::start();
    let (a, b) = (server(&redis).await, server(&redis).await);
    let lobby = "hub:chat.v1.ChatHub:g:lobby";
    let (alice, alice_rx) = joined(&a.url(), "lobby", "alice").await;
    let (bob, bob_rx) = joined(&b.url(), "lobby", "bob").await;
    let (carol, _) = joined(&b.url(), "lobby", "carol").await;
    alice_rx.wait_for(2, WAIT).await;
    assert_eq!(
        numsub(&redis, lobby),
        2,
        "one subscription per server with members"
    );
    assert_eq!(numsub(&redis, "hub:chat.v1.ChatHub:g:$user/carol"), 1);

    // Bob leaves: he hears nothing more; server B stays subscribed (carol is there).
    bob.leave().await.expect("leave");
    let b0 = bob_rx.seen().len();
    alice
        .say(SayRequest {
            text: "after bob".into(),
        })
        .await
        .expect("say");
    assert_eq!(
        bob_rx.settle(QUIET).await.len(),
        b0,
        "no delivery to a member who left"
    );
    assert_eq!(numsub(&redis, lobby), 2);

    // Carol disconnects: server B has no member left and unsubscribes.
    drop(carol);
    eventually("server B unsubscribed", || async {
        numsub(&redis, lobby) == 1
    })
    .await;
    assert_eq!(numsub(&redis, "hub:chat.v1.ChatHub:g:$user/carol"), 0);
    eventually("counts updated", || async {
        a.handle.member_count("lobby").await.ok() == Some(1)
    })
    .await;
    assert_eq!(a.handle.user_connections("carol").await.expect("count"), 0);
    let err = alice
        .whisper(WhisperRequest {
            user: "carol".into(),
            text: "there?".into(),
        })
        .await;
    assert_eq!(
        err.expect_err("carol is gone").code(),
        tonic::Code::NotFound
    );
    assert_eq!(b.handle.metrics().backplane_errors, 0);
}

#[tokio::test]
async fn a_crashed_servers_members_expire() {
    let redis = RedisServer::start();
    let a = server(&redis).await;
    // Server B runs on a runtime of its own, so it can die without any clean-up.
    let url = redis.url();
    let b =
        CrashableServer::start(move || async move { provider(&url) }, HubConfig::default()).await;
    let (alice, _) = joined(&a.url(), "lobby", "alice").await;
    let (_bob, _) = joined(&b.url(), "lobby", "bob").await;
    assert_eq!(alice.members().await.expect("members").count, 2);

    // The crash: every task of server B stops at once, nothing is cleaned up.
    b.crash();
    let crashed = Instant::now();
    eventually("bob no longer counted", || async {
        a.handle.member_count("lobby").await.ok() == Some(1)
    })
    .await;
    // The documented bound is the presence TTL (1 s here) after the last heartbeat;
    // allow a wide margin for a loaded machine.
    assert!(
        crashed.elapsed() < Duration::from_secs(6),
        "bob counted for {:?}",
        crashed.elapsed()
    );
    assert_eq!(alice.members().await.expect("members").members, ["alice"]);
    assert_eq!(a.handle.user_connections("bob").await.expect("count"), 0);
    // A live server deletes the dead one's entries.
    eventually("dead server's keys deleted", || async {
        redis
            .cli(&["HLEN", "hub:chat.v1.ChatHub:members:{g:lobby}"])
            .trim()
            == "1"
            && redis.cli(&["ZCARD", "hub:chat.v1.ChatHub:nodes"]).trim() == "1"
    })
    .await;
}

#[tokio::test]
async fn redis_restart_in_the_middle_of_traffic() {
    let mut redis = RedisServer::start();
    let (a, b) = (server(&redis).await, server(&redis).await);
    let (alice, _) = joined(&a.url(), "lobby", "alice").await;
    let (_bob, bob_rx) = joined(&b.url(), "lobby", "bob").await;

    // Alice talks all the time, before, during and after the outage.
    let talker = tokio::spawn(async move {
        let mut results = Vec::new();
        for i in 0.. {
            let r = alice
                .say(SayRequest {
                    text: format!("m{i}"),
                })
                .await;
            results.push(r.map_err(|e| e.code()));
            if results.len() > 20
                && results.iter().rev().take(20).all(Result::is_ok)
                && results.iter().any(Result::is_err)
            {
                break;
            }
            sleep(Duration::from_millis(20)).await;
        }
        (alice, results)
    });
    bob_rx.wait_for(3, WAIT).await;
    redis.kill();
    eventually("publishes fail while Redis is down", || async {
        a.handle.metrics().backplane_publish_failures > 0
    })
    .await;
    sleep(Duration::from_millis(800)).await;
    redis.restart();

    let (alice, results) = tokio::time::timeout(Duration::from_secs(30), talker)
        .await
        .expect("talker ends")
        .expect("talker");
    let failed: Vec<_> = results.iter().filter_map(|r| r.err()).collect();
    assert!(!failed.is_empty());
    assert!(
        failed.iter().all(|c| *c == tonic::Code::Unavailable),
        "{failed:?}"
    );
    assert!(a.handle.metrics().backplane_publish_failures >= failed.len() as u64);

    // Resubscribed and re-registered without a restart of the hub servers.
    eventually("both servers reconnected", || async {
        a.handle.metrics().backplane_reconnects >= 1 && b.handle.metrics().backplane_reconnects >= 1
    })
    .await;
    let lobby = "hub:chat.v1.ChatHub:g:lobby";
    assert_eq!(numsub(&redis, lobby), 2);
    assert_eq!(a.handle.member_count("lobby").await.expect("count"), 2);
    let before = bob_rx.seen().len();
    alice
        .say(SayRequest {
            text: "back".into(),
        })
        .await
        .expect("say after restart");
    let seen = bob_rx.wait_for(before + 1, WAIT).await;
    assert_eq!(seen.last(), Some(&said("lobby", "alice", "back")));
    // What bob got is in order, with a gap for the outage and no duplicates.
    let numbers: Vec<u64> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Message(m) => m.text.strip_prefix('m').and_then(|n| n.parse().ok()),
            _ => None,
        })
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    // The servers stayed up throughout: new clients connect and join.
    let (_dan, _) = joined(&b.url(), "lobby", "dan").await;
    assert_eq!(a.handle.member_count("lobby").await.expect("count"), 3);
}

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
    let other = TestServer::start(app("app2"), HubConfig::default()).await;
    let (alice, _) = joined(&a1.url(), "lobby", "alice").await;
    let (_bob, bob_rx) = joined(&a2.url(), "lobby", "bob").await;
    let (_eve, eve_rx) = joined(&other.url(), "lobby", "eve").await;
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
    assert!(eve_rx.settle(QUIET).await.is_empty());
    assert_eq!(a1.handle.member_count("lobby").await.expect("count"), 2);
    assert_eq!(other.handle.member_count("lobby").await.expect("count"), 1);
    assert_eq!(numsub(&redis, "app1:chat.v1.ChatHub:g:lobby"), 2);
    assert_eq!(numsub(&redis, "app2:chat.v1.ChatHub:g:lobby"), 1);
}

#[tokio::test]
async fn sharded_pubsub_on_a_redis_cluster() {
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
    let (alice, alice_rx) = joined(&a.url(), "lobby", "alice").await;
    let (bob, bob_rx) = joined(&b.url(), "lobby", "bob").await;
    let (_carol, carol_rx) = joined(&b.url(), "garden", "carol").await;
    assert_eq!(
        alice_rx.wait_for(1, WAIT).await,
        vec![join_notice("lobby", "bob")]
    );

    alice
        .say(SayRequest {
            text: "sharded".into(),
        })
        .await
        .expect("say");
    assert_eq!(
        bob_rx.wait_for(1, WAIT).await,
        vec![said("lobby", "alice", "sharded")]
    );
    bob.whisper(WhisperRequest {
        user: "carol".into(),
        text: "psst".into(),
    })
    .await
    .expect("whisper");
    let seen = carol_rx.wait_for(1, WAIT).await;
    assert!(whisper("bob", "psst")(&seen[0]), "{seen:?}");
    let members = alice.members().await.expect("members");
    assert_eq!(
        (members.count, members.members),
        (2, vec!["alice".to_string(), "bob".to_string()])
    );
    assert_eq!(a.handle.member_count("garden").await.expect("count"), 1);

    // Sharded subscriptions: both servers on the shard owning the lobby's channel.
    let channel = "hub:chat.v1.ChatHub:g:lobby";
    let shard_subs: u64 = cluster
        .nodes()
        .iter()
        .map(|n| {
            let out = n.cli(&["PUBSUB", "SHARDNUMSUB", channel]);
            out.lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(shard_subs, 2);
    assert!(bob_rx.settle(QUIET).await.len() == 1 && alice_rx.seen().len() == 1);
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
    sleep(Duration::from_millis(500)).await;
    let paused = redis.pause();
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

/// After a server crashes, the others' members get `on_leave` for its members once
/// they are no longer counted (the chat hub's `on_members_lost`), exactly once each,
/// and a members call then no longer lists them.
#[tokio::test]
async fn a_crashed_servers_members_get_on_leave_everywhere() {
    let redis = RedisServer::start();
    let (a, c) = (server(&redis).await, server(&redis).await);
    let url = redis.url();
    let b =
        CrashableServer::start(move || async move { provider(&url) }, HubConfig::default()).await;
    let (alice, alice_rx) = joined(&a.url(), "lobby", "alice").await;
    let (carol, carol_rx) = joined(&c.url(), "lobby", "carol").await;
    let (_bob, _) = joined(&b.url(), "lobby", "bob").await;
    let (_ben, _) = joined(&b.url(), "hall", "ben").await;
    alice_rx.wait_for(2, WAIT).await;
    carol_rx.wait_for(1, WAIT).await;
    let (a0, c0) = (alice_rx.seen().len(), carol_rx.seen().len());

    b.crash();
    let crashed = Instant::now();
    let seen = alice_rx.wait_for(a0 + 1, WAIT).await;
    assert_eq!(
        seen.get(a0),
        Some(&leave_notice("lobby", "bob")),
        "{seen:?}"
    );
    let took = crashed.elapsed();
    // Visible before the event: the list no longer has bob.
    assert_eq!(
        alice.members().await.expect("members").members,
        ["alice", "carol"]
    );
    let seen = carol_rx.wait_for(c0 + 1, WAIT).await;
    assert_eq!(
        seen.get(c0),
        Some(&leave_notice("lobby", "bob")),
        "{seen:?}"
    );
    // Exactly once: carol says something, and nothing else came before it.
    carol
        .say(SayRequest {
            text: "barrier".into(),
        })
        .await
        .expect("say");
    let seen = alice_rx.wait_for(a0 + 2, WAIT).await;
    assert_eq!(seen[a0 + 1..], [said("lobby", "carol", "barrier")]);
    assert_eq!(a.handle.metrics().backplane_members_lost, 1);
    assert_eq!(c.handle.metrics().backplane_members_lost, 1);
    println!("Redis: on_leave for a crashed server's member after {took:?} (presence TTL 1 s)");
}

/// A backplane whose leaves take a while (a loaded Redis), to show the order of a
/// disconnect: the leave is done before `on_disconnect` tells anyone.
struct SlowLeaves(Arc<dyn GroupProvider>);

struct SlowLeavesBackplane(Arc<dyn hub_core::Backplane>);

impl GroupProvider for SlowLeaves {
    fn name(&self) -> &'static str {
        "slow-leaves"
    }

    fn bind(
        &self,
        ctx: hub_core::BindContext,
    ) -> Result<Arc<dyn hub_core::Backplane>, hub_core::GroupError> {
        Ok(Arc::new(SlowLeavesBackplane(self.0.bind(ctx)?)))
    }
}

impl hub_core::Backplane for SlowLeavesBackplane {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn joined<'a>(
        &'a self,
        group: &'a hub_core::GroupName,
        member: &'a hub_core::MemberInfo,
        first: bool,
    ) -> Option<hub_core::BoxFuture<'a, Result<(), hub_core::GroupError>>> {
        self.0.joined(group, member, first)
    }
    fn left<'a>(
        &'a self,
        group: &'a hub_core::GroupName,
        member: &'a hub_core::MemberInfo,
        last: bool,
    ) -> Option<hub_core::BoxFuture<'a, Result<(), hub_core::GroupError>>> {
        Some(Box::pin(async move {
            sleep(Duration::from_millis(300)).await;
            match self.0.left(group, member, last) {
                Some(f) => f.await,
                None => Ok(()),
            }
        }))
    }
    fn publish<'a>(
        &'a self,
        dest: &'a hub_core::Destination,
        frame: &'a bytes::Bytes,
    ) -> Option<hub_core::BoxFuture<'a, Result<(), hub_core::GroupError>>> {
        self.0.publish(dest, frame)
    }
    fn member_count<'a>(
        &'a self,
        group: &'a hub_core::GroupName,
    ) -> Option<hub_core::BoxFuture<'a, Result<u64, hub_core::GroupError>>> {
        self.0.member_count(group)
    }
    fn members<'a>(
        &'a self,
        group: &'a hub_core::GroupName,
    ) -> Option<hub_core::BoxFuture<'a, Result<Vec<hub_core::MemberInfo>, hub_core::GroupError>>>
    {
        self.0.members(group)
    }
    fn shutdown(&self) -> Option<hub_core::BoxFuture<'_, ()>> {
        self.0.shutdown()
    }
}

/// A members call made right after `on_leave` arrives never lists the leaver, even
/// when the leave takes a while to reach Redis: the removal comes first.
#[tokio::test]
async fn members_right_after_on_leave_do_not_list_the_leaver() {
    let redis = RedisServer::start();
    let a = server(&redis).await;
    let b = TestServer::start(
        Arc::new(SlowLeaves(provider(&redis.url()))),
        HubConfig::default(),
    )
    .await;
    let (alice, alice_rx) = joined(&a.url(), "lobby", "alice").await;
    let (bob, _) = joined(&b.url(), "lobby", "bob").await;
    alice_rx.wait_for(1, WAIT).await;
    drop(bob);
    let seen = alice_rx.wait_for(2, WAIT).await;
    assert_eq!(seen.get(1), Some(&leave_notice("lobby", "bob")), "{seen:?}");
    assert_eq!(alice.members().await.expect("members").members, ["alice"]);
}
