//! Unit tests: settings and URLs without a server; the backplane against real
//! `nats-server` processes (from `test-support`, on free ports), with hubs bound
//! directly to a `LocalGroups` (no gRPC).

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hub_core::proto as hub_proto;
use hub_core::{
    Backplane, BindContext, ConnectionId, GroupError, GroupName, HubMetrics, LocalGroups, Member,
    MemberInfo, Next, NodeId, Outbox, OutboxReceiver, SlowConsumerPolicy, Target,
};
use prost::Message as _;
use test_support::{NatsOptions, NatsServer};

use super::*;
use crate::backplane::NatsBackplane;
use crate::roll_call::answer_parts;
use crate::state::lock;

const HUB: &str = "test.v1.TestHub";
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- settings, URLs

#[test]
fn urls_credentials_and_redaction() {
    let s = parse_servers("nats://hub:s%40cret@127.0.0.1:1234").unwrap();
    assert_eq!(
        s.auth,
        Some(UrlAuth::UserPassword("hub".into(), "s@cret".into()))
    );
    assert_eq!(s.addrs.len(), 1);
    assert!(
        !s.addrs[0].as_url_str().contains("hub"),
        "credentials taken out of the URL"
    );

    let s = parse_servers("nats://t0ken@a:1, tls://b:2 ,c:3").unwrap();
    assert_eq!(s.auth, Some(UrlAuth::Token("t0ken".into())));
    assert_eq!(s.addrs.len(), 3);
    assert!(s.addrs[1].tls_required());
    assert_eq!(s.addrs[2].port(), 3);

    assert!(matches!(parse_servers(" , "), Err(ConnectError::NoServers)));
    let err = parse_servers("http://user:pw@x:1").unwrap_err();
    assert!(matches!(err, ConnectError::InvalidUrl { .. }));
    assert!(!err.to_string().contains("pw"), "{err}");
    assert_eq!(redact("nats://u:p@h:1"), "nats://***@h:1");
    assert_eq!(redact("nats://h:1"), "nats://h:1");
    assert_eq!(percent_decode("a%2Fb%zz%"), "a/b%zz%");
}

#[tokio::test]
async fn bad_settings_are_refused_before_connecting() {
    let err = NatsProvider::builder()
        .subject_prefix("a.*")
        .connect("nats://127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::InvalidPrefix(_)), "{err}");
    let err = NatsProvider::builder()
        .heartbeat_interval(Duration::ZERO)
        .connect("nats://127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::InvalidOption(_)), "{err}");
    let group: GroupError = err.into();
    assert!(matches!(
        group,
        GroupError::Unavailable {
            backplane: "nats",
            ..
        }
    ));
}

#[test]
fn long_member_lists_are_split() {
    let members: Vec<MemberInfo> = (0..100)
        .map(|i| MemberInfo {
            connection: ConnectionId {
                node: NodeId(1),
                local: i,
            },
            user: Some(format!("user-{i}")),
        })
        .collect();
    let parts = answer_parts("n", members.clone(), 100, 500);
    assert!(parts.len() > 1);
    assert!(
        parts
            .iter()
            .all(|p| p.encoded_len() < 600 && p.count == 100)
    );
    assert!(parts[..parts.len() - 1].iter().all(|p| p.more) && !parts[parts.len() - 1].more);
    let back: Vec<String> = parts
        .iter()
        .flat_map(|p| p.members.iter().map(|m| m.connection.clone()))
        .collect();
    assert_eq!(
        back,
        members
            .iter()
            .map(|m| m.connection.to_string())
            .collect::<Vec<_>>()
    );
    let empty = answer_parts("n", Vec::new(), 7, 500);
    assert_eq!(empty.len(), 1);
    assert_eq!((empty[0].count, empty[0].more), (7, false));
}

// ---------------------------------------------------------------- helpers

/// One hub server: its registry, counters and backplane.
struct Server {
    local: Arc<LocalGroups>,
    metrics: Arc<HubMetrics>,
    bp: Arc<NatsBackplane>,
    provider: NatsProvider,
    /// What the backplane reported lost with dead servers.
    lost: Arc<std::sync::Mutex<Vec<hub_core::MembersLost>>>,
    next: u64,
}

fn fast(builder: NatsProviderBuilder) -> NatsProviderBuilder {
    builder
        .options(
            async_nats::ConnectOptions::new()
                .reconnect_delay_callback(|_| Duration::from_millis(100)),
        )
        .heartbeat_interval(Duration::from_millis(200))
        .roll_call_timeout(Duration::from_secs(3))
}

async fn server_with(url: &str, builder: NatsProviderBuilder) -> Server {
    let provider = builder.connect(url).await.expect("connect");
    let local = Arc::new(LocalGroups::new(NodeId::random()));
    let metrics = Arc::new(HubMetrics::default());
    let lost = Arc::new(std::sync::Mutex::new(Vec::new()));
    let bp = backplane::bind(
        &provider.shared,
        BindContext {
            hub: HUB,
            local: local.clone(),
            metrics: metrics.clone(),
            events: hub_core::BackplaneEvents::new({
                let lost = lost.clone();
                move |l| lost.lock().expect("lock").push(l)
            }),
        },
    )
    .expect("bind");
    Server {
        local,
        metrics,
        bp,
        provider,
        lost,
        next: 0,
    }
}

async fn server(url: &str) -> Server {
    server_with(url, fast(NatsProvider::builder())).await
}

impl Server {
    /// Connects a member (registered, in no group).
    fn connect(&mut self, user: Option<&str>) -> (ConnectionId, OutboxReceiver) {
        self.next += 1;
        let id = ConnectionId {
            node: self.local.node(),
            local: self.next,
        };
        let (outbox, rx) = Outbox::new(64, SlowConsumerPolicy::DropNewest, self.metrics.clone());
        self.local.register(Member {
            id,
            user: user.map(Arc::from),
            outbox,
        });
        (id, rx)
    }

    /// Joins as the runtime does: registry first, then the backplane.
    async fn join(&self, group: &str, id: ConnectionId) -> Result<(), GroupError> {
        let g = GroupName::from_wire(group).unwrap();
        let outcome = self.local.join(&g, id).expect("registered");
        let user = self
            .local
            .member(id)
            .and_then(|m| m.user.map(|u| u.to_string()));
        let info = MemberInfo {
            connection: id,
            user,
        };
        match self.bp.joined(&g, &info, outcome.first_local) {
            Some(fut) => {
                let r = fut.await;
                if r.is_err() {
                    let left = self.local.leave(&g, id);
                    if let Some(fut) = self.bp.left(&g, &info, left.last_local) {
                        fut.await.unwrap();
                    }
                }
                r
            }
            None => Ok(()),
        }
    }

    async fn leave(&self, group: &str, id: ConnectionId) {
        let g = GroupName::from_wire(group).unwrap();
        let outcome = self.local.leave(&g, id);
        let info = MemberInfo {
            connection: id,
            user: None,
        };
        if let Some(fut) = self.bp.left(&g, &info, outcome.last_local) {
            fut.await.unwrap();
        }
    }

    /// Publishes as the runtime does after local delivery; `Ok(false)` when nothing had to be published.
    async fn publish(
        &self,
        group: Option<&str>,
        target: &Target,
        frame: &[u8],
    ) -> Result<bool, GroupError> {
        let dest = match group {
            Some(g) => hub_core::Destination::Group {
                group: GroupName::from_wire(g).unwrap(),
                target: target.clone(),
            },
            None => match target {
                Target::Only(ids) => hub_core::Destination::Connections(ids.clone()),
                _ => panic!("a send without a group names its connections"),
            },
        };
        let frame = Bytes::copy_from_slice(frame);
        match self.bp.publish(&dest, &frame) {
            Some(fut) => fut.await.map(|()| true),
            None => Ok(false),
        }
    }

    async fn count(&self, group: &str) -> Result<u64, GroupError> {
        let g = GroupName::from_wire(group).unwrap();
        self.bp.member_count(&g).expect("nats counts").await
    }

    async fn members(&self, group: &str) -> Result<Vec<MemberInfo>, GroupError> {
        let g = GroupName::from_wire(group).unwrap();
        self.bp.members(&g).expect("nats lists").await
    }

    fn subscribed(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .bp
            .transport()
            .inner
            .subscribed_groups()
            .iter()
            .map(|g| g.to_string())
            .collect();
        v.sort();
        v
    }
}

/// The next frame pushed to a member, if one comes within `within`.
async fn recv(rx: &mut OutboxReceiver, within: Duration) -> Option<Bytes> {
    match tokio::time::timeout(within, poll_fn(|cx| rx.poll_next(cx))).await {
        Ok(Some(Next::Frame(frame, _))) => Some(frame.bytes),
        _ => None,
    }
}

async fn got(rx: &mut OutboxReceiver, frame: &[u8]) {
    assert_eq!(
        recv(rx, WAIT).await.as_deref(),
        Some(frame),
        "expected frame {:?}",
        String::from_utf8_lossy(frame)
    );
}

async fn nothing(rx: &mut OutboxReceiver) {
    let extra = recv(rx, Duration::from_millis(300)).await;
    assert_eq!(extra, None, "no frame expected");
}

/// Waits until `check` holds (polling), or fails with `what`.
async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    test_support::eventually(what, WAIT * 2, check).await
}

/// Waits until every server knows every other (so roll calls stop early).
async fn know_each_other(servers: &[&Server]) {
    eventually("servers know each other", async || {
        servers.iter().all(|s| {
            let (live, warming) =
                lock(&s.bp.transport().inner.peers).expected(tokio::time::Instant::now());
            live.len() == servers.len() - 1 && !warming
        })
    })
    .await;
}

// ---------------------------------------------------------------- delivery

#[tokio::test]
async fn broadcast_reaches_other_servers_once() {
    let nats = NatsServer::start();
    let (mut a, mut b) = (server(&nats.url()).await, server(&nats.url()).await);
    let (a1, mut a1_rx) = a.connect(None);
    let (b1, mut b1_rx) = b.connect(None);
    let (b2, mut b2_rx) = b.connect(None);
    a.join("room", a1).await.unwrap();
    b.join("room", b1).await.unwrap();
    b.join("room", b2).await.unwrap();

    assert!(
        a.publish(Some("room"), &Target::All, b"hello")
            .await
            .unwrap()
    );
    got(&mut b1_rx, b"hello").await;
    got(&mut b2_rx, b"hello").await;
    // The sender's own envelope comes back from NATS and is skipped: the runtime
    // delivered locally already.
    nothing(&mut a1_rx).await;
    nothing(&mut b1_rx).await;
    assert_eq!(a.metrics.snapshot().backplane_received, 0);
    assert_eq!(b.metrics.snapshot().backplane_received, 1);
}

#[tokio::test]
async fn targets_are_applied_by_the_receiving_server() {
    let nats = NatsServer::start();
    let (mut a, mut b) = (server(&nats.url()).await, server(&nats.url()).await);
    let (a1, _a1_rx) = a.connect(None);
    let (b1, mut b1_rx) = b.connect(None);
    let (b2, mut b2_rx) = b.connect(None);
    for (s, id) in [(&a, a1), (&b, b1), (&b, b2)] {
        s.join("room", id).await.unwrap();
    }
    a.publish(Some("room"), &Target::Except(Arc::from([b1])), b"except")
        .await
        .unwrap();
    got(&mut b2_rx, b"except").await;
    a.publish(Some("room"), &Target::Only(Arc::from([b1])), b"only")
        .await
        .unwrap();
    got(&mut b1_rx, b"only").await;
    nothing(&mut b1_rx).await;
    nothing(&mut b2_rx).await;
    // Only local connections: nothing to publish.
    assert!(
        !a.publish(Some("room"), &Target::Only(Arc::from([a1])), b"x")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn sends_by_connection_id_go_to_the_server_holding_it() {
    let nats = NatsServer::start();
    let (mut a, mut b, mut c) = (
        server(&nats.url()).await,
        server(&nats.url()).await,
        server(&nats.url()).await,
    );
    let (a1, _) = a.connect(None);
    let (b1, mut b1_rx) = b.connect(None);
    let (_c1, mut c1_rx) = c.connect(None);
    let (c2, mut c2_rx) = c.connect(None);
    // Servers accept connections once bound; their own subjects are subscribed a
    // moment later: wait for that here, where the test publishes right away.
    know_each_other(&[&a, &b, &c]).await;
    // In no group at all.
    assert!(
        a.publish(None, &Target::Only(Arc::from([b1, c2, a1])), b"direct")
            .await
            .unwrap()
    );
    got(&mut b1_rx, b"direct").await;
    got(&mut c2_rx, b"direct").await;
    nothing(&mut c1_rx).await;
    // Ids of this server only: they are not connected, there is nothing to publish
    // (the runtime then reports NotConnected).
    assert!(
        !a.publish(
            None,
            &Target::Only(Arc::from([ConnectionId {
                node: a.local.node(),
                local: 99
            }])),
            b"x"
        )
        .await
        .unwrap()
    );
}

#[tokio::test]
async fn group_names_with_subject_characters_stay_apart() {
    let nats = NatsServer::start();
    let (a, mut b) = (server(&nats.url()).await, server(&nats.url()).await);
    let names = [
        "a.b", "a.*", "a.>", "*", ">", "a", "a%2Eb", "$user/x", "ü.ñ",
    ];
    let mut rxs = Vec::new();
    for name in names {
        let (id, rx) = b.connect(None);
        b.join(name, id).await.unwrap();
        rxs.push(rx);
    }
    for name in names {
        a.publish(Some(name), &Target::All, name.as_bytes())
            .await
            .unwrap();
    }
    for (name, rx) in names.iter().zip(rxs.iter_mut()) {
        got(rx, name.as_bytes()).await;
        nothing(rx).await;
    }
    assert_eq!(
        a.provider
            .group_subject(HUB, &GroupName::new("a.*").unwrap()),
        "hub.test.v1.TestHub.g.a%2E%2A"
    );
}

#[tokio::test]
async fn subscribed_while_members_are_here() {
    let nats = NatsServer::start();
    let (mut a, b) = (server(&nats.url()).await, server(&nats.url()).await);
    let (a1, _) = a.connect(None);
    let (a2, _) = a.connect(None);
    assert!(a.subscribed().is_empty());
    a.join("room", a1).await.unwrap();
    a.join("room", a2).await.unwrap();
    assert_eq!(a.subscribed(), vec!["room"]);
    a.leave("room", a1).await;
    assert_eq!(a.subscribed(), vec!["room"]);
    a.leave("room", a2).await;
    assert!(a.subscribed().is_empty());

    // Not subscribed: NATS sends it nothing more for that group.
    b.publish(Some("room"), &Target::All, b"x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.metrics.snapshot().backplane_received, 0);

    // A member gone without leaving (disconnect): unregister reports the last one.
    a.join("room", a1).await.unwrap();
    for (g, last) in a.local.unregister(a1) {
        if let Some(fut) = a.bp.left(
            &g,
            &MemberInfo {
                connection: a1,
                user: None,
            },
            last,
        ) {
            fut.await.unwrap();
        }
    }
    assert!(a.subscribed().is_empty());
}

#[tokio::test]
async fn concurrent_joins_and_leaves_end_consistent() {
    let nats = NatsServer::start();
    let (mut a, b) = (server(&nats.url()).await, server(&nats.url()).await);
    let ids: Vec<_> = (0..8).map(|_| a.connect(None)).collect();
    for round in 0..5 {
        let joins = ids.iter().map(|(id, _)| a.join("room", *id));
        for r in futures_util::future::join_all(joins).await {
            r.unwrap();
        }
        assert_eq!(a.subscribed(), vec!["room"], "round {round}");
        let leaves = ids.iter().skip(1).map(|(id, _)| a.leave("room", *id));
        let join_again = a.join("other", ids[0].0);
        let (_, r) = tokio::join!(futures_util::future::join_all(leaves), join_again);
        r.unwrap();
        a.leave("room", ids[0].0).await;
        a.leave("other", ids[0].0).await;
        assert!(a.subscribed().is_empty(), "round {round}");
    }
    // And a member is reachable right after its join returns.
    let (a3, mut a3_rx) = a.connect(None);
    a.join("fresh", a3).await.unwrap();
    b.publish(Some("fresh"), &Target::All, b"first")
        .await
        .unwrap();
    got(&mut a3_rx, b"first").await;
}

// ---------------------------------------------------------------- wire

#[tokio::test]
async fn another_process_can_publish_to_a_group() {
    let nats = NatsServer::start();
    let mut b = server(&nats.url()).await;
    let (b1, mut b1_rx) = b.connect(None);
    b.join("lobby", b1).await.unwrap();
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let env = hub_proto::Envelope {
        version: 1,
        origin: "some-python-worker".into(),
        group: "lobby".into(),
        target: Some(Target::All.to_proto()),
        frame: Bytes::from_static(b"from elsewhere"),
        ..Default::default()
    };
    let subject = b
        .provider
        .group_subject(HUB, &GroupName::new("lobby").unwrap());
    raw.publish(subject, env.encode_to_vec().into())
        .await
        .unwrap();
    got(&mut b1_rx, b"from elsewhere").await;
}

#[tokio::test]
async fn malformed_messages_are_counted_and_dropped() {
    let nats = NatsServer::start();
    let mut b = server(&nats.url()).await;
    let (b1, mut b1_rx) = b.connect(None);
    b.join("lobby", b1).await.unwrap();
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let base = b.provider.hub_prefix(HUB);
    let lobby = format!("{base}.g.lobby");
    let env = |version: u32, group: &str| {
        Bytes::from(
            hub_proto::Envelope {
                version,
                origin: "x".into(),
                group: group.into(),
                target: None,
                frame: Bytes::from_static(b"f"),
                ..Default::default()
            }
            .encode_to_vec(),
        )
    };
    raw.publish(lobby.clone(), Bytes::from_static(b"\xff\xff garbage"))
        .await
        .unwrap();
    raw.publish(lobby.clone(), env(2, "lobby")).await.unwrap();
    raw.publish(lobby.clone(), env(1, "other")).await.unwrap();
    raw.publish(format!("{base}.n.{}", b.local.node()), env(1, ""))
        .await
        .unwrap();
    raw.publish(format!("{base}.hb"), Bytes::from_static(b"\xff"))
        .await
        .unwrap();
    raw.publish(
        format!("{base}.rc"),
        Bytes::from_static(b"no reply subject"),
    )
    .await
    .unwrap();
    raw.flush().await.unwrap();
    eventually("6 malformed messages counted", async || {
        b.metrics.snapshot().backplane_malformed == 6
    })
    .await;
    nothing(&mut b1_rx).await;
    assert_eq!(b.metrics.snapshot().backplane_received, 0);
}

// ---------------------------------------------------------------- members

#[tokio::test]
async fn member_counts_and_lists_cover_every_server() {
    let nats = NatsServer::start();
    let mut servers = [
        server(&nats.url()).await,
        server(&nats.url()).await,
        server(&nats.url()).await,
    ];
    let mut all = Vec::new();
    for (i, user) in [(0, "ann"), (1, "bob"), (1, "bea"), (2, "cy")] {
        let s = &mut servers[i];
        let (id, _rx) = s.connect(Some(user));
        s.join("room", id).await.unwrap();
        all.push(MemberInfo {
            connection: id,
            user: Some(user.into()),
        });
    }
    let (lone, _) = servers[2].connect(None);
    servers[2].join("other", lone).await.unwrap();
    let [a, b, c] = &servers;
    all.sort();
    know_each_other(&[a, b, c]).await;
    for s in [a, b, c] {
        assert_eq!(s.count("room").await.unwrap(), 4);
        assert_eq!(s.members("room").await.unwrap(), all);
        assert_eq!(s.count("other").await.unwrap(), 1);
        assert_eq!(s.count("nobody").await.unwrap(), 0);
    }
    // Every live server answered: the call did not wait for its deadline (3 s).
    let started = tokio::time::Instant::now();
    a.count("room").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "roll call waited for its deadline"
    );
}

#[tokio::test]
async fn a_crashed_server_is_not_counted() {
    let nats = NatsServer::start();
    let (mut a, mut b) = (server(&nats.url()).await, server(&nats.url()).await);
    let (a1, _) = a.connect(None);
    a.join("room", a1).await.unwrap();
    let (b1, _) = b.connect(None);
    let (b2, _) = b.connect(None);
    b.join("room", b1).await.unwrap();
    b.join("room", b2).await.unwrap();
    know_each_other(&[&a, &b]).await;
    assert_eq!(a.count("room").await.unwrap(), 3);

    // B dies without a word: its backplane (tasks, subscriptions) and its NATS
    // connection go, nothing says goodbye.
    let (b1, b2) = (
        MemberInfo {
            connection: b1,
            user: None,
        },
        MemberInfo {
            connection: b2,
            user: None,
        },
    );
    drop(b);
    // Until B is presumed dead, a count cannot be sure: Unavailable, never a count
    // without B's members presented as the truth...
    let err = a.count("room").await.unwrap_err();
    assert!(matches!(err, GroupError::Unavailable { .. }), "{err:?}");
    // ...and once 3 heartbeats (200 ms) are missed, B's members are reported lost
    // and counts no longer wait for it.
    eventually("B presumed dead", async || {
        let (live, _) = lock(&a.bp.transport().inner.peers).expected(tokio::time::Instant::now());
        live.is_empty()
    })
    .await;
    let started = tokio::time::Instant::now();
    assert_eq!(a.count("room").await.unwrap(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "still waiting for the dead server"
    );
    eventually("B's members reported lost", async || {
        !a.lost.lock().unwrap().is_empty()
    })
    .await;
    let lost = a.lost.lock().unwrap().clone();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].group.as_str(), "room");
    let mut expected = vec![b1, b2];
    expected.sort();
    assert_eq!(lost[0].members, expected);
}

#[tokio::test]
async fn a_server_shutting_down_says_goodbye() {
    let nats = NatsServer::start();
    let slow_beats = |b: NatsProviderBuilder| fast(b).heartbeat_interval(Duration::from_secs(30));
    let mut a = server_with(&nats.url(), slow_beats(NatsProvider::builder())).await;
    let mut b = server_with(&nats.url(), slow_beats(NatsProvider::builder())).await;
    let (a1, _) = a.connect(None);
    a.join("room", a1).await.unwrap();
    let (b1, _) = b.connect(None);
    b.join("room", b1).await.unwrap();
    know_each_other(&[&a, &b]).await;
    assert_eq!(a.count("room").await.unwrap(), 2);
    b.leave("room", b1).await;
    b.bp.shutdown().expect("nats shuts down").await;
    eventually("B forgotten after its goodbye", async || {
        lock(&a.bp.transport().inner.peers)
            .expected(tokio::time::Instant::now())
            .0
            .is_empty()
    })
    .await;
    let started = tokio::time::Instant::now();
    assert_eq!(a.count("room").await.unwrap(), 1);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn alone_counts_are_local_and_need_no_round_trip() {
    let nats = NatsServer::start();
    let mut a = server(&nats.url()).await;
    let (a1, _) = a.connect(Some("solo"));
    a.join("room", a1).await.unwrap();
    know_each_other(&[&a]).await;
    assert_eq!(a.count("room").await.unwrap(), 1);
    assert_eq!(
        a.members("room").await.unwrap(),
        vec![MemberInfo {
            connection: a1,
            user: Some("solo".into())
        }]
    );
}

// ---------------------------------------------------------------- faults

#[tokio::test]
async fn nats_outage_fails_fast_and_recovers() {
    let mut nats = NatsServer::start();
    let (mut a, mut b) = (server(&nats.url()).await, server(&nats.url()).await);
    let (a1, _) = a.connect(None);
    let (b1, mut b1_rx) = b.connect(None);
    a.join("room", a1).await.unwrap();
    b.join("room", b1).await.unwrap();
    a.publish(Some("room"), &Target::All, b"before")
        .await
        .unwrap();
    got(&mut b1_rx, b"before").await;

    nats.kill();
    eventually("A notices", async || {
        a.provider.client().connection_state() != async_nats::connection::State::Connected
    })
    .await;
    let err = a
        .publish(Some("room"), &Target::All, b"lost")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            GroupError::Unavailable {
                backplane: "nats",
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        a.count("room").await,
        Err(GroupError::Unavailable { .. })
    ));
    // A group not subscribed yet cannot be joined...
    let (a2, _) = a.connect(None);
    assert!(matches!(
        a.join("new", a2).await,
        Err(GroupError::Unavailable { .. })
    ));
    assert!(!a.subscribed().contains(&"new".to_string()));
    // ...one already subscribed can.
    a.join("room", a2).await.unwrap();

    nats.restart();
    eventually("both reconnect", async || {
        a.metrics.snapshot().backplane_reconnects == 1
            && b.metrics.snapshot().backplane_reconnects == 1
    })
    .await;
    // Subscriptions are back: traffic flows both ways without rebinding anything.
    eventually("delivery after restart", async || {
        a.publish(Some("room"), &Target::All, b"after")
            .await
            .is_ok()
            && recv(&mut b1_rx, Duration::from_millis(200))
                .await
                .as_deref()
                == Some(b"after")
    })
    .await;
    assert_eq!(a.subscribed(), vec!["room"]);
    a.join("new", a2).await.unwrap();
    eventually("counts after restart", async || {
        a.count("room").await.ok() == Some(3)
    })
    .await;
}

// ---------------------------------------------------------------- auth, TLS

#[tokio::test]
async fn user_and_password() {
    let nats = NatsServer::start_with(NatsOptions {
        user: Some(("hub".into(), "p@ss word".into())),
        token: None,
        ..Default::default()
    });
    let port = nats.port();
    // In the URL (percent-encoded)...
    let mut a = server(&format!("nats://hub:p%40ss%20word@127.0.0.1:{port}")).await;
    // ...or in the options.
    let mut b = server_with(
        &nats.url(),
        fast(NatsProvider::builder()).options(async_nats::ConnectOptions::with_user_and_password(
            "hub".into(),
            "p@ss word".into(),
        )),
    )
    .await;
    let (a1, _) = a.connect(None);
    let (b1, mut b1_rx) = b.connect(None);
    a.join("room", a1).await.unwrap();
    b.join("room", b1).await.unwrap();
    a.publish(Some("room"), &Target::All, b"authenticated")
        .await
        .unwrap();
    got(&mut b1_rx, b"authenticated").await;

    for url in [format!("nats://hub:wrong@127.0.0.1:{port}"), nats.url()] {
        let err = NatsProvider::connect(&url).await.unwrap_err();
        assert!(matches!(err, ConnectError::Connect { .. }), "{err}");
        assert!(!err.to_string().contains("wrong"), "password shown: {err}");
    }
}

#[tokio::test]
async fn token() {
    let nats = NatsServer::start_with(NatsOptions {
        user: None,
        token: Some("t0k3n".into()),
        ..Default::default()
    });
    let port = nats.port();
    let mut a = server(&format!("nats://t0k3n@127.0.0.1:{port}")).await;
    let mut b = server_with(
        &nats.url(),
        fast(NatsProvider::builder())
            .options(async_nats::ConnectOptions::with_token("t0k3n".into())),
    )
    .await;
    let (a1, _) = a.connect(None);
    let (b1, mut b1_rx) = b.connect(None);
    a.join("room", a1).await.unwrap();
    b.join("room", b1).await.unwrap();
    a.publish(Some("room"), &Target::All, b"with token")
        .await
        .unwrap();
    got(&mut b1_rx, b"with token").await;
    let err = NatsProvider::connect(&format!("nats://bad@127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn tls_url_requires_tls() {
    let nats = NatsServer::start();
    let err = NatsProvider::builder()
        .options(async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2)))
        .connect(&format!("tls://127.0.0.1:{}", nats.port()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Connect { .. }),
        "a plain server must not be accepted for tls://: {err}"
    );
}

#[tokio::test]
async fn events_reach_the_hook() {
    let nats = NatsServer::start();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let _p = NatsProvider::builder()
        .on_event(move |e| s.lock().unwrap().push(e.to_string()))
        .connect(&nats.url())
        .await
        .unwrap();
    eventually("connected event", async || {
        seen.lock().unwrap().iter().any(|e| e == "connected")
    })
    .await;
}

// ---------------------------------------------------------------- session records

fn record(connection: ConnectionId, server: NodeId) -> hub_core::session::SessionRecord {
    hub_core::session::SessionRecord {
        connection,
        secret_sha256: hub_core::session::hash_secret(7),
        user: Some("alice".into()),
        hub: HUB.into(),
        server,
        groups: vec![hub_core::session::SessionGroup {
            group: GroupName::new("room").unwrap(),
            joined_at: None,
        }],
    }
}

async fn load(s: &Server, id: ConnectionId) -> Option<hub_core::session::SessionRecord> {
    s.bp.load_session(id)
        .expect("shares sessions")
        .await
        .expect("load")
}

#[tokio::test]
async fn session_claims_are_atomic_and_only_the_holder_drops() {
    let nats = NatsServer::start();
    let (a, b, c) = (
        server(&nats.url()).await,
        server(&nats.url()).await,
        server(&nats.url()).await,
    );
    assert!(a.provider.shares_sessions() && a.bp.shares_sessions());
    let grace = Duration::from_secs(30);
    let id = ConnectionId {
        node: a.local.node(),
        local: 1,
    };
    let (na, nb, nc) = (a.local.node(), b.local.node(), c.local.node());
    assert_eq!(load(&b, id).await, None, "no bucket yet: no record");
    let mine = record(id, na);
    a.bp.save_session(&mine, grace)
        .unwrap()
        .await
        .expect("save");
    assert_eq!(load(&b, id).await, Some(mine.clone()));

    // Two servers claim it from A at once: one wins.
    let (rb, rc) = (record(id, nb), record(id, nc));
    let (wb, wc) = tokio::join!(
        b.bp.claim_session(&rb, na, grace).unwrap(),
        c.bp.claim_session(&rc, na, grace).unwrap()
    );
    let (wb, wc) = (wb.expect("claim"), wc.expect("claim"));
    assert!(wb ^ wc, "exactly one claim wins: {wb} {wc}");
    let (winner, won, lost) = if wb { (&b, rb, &c) } else { (&c, rc, &b) };
    assert_eq!(load(&a, id).await, Some(won.clone()));
    // Claiming again from A (no longer the holder) fails.
    assert!(
        !lost
            .bp
            .claim_session(&record(id, lost.local.node()), na, grace)
            .unwrap()
            .await
            .expect("claim")
    );

    // A, no longer the holder, neither deletes nor overwrites it, nor refreshes it.
    a.bp.drop_session(id, na).unwrap().await.expect("drop");
    a.bp.save_session(&mine, grace)
        .unwrap()
        .await
        .expect("save");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(load(&a, id).await, Some(won.clone()), "the record stays");
    // The holder deletes it.
    winner
        .bp
        .drop_session(id, won.server)
        .unwrap()
        .await
        .expect("drop");
    assert_eq!(load(&a, id).await, None);
    // A save by a server nobody claimed from writes it afresh.
    a.bp.save_session(&mine, grace)
        .unwrap()
        .await
        .expect("save");
    assert_eq!(load(winner, id).await, Some(mine));
    assert_eq!(
        a.provider.sessions_bucket(HUB),
        "hub-test-v1-TestHub-sessions"
    );
}

#[tokio::test]
async fn records_live_while_their_server_does_and_expire_after() {
    let nats = NatsServer::start();
    let (a, b) = (server(&nats.url()).await, server(&nats.url()).await);
    // Grace 300 ms, heartbeats every 200 ms: a record lives 900 ms past its last
    // rewrite.
    let grace = Duration::from_millis(300);
    let id = ConnectionId {
        node: a.local.node(),
        local: 1,
    };
    let mine = record(id, a.local.node());
    a.bp.save_session(&mine, grace)
        .unwrap()
        .await
        .expect("save");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(load(&b, id).await, Some(mine), "rewritten while A lives");
    assert!(
        b.bp.server_alive(a.local.node())
            .unwrap()
            .await
            .expect("alive")
    );
    drop(a);
    let start = tokio::time::Instant::now();
    eventually("the record expires", async || load(&b, id).await.is_none()).await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn without_jetstream_hubs_work_and_sessions_stay_local() {
    let nats = NatsServer::start_with(NatsOptions {
        no_jetstream: true,
        ..Default::default()
    });
    let mut a = server(&nats.url()).await;
    assert!(!a.provider.shares_sessions());
    assert!(!a.bp.shares_sessions());
    assert!(
        a.bp.load_session(ConnectionId {
            node: NodeId(1),
            local: 1
        })
        .is_none()
    );
    let (id, _rx) = a.connect(None);
    a.join("room", id).await.expect("join");
    let err = fast(NatsProvider::builder())
        .share_sessions(true)
        .connect(&nats.url())
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::NoJetStream { .. }), "{err}");
    let off = fast(NatsProvider::builder())
        .share_sessions(false)
        .connect(&nats.url())
        .await
        .expect("connect");
    assert!(!off.shares_sessions());
    // Group history needs JetStream, even with sessions kept local.
    let err = fast(NatsProvider::builder())
        .share_sessions(false)
        .history(10, Duration::from_secs(60))
        .connect(&nats.url())
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::NoJetStream { .. }), "{err}");
}
