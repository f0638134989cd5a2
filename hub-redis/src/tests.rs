//! The backplane against a real `redis-server` (started on a free port by
//! `test-support`), driven the way the hub runtime drives it.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hub_core::{
    Backplane, BackplaneEvents, BindContext, ConnectionId, GroupError, GroupName, GroupProvider,
    HubMetrics, LocalGroups, Member, MemberInfo, MembersLost, Next, NodeId, Outbox, OutboxReceiver,
    SlowConsumerPolicy, Target,
};
use test_support::RedisServer;
use tokio::time::{Instant, sleep};

use crate::{ConnectError, RedisProvider};

const WAIT: Duration = Duration::from_secs(10);

/// One simulated hub server: its registry, counters and backplane.
struct Node {
    local: Arc<LocalGroups>,
    metrics: Arc<HubMetrics>,
    bp: Arc<dyn Backplane>,
    /// What the backplane reported lost with dead servers.
    lost: Arc<std::sync::Mutex<Vec<MembersLost>>>,
}

impl Node {
    fn bind(provider: &RedisProvider) -> Node {
        let local = Arc::new(LocalGroups::new(NodeId::random()));
        let metrics = Arc::new(HubMetrics::default());
        let lost = Arc::new(std::sync::Mutex::new(Vec::new()));
        let events = {
            let lost = lost.clone();
            BackplaneEvents::new(move |l| lost.lock().expect("lock").push(l))
        };
        let bp = provider
            .bind(BindContext {
                hub: "test.v1.TestHub",
                local: local.clone(),
                metrics: metrics.clone(),
                events,
            })
            .expect("bind");
        Node {
            local,
            metrics,
            bp,
            lost,
        }
    }

    /// Connects a member and joins it to `group`, as the runtime does.
    async fn join(&self, n: u64, user: &str, group: &str) -> (ConnectionId, OutboxReceiver) {
        let id = ConnectionId {
            node: self.local.node(),
            local: n,
        };
        let (outbox, rx) = Outbox::new(4096, SlowConsumerPolicy::Disconnect, self.metrics.clone());
        self.local.register(Member {
            id,
            user: Some(Arc::from(user)),
            outbox,
        });
        self.add(id, user, group).await.expect("joined");
        (id, rx)
    }

    async fn add(&self, id: ConnectionId, user: &str, group: &str) -> Result<(), GroupError> {
        let g = GroupName::new(group).expect("group");
        let outcome = self.local.join(&g, id).expect("registered");
        let info = MemberInfo {
            connection: id,
            user: Some(user.to_owned()),
        };
        match self.bp.joined(&g, &info, outcome.first_local) {
            Some(f) => f.await,
            None => Ok(()),
        }
    }

    async fn leave(&self, id: ConnectionId, user: &str, group: &str) {
        let g = GroupName::new(group).expect("group");
        let outcome = self.local.leave(&g, id);
        let info = MemberInfo {
            connection: id,
            user: Some(user.to_owned()),
        };
        if let Some(f) = self.bp.left(&g, &info, outcome.last_local) {
            f.await.expect("left");
        }
    }

    async fn publish(&self, group: &str, target: Target, frame: &Bytes) -> Result<(), GroupError> {
        let group = GroupName::new(group).expect("group");
        self.bp
            .publish(&hub_core::Destination::Group { group, target }, frame)
            .expect("a publish future")
            .await
    }

    async fn count(&self, group: &str) -> Result<u64, GroupError> {
        let g = GroupName::new(group).expect("group");
        self.bp.member_count(&g).expect("a count future").await
    }

    async fn members(&self, group: &str) -> Result<Vec<MemberInfo>, GroupError> {
        let g = GroupName::new(group).expect("group");
        self.bp.members(&g).expect("a members future").await
    }
}

fn provider(redis: &RedisServer) -> RedisProvider {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    RedisProvider::builder()
        .url(redis.url())
        .presence_ttl(Duration::from_millis(900))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(400))
        .build()
        .expect("provider")
}

/// The next frame queued for a member, as the bytes a client would receive.
async fn next_frame(rx: &mut OutboxReceiver, within: Duration) -> Option<Bytes> {
    match tokio::time::timeout(within, poll_fn(|cx| rx.poll_next(cx))).await {
        Ok(Some(Next::Frame(frame, _))) => Some(frame.bytes),
        _ => None,
    }
}

/// A stand-in for an encoded push frame (the backplane never looks inside).
fn frame(text: &str) -> Bytes {
    Bytes::from(text.as_bytes().to_vec())
}

async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    test_support::eventually(what, WAIT, check).await
}

/// `PUBSUB NUMSUB`; `u64::MAX` (never expected) while Redis cannot answer.
fn numsub(redis: &RedisServer, channel: &str) -> u64 {
    redis.numsub(channel).unwrap_or(u64::MAX)
}

#[tokio::test]
async fn broadcast_reaches_members_on_other_servers_once() {
    let redis = RedisServer::start();
    let p = provider(&redis);
    let (a, b) = (Node::bind(&p), Node::bind(&p));
    let (a1, mut ra1) = a.join(1, "ann", "room").await;
    let (_b1, mut rb1) = b.join(1, "bob", "room").await;
    let (b2, mut rb2) = b.join(2, "bea", "room").await;

    // A's local members are the runtime's job; the backplane carries it to B.
    a.publish("room", Target::Except(Arc::from([b2])), &frame("hello"))
        .await
        .expect("publish");
    assert_eq!(next_frame(&mut rb1, WAIT).await, Some(frame("hello")));
    assert_eq!(
        next_frame(&mut rb2, Duration::from_millis(300)).await,
        None,
        "excepted"
    );
    // A skips its own envelope.
    assert_eq!(next_frame(&mut ra1, Duration::from_millis(300)).await, None);
    assert_eq!(a.metrics.snapshot().backplane_received, 0);
    assert_eq!(b.metrics.snapshot().backplane_received, 1);

    b.publish("room", Target::Only(Arc::from([a1])), &frame("just you"))
        .await
        .expect("publish");
    assert_eq!(next_frame(&mut ra1, WAIT).await, Some(frame("just you")));
    assert_eq!(next_frame(&mut rb1, Duration::from_millis(200)).await, None);
}

#[tokio::test]
async fn concurrent_publishes_are_all_answered_and_delivered() {
    let redis = RedisServer::start();
    let p = provider(&redis);
    let (a, b) = (Node::bind(&p), Node::bind(&p));
    let (_, mut rb) = b.join(1, "bob", "room").await;
    a.join(1, "ann", "room").await;

    let n = 3000;
    let sends = (0..n).map(|i| {
        let f = frame(&format!("m{i}"));
        let a = &a;
        async move { a.publish("room", Target::All, &f).await }
    });
    let results = futures_util::future::join_all(sends).await;
    assert!(
        results.iter().all(Result::is_ok),
        "every publish answered Ok"
    );
    let mut got = 0;
    while next_frame(&mut rb, WAIT).await.is_some() {
        got += 1;
        if got == n {
            break;
        }
    }
    assert_eq!(got, n);
    assert_eq!(b.metrics.snapshot().backplane_received, n as u64);
}

#[tokio::test]
async fn one_sender_keeps_its_order() {
    let redis = RedisServer::start();
    let p = provider(&redis);
    let (a, b) = (Node::bind(&p), Node::bind(&p));
    let (_, mut rb) = b.join(1, "bob", "room").await;
    for i in 0..200 {
        a.publish("room", Target::All, &frame(&format!("{i}")))
            .await
            .expect("publish");
    }
    for i in 0..200 {
        assert_eq!(
            next_frame(&mut rb, WAIT).await,
            Some(frame(&format!("{i}")))
        );
    }
}

#[tokio::test]
async fn direct_sends_go_to_the_server_holding_the_connection() {
    let redis = RedisServer::start();
    let p = provider(&redis);
    let (a, b) = (Node::bind(&p), Node::bind(&p));
    let (b1, mut rb1) = b.join(1, "bob", "room").await;
    eventually("both node channels subscribed", || async {
        redis
            .cli(&["PUBSUB", "CHANNELS", "hub:test.v1.TestHub:node:*"])
            .lines()
            .count()
            == 2
    })
    .await;
    let ids = hub_core::Destination::Connections(Arc::from([
        b1,
        ConnectionId {
            node: a.local.node(),
            local: 99,
        },
    ]));
    a.bp.publish(&ids, &frame("direct"))
        .expect("future")
        .await
        .expect("publish");
    assert_eq!(next_frame(&mut rb1, WAIT).await, Some(frame("direct")));
}

#[tokio::test]
async fn subscriptions_follow_local_membership() {
    let redis = RedisServer::start();
    let p = provider(&redis);
    let a = Node::bind(&p);
    let channel = "hub:test.v1.TestHub:g:room";
    assert_eq!(numsub(&redis, channel), 0);
    let (a1, _r1) = a.join(1, "ann", "room").await;
    // `joined` resolved: the subscription is active now, not eventually.
    assert_eq!(numsub(&redis, channel), 1);
    let (a2, _r2) = a.join(2, "amy", "room").await;
    a.leave(a1, "ann", "room").await;
    assert_eq!(numsub(&redis, channel), 1, "one member is left");
    a.leave(a2, "amy", "room").await;
    assert_eq!(numsub(&redis, channel), 0, "no member, no subscription");
}

#[tokio::test]
async fn counts_and_members_cover_every_server() {
    let redis = RedisServer::start();
    let p = provider(&redis);
    let (a, b) = (Node::bind(&p), Node::bind(&p));
    let (a1, _r) = a.join(1, "ann", "room").await;
    let (_a2, _r) = a.join(2, "amy", "room").await;
    let (b1, _r) = b.join(1, "bob", "room").await;
    b.join(2, "bea", "other").await;
    for node in [&a, &b] {
        assert_eq!(node.count("room").await.expect("count"), 3);
        assert_eq!(node.count("other").await.expect("count"), 1);
        assert_eq!(node.count("empty").await.expect("count"), 0);
        let mut users: Vec<String> = node
            .members("room")
            .await
            .expect("members")
            .into_iter()
            .filter_map(|m| m.user)
            .collect();
        users.sort();
        assert_eq!(users, ["amy", "ann", "bob"]);
    }
    let members = a.members("room").await.expect("members");
    assert!(members.contains(&MemberInfo {
        connection: b1,
        user: Some("bob".into())
    }));
    a.leave(a1, "ann", "room").await;
    b.leave(b1, "bob", "room").await;
    assert_eq!(b.count("room").await.expect("count"), 1);
    assert_eq!(a.count("room").await.expect("count"), 1);
}

#[tokio::test]
async fn a_dead_server_stops_counting_within_the_ttl_and_is_cleaned_up() {
    let redis = RedisServer::start();
    let p = provider(&redis); // presence TTL 900 ms
    let a = Node::bind(&p);
    a.join(1, "ann", "room").await;
    {
        let b = Node::bind(&p);
        b.join(1, "bob", "room").await;
        b.join(2, "bea", "room").await;
        assert_eq!(a.count("room").await.expect("count"), 3);
        // Dropped without shutdown: its tasks stop, nothing is cleaned up (a crash).
    }
    let crashed = Instant::now();
    eventually("the dead server's members no longer counted", || async {
        a.count("room").await.ok() == Some(1)
    })
    .await;
    let gone_after = crashed.elapsed();
    assert!(
        gone_after < Duration::from_secs(5),
        "counted for {gone_after:?}, TTL 900 ms"
    );
    assert_eq!(a.members("room").await.expect("members").len(), 1);
    // A live server deletes the dead one's entries.
    eventually("the dead server's entries deleted", || async {
        redis
            .cli(&["HLEN", "hub:test.v1.TestHub:members:{g:room}"])
            .trim()
            == "1"
            && redis.cli(&["ZCARD", "hub:test.v1.TestHub:nodes"]).trim() == "1"
    })
    .await;
}

/// The members of a dead server are reported lost, once, on every server with
/// members of the group (the one that cleaned up, and the others through a notice
/// on the group's channel), and only after they stopped being counted.
#[tokio::test]
async fn a_dead_servers_members_are_reported_lost_on_every_server() {
    let redis = RedisServer::start();
    let p = provider(&redis); // presence TTL 900 ms
    let (a, c) = (Node::bind(&p), Node::bind(&p));
    a.join(1, "ann", "room").await;
    c.join(1, "cid", "room").await;
    c.join(2, "cat", "hall").await;
    let (b_node, b1, b2) = {
        let b = Node::bind(&p);
        let (b1, _) = b.join(1, "bob", "room").await;
        let (b2, _) = b.join(2, "bea", "room").await;
        b.join(3, "ben", "hall").await;
        assert_eq!(a.count("room").await.expect("count"), 4);
        (b.local.node(), b1, b2)
        // Dropped without shutdown: a crash.
    };
    for n in [&a, &c] {
        eventually("the loss reported", || async {
            !n.lost.lock().expect("lock").is_empty()
        })
        .await;
    }
    // Once every server heard, exactly what B had: A of "room", C of both groups.
    eventually("C heard of both groups", || async {
        c.lost.lock().expect("lock").len() == 2
    })
    .await;
    let room_lost = MembersLost {
        group: GroupName::new("room").expect("group"),
        server: b_node,
        members: vec![
            MemberInfo {
                connection: b1,
                user: Some("bob".into()),
            },
            MemberInfo {
                connection: b2,
                user: Some("bea".into()),
            },
        ],
    };
    assert_eq!(*a.lost.lock().expect("lock"), vec![room_lost.clone()]);
    let c_lost = c.lost.lock().expect("lock").clone();
    assert!(c_lost.contains(&room_lost), "{c_lost:?}");
    assert!(
        c_lost.iter().any(|l| l.group.as_str() == "hall"
            && l.members
                .iter()
                .map(|m| m.user.as_deref())
                .eq([Some("ben")])),
        "{c_lost:?}"
    );
    // Reported once it no longer counts.
    assert_eq!(a.count("room").await.expect("count"), 2);
}

#[tokio::test]
async fn shutdown_removes_this_servers_presence() {
    let redis = RedisServer::start();
    let p = provider(&redis);
    let (a, b) = (Node::bind(&p), Node::bind(&p));
    a.join(1, "ann", "room").await;
    b.join(1, "bob", "room").await;
    b.bp.shutdown().expect("shutdown future").await;
    assert_eq!(a.count("room").await.expect("count"), 1);
    assert_eq!(
        redis
            .cli(&["HLEN", "hub:test.v1.TestHub:members:{g:room}"])
            .trim(),
        "1"
    );
    assert_eq!(
        redis.cli(&["ZCARD", "hub:test.v1.TestHub:nodes"]).trim(),
        "1"
    );
    let g = GroupName::new("room").expect("group");
    let err =
        b.bp.publish(&hub_core::Destination::group(g.clone()), &frame("x"))
            .expect("future")
            .await;
    assert!(
        matches!(err, Err(GroupError::Unavailable { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn redis_outage_fails_fast_then_recovers() {
    let mut redis = RedisServer::start();
    // A long publish timeout, so failing fast cannot be mistaken for timing out.
    let p = RedisProvider::builder()
        .url(redis.url())
        .presence_ttl(Duration::from_millis(900))
        .publish_timeout(Duration::from_secs(5))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(400))
        .build()
        .expect("provider");
    let (a, b) = (Node::bind(&p), Node::bind(&p));
    let (_, mut rb) = b.join(1, "bob", "room").await;
    a.join(1, "ann", "room").await;
    a.publish("room", Target::All, &frame("before"))
        .await
        .expect("publish");
    assert_eq!(next_frame(&mut rb, WAIT).await, Some(frame("before")));

    redis.kill();
    eventually("publishes fail", || async {
        a.publish("room", Target::All, &frame("x")).await.is_err()
    })
    .await;
    let started = Instant::now();
    let err = a.publish("room", Target::All, &frame("lost")).await;
    assert!(
        matches!(err, Err(GroupError::Unavailable { .. })),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failed fast: {:?}",
        started.elapsed()
    );
    assert!(a.count("room").await.is_err());
    // Stay down long enough for reconnect attempts to fail (backoff starts at 50 ms).
    sleep(Duration::from_millis(600)).await;

    redis.restart();
    // Resubscribed and re-registered: broadcasts flow and counts are right again.
    let deadline = Instant::now() + WAIT;
    loop {
        if a.publish("room", Target::All, &frame("after"))
            .await
            .is_ok()
            && next_frame(&mut rb, Duration::from_millis(300)).await == Some(frame("after"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "broadcasts did not flow again");
        sleep(Duration::from_millis(50)).await;
    }
    eventually("counts are back", || async {
        a.count("room").await.ok() == Some(2)
    })
    .await;
    assert!(a.metrics.snapshot().backplane_reconnects >= 1);
    assert!(b.metrics.snapshot().backplane_reconnects >= 1);
    let m = a.metrics.snapshot();
    assert!(
        m.backplane_errors >= 1,
        "failed reconnect attempts are counted: {m:?}"
    );
}

#[tokio::test]
async fn joins_wait_for_the_first_connection() {
    let redis = RedisServer::start();
    let p = provider(&redis);
    // Bind and join at once: the join waits for the connection instead of failing.
    let a = Node::bind(&p);
    let (_, _r) = a.join(1, "ann", "room").await;
    assert_eq!(numsub(&redis, "hub:test.v1.TestHub:g:room"), 1);
}

#[tokio::test]
async fn connect_checks_that_redis_answers() {
    let port = test_support::free_port();
    let err = RedisProvider::connect(&format!("redis://127.0.0.1:{port}")).await;
    assert!(
        matches!(err, Err(ConnectError::Unreachable { .. })),
        "{err:?}"
    );
    let redis = RedisServer::start();
    let p = RedisProvider::connect(&redis.url()).await.expect("connect");
    assert_eq!(p.prefix(), "hub");
}

#[test]
fn options_are_validated() {
    let invalid =
        |b: crate::RedisProviderBuilder| matches!(b.build(), Err(ConnectError::InvalidOption(_)));
    let url = || RedisProvider::builder().url("redis://127.0.0.1:1");
    assert!(matches!(
        RedisProvider::builder().build(),
        Err(ConnectError::NoAddress)
    ));
    assert!(matches!(
        RedisProvider::builder().url("nope://x").build(),
        Err(ConnectError::InvalidAddress { .. })
    ));
    assert!(invalid(url().sharded(true)));
    assert!(invalid(url().prefix("")));
    assert!(invalid(url().prefix("a{b}")));
    assert!(invalid(url().prefix("a b")));
    assert!(invalid(url().publish_timeout(Duration::ZERO)));
    assert!(invalid(url().presence_ttl(Duration::from_millis(10))));
    assert!(invalid(url().reconnect_backoff(
        Duration::from_secs(2),
        Duration::from_secs(1)
    )));
    assert!(invalid(url().max_batch(0)));
    let p = url().prefix("game1").build().expect("valid");
    assert_eq!(p.prefix(), "game1");
    assert!(!p.is_sharded());
    let c = RedisProvider::builder()
        .cluster(["redis://127.0.0.1:1"])
        .sharded(true)
        .build()
        .expect("valid");
    assert!(c.is_sharded());
    let client = redis::Client::open("redis://127.0.0.1:1/2").expect("client");
    assert!(RedisProvider::builder().client(client).build().is_ok());
}

#[test]
fn binding_needs_a_runtime() {
    let p = RedisProvider::builder()
        .url("redis://127.0.0.1:1")
        .build()
        .expect("valid");
    let err = p.bind(BindContext {
        hub: "test.v1.TestHub",
        local: Arc::new(LocalGroups::new(NodeId(1))),
        metrics: Arc::new(HubMetrics::default()),
        events: Default::default(),
    });
    assert!(matches!(err, Err(GroupError::Unavailable { .. })));
}

async fn cluster_round_trip(sharded: bool) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let cluster = test_support::RedisCluster::start();
    let p = RedisProvider::builder()
        .cluster(cluster.urls())
        .sharded(sharded)
        .presence_ttl(Duration::from_millis(900))
        .build()
        .expect("provider");
    let (a, b) = (Node::bind(&p), Node::bind(&p));
    // Groups whose channels hash to different shards.
    let groups = ["room", "lobby", "arena", "$user/zed"];
    let mut receivers = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let id = ConnectionId {
            node: b.local.node(),
            local: i as u64 + 1,
        };
        let (outbox, rx) = Outbox::new(64, SlowConsumerPolicy::Disconnect, b.metrics.clone());
        b.local.register(Member {
            id,
            user: Some(Arc::from("bob")),
            outbox,
        });
        let name = if g.starts_with('$') {
            GroupName::reserved("user", "zed").expect("name")
        } else {
            GroupName::new(g).expect("name")
        };
        let outcome = b.local.join(&name, id).expect("registered");
        let info = MemberInfo {
            connection: id,
            user: Some("bob".into()),
        };
        b.bp.joined(&name, &info, outcome.first_local)
            .expect("future")
            .await
            .expect("joined");
        receivers.push((name, rx));
    }
    a.join(100, "ann", "room").await;
    // Many publishes to several groups at once: pipelines must be split by slot.
    let sends = (0..200).map(|i| {
        let (g, _) = &receivers[i % groups.len()];
        let g = g.clone();
        let a = &a;
        async move {
            a.bp.publish(
                &hub_core::Destination::group(g.clone()),
                &frame(&format!("{i}")),
            )
            .expect("future")
            .await
        }
    });
    let results = futures_util::future::join_all(sends).await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    for (g, rx) in receivers.iter_mut() {
        for i in 0..50 {
            assert!(
                next_frame(rx, WAIT).await.is_some(),
                "{g} #{i}: {:?}",
                b.metrics.snapshot()
            );
        }
    }
    for (g, rx) in receivers.iter_mut() {
        assert_eq!(
            next_frame(rx, Duration::from_millis(200)).await,
            None,
            "{g}: no duplicates"
        );
    }
    assert_eq!(a.count("room").await.expect("count"), 2);
    assert_eq!(b.count("room").await.expect("count"), 2);
    assert_eq!(a.members("lobby").await.expect("members").len(), 1);
}

#[tokio::test]
async fn sharded_pubsub_on_a_cluster() {
    cluster_round_trip(true).await;
}

#[tokio::test]
async fn classic_pubsub_on_a_cluster() {
    cluster_round_trip(false).await;
}

#[tokio::test]
async fn leaves_during_an_outage_are_caught_up_after_it() {
    let mut redis = RedisServer::start();
    let p = provider(&redis);
    let (a, b) = (Node::bind(&p), Node::bind(&p));
    let (a1, _r1) = a.join(1, "ann", "room").await;
    let (_a2, _r2) = a.join(2, "amy", "hall").await;
    b.join(1, "bob", "room").await;
    redis.kill();
    eventually("A notices the outage", || async {
        a.count("room").await.is_err()
    })
    .await;
    // Ann leaves while Redis is down: the runtime leaves locally, Redis is not told.
    let g = GroupName::new("room").expect("group");
    let outcome = a.local.leave(&g, a1);
    assert!(outcome.last_local);
    let info = MemberInfo {
        connection: a1,
        user: Some("ann".into()),
    };
    assert!(a.bp.left(&g, &info, true).expect("future").await.is_err());
    redis.restart();
    eventually("A's subscriptions match its members", || async {
        numsub(&redis, "hub:test.v1.TestHub:g:room") == 1
            && numsub(&redis, "hub:test.v1.TestHub:g:hall") == 1
    })
    .await;
    eventually("counts match after re-registration", || async {
        b.count("room").await.ok() == Some(1) && b.count("hall").await.ok() == Some(1)
    })
    .await;
    let users: Vec<_> = b
        .members("room")
        .await
        .expect("members")
        .into_iter()
        .filter_map(|m| m.user)
        .collect();
    assert_eq!(users, ["bob"]);
}

/// A Redis that stops answering (not gone: `CLIENT PAUSE`) makes publishes time out,
/// and a timed-out publish marks the link down, so the next ones fail fast as in an
/// outage. With confirmed publishes the caller gets the timeout; with publishes
/// resolved once queued (the default) the caller got `Ok` and the push is counted in
/// `backplane_lost_after_ok`. Never silent either way; publishes flow again once
/// Redis answers.
#[tokio::test]
async fn a_stalled_redis_is_reported_in_both_publish_modes() {
    for confirm in [true, false] {
        let redis = RedisServer::start();
        let p = RedisProvider::builder()
            .url(redis.url())
            .publish_timeout(Duration::from_millis(300))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
            .confirm_publishes(confirm)
            .build()
            .expect("provider");
        let (a, b) = (Node::bind(&p), Node::bind(&p));
        let (_a1, _ra1) = a.join(1, "ann", "room").await;
        let (_b1, mut rb1) = b.join(1, "bob", "room").await;
        a.publish("room", Target::All, &frame("before"))
            .await
            .expect("publish");
        assert_eq!(next_frame(&mut rb1, WAIT).await, Some(frame("before")));

        assert!(
            redis
                .cli(&["CLIENT", "PAUSE", "1500", "ALL"])
                .contains("OK")
        );
        let stalled = a.publish("room", Target::All, &frame("stalled")).await;
        if confirm {
            assert!(
                matches!(stalled, Err(GroupError::Timeout { op: "publish", .. })),
                "{stalled:?}"
            );
        } else {
            assert!(stalled.is_ok(), "resolved once queued: {stalled:?}");
            eventually("the unconfirmed push is counted", || async {
                a.metrics.snapshot().backplane_lost_after_ok == 1
            })
            .await;
        }
        // The link is down now: the next publish fails at once.
        let started = Instant::now();
        let next = a.publish("room", Target::All, &frame("during")).await;
        assert!(
            matches!(next, Err(GroupError::Unavailable { .. })),
            "confirm={confirm}: {next:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        // Once Redis answers again (and the link is back), publishes flow.
        eventually("publishes work again", || async {
            a.publish("room", Target::All, &frame("after"))
                .await
                .is_ok()
        })
        .await;
        let mut got = Vec::new();
        while let Some(f) = next_frame(&mut rb1, Duration::from_secs(3)).await {
            got.push(f.clone());
            if f == frame("after") {
                break;
            }
        }
        assert_eq!(got.last(), Some(&frame("after")), "confirm={confirm}");
    }
}

/// The configured payload bound is the backplane's frame limit (less the envelope),
/// and a larger message fails with `TooLarge` (not retryable), before anything is sent.
#[tokio::test]
async fn messages_over_the_payload_bound_are_too_large() {
    let redis = RedisServer::start();
    let p = RedisProvider::builder()
        .url(redis.url())
        .max_payload(64 * 1024)
        .build()
        .expect("provider");
    let (a, b) = (Node::bind(&p), Node::bind(&p));
    let (_a1, _) = a.join(1, "ann", "room").await;
    let (_b1, mut rb1) = b.join(1, "bob", "room").await;
    let max = a.bp.max_frame_bytes().expect("a limit");
    assert!(max < 64 * 1024 && max > 60 * 1024, "{max}");
    let big = Bytes::from(vec![b'x'; 64 * 1024]);
    let err = a.publish("room", Target::All, &big).await.unwrap_err();
    assert!(matches!(err, GroupError::TooLarge { .. }), "{err:?}");
    let fits = Bytes::from(vec![b'y'; max]);
    a.publish("room", Target::All, &fits).await.expect("fits");
    assert_eq!(next_frame(&mut rb1, WAIT).await, Some(fits));
}
