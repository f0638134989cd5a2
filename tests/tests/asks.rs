//! Asks (the server asks clients and waits for their answers), on one server and
//! across servers on the in-process bus: one connection, a user's connections, a
//! room's ready check, errors, timeouts, limits, slow answers and answerers that call
//! the hub, a target server that crashes and a backplane that goes down mid-ask.

use std::sync::Arc;
use std::time::Duration;

use examples::chat::{ReadyAnswer, ReadyCheck, ReadyState};
use hub_core::bus::Bus;
use hub_server::{AskOutcome, HubConfig};
use tests::asks::{self, Mode, answerer, ready_check, states};
use tests::{TestServer, joined};

fn ask() -> ReadyCheck {
    ReadyCheck {
        room: "r".into(),
        from: "test".into(),
    }
}

fn id(c: &examples::chat::chat_hub_client::ChatHubClient) -> hub_server::ConnectionId {
    c.connection_id().parse().expect("a connection id")
}

#[tokio::test]
async fn one_connection_answers_fails_or_does_not_know_the_ask() {
    let s = TestServer::memory(HubConfig::default()).await;
    let (yes, _) = answerer(&s.url(), "r", "yes", Mode::Yes).await;
    let (err, _) = answerer(&s.url(), "r", "err", Mode::Error).await;
    // A client whose receiver does not implement the ask: UNIMPLEMENTED.
    let (plain, _) = joined(&s.url(), "r", "plain").await;

    let r = s
        .handle
        .connection(id(&yes))
        .ready_check(ask())
        .await
        .expect("ask");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].connection, id(&yes));
    assert!(
        matches!(
            r[0].outcome,
            AskOutcome::Answered(ReadyAnswer { ready: true })
        ),
        "{r:?}"
    );

    let r = s
        .handle
        .connection(id(&err))
        .ready_check(ask())
        .await
        .expect("ask");
    match &r[0].outcome {
        AskOutcome::Failed(status) => {
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            assert_eq!(status.message(), "not at the keyboard");
        }
        other => panic!("{other:?}"),
    }
    let r = s
        .handle
        .connection(id(&plain))
        .ready_check(ask())
        .await
        .expect("ask");
    assert!(
        matches!(&r[0].outcome, AskOutcome::Failed(st) if st.code() == tonic::Code::Unimplemented),
        "{r:?}"
    );

    // A connection that is not there.
    let gone = hub_server::ConnectionId {
        local: 999,
        ..id(&yes)
    };
    let r = s
        .handle
        .connection(gone)
        .ready_check(ask())
        .await
        .expect("ask");
    assert!(matches!(r[0].outcome, AskOutcome::Disconnected(_)), "{r:?}");

    let m = s.handle.metrics();
    assert_eq!(
        (m.asks, m.asks_answered, m.asks_failed, m.asks_disconnected),
        (4, 1, 2, 1),
        "{m:?}"
    );
}

#[tokio::test]
async fn a_user_ask_reaches_every_connection_of_the_user() {
    let s = TestServer::memory(HubConfig::default()).await;
    let (_a, _) = answerer(&s.url(), "r", "ann", Mode::Yes).await;
    let (_b, _) = answerer(&s.url(), "r", "ann", Mode::No).await;
    let (_c, never) = answerer(&s.url(), "r", "ann", Mode::Never).await;
    let (_other, other) = answerer(&s.url(), "r", "bob", Mode::Yes).await;
    let started = tokio::time::Instant::now();
    let replies = s
        .handle
        .user("ann")
        .expect("user")
        .ask_timeout(Duration::from_millis(300))
        .ready_check(ask())
        .await
        .expect("ask");
    // One reply per connection of the user: two answers and a timeout.
    assert_eq!(replies.len(), 3, "{replies:?}");
    let mut kinds: Vec<String> = replies
        .iter()
        .map(|r| match &r.outcome {
            AskOutcome::Answered(a) => format!("answered {}", a.ready),
            o => o.kind().to_owned(),
        })
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["answered false", "answered true", "timed out"]);
    assert!(replies.iter().all(|r| r.user.as_deref() == Some("ann")));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(never.asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(other.asked.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(s.handle.metrics().asks_timed_out, 1);
}

#[tokio::test]
async fn a_ready_check_asks_the_room_the_asker_included() {
    let s = TestServer::memory(HubConfig::default()).await;
    let (alice, _) = answerer(&s.url(), "r", "alice", Mode::Yes).await;
    let (_bob, _) = answerer(&s.url(), "r", "bob", Mode::No).await;
    let (_carol, _) = answerer(&s.url(), "r", "carol", Mode::Error).await;
    let (_dan, _) = answerer(&s.url(), "r", "dan", Mode::Never).await;
    let (_, got) = ready_check(&alice, 300).await;
    assert_eq!(
        got,
        states(&[
            ("alice", ReadyState::Ready),
            ("bob", ReadyState::NotReady),
            ("carol", ReadyState::Failed),
            ("dan", ReadyState::TimedOut),
        ])
    );
}

#[tokio::test]
async fn a_slow_answer_holds_back_no_other_call() {
    let s = TestServer::memory(HubConfig::default()).await;
    let (alice, _) = answerer(&s.url(), "r", "alice", Mode::Yes).await;
    let (bob, b) = answerer(&s.url(), "r", "bob", Mode::Late(Duration::from_secs(2))).await;
    let check = {
        let alice = alice.clone();
        tokio::spawn(async move { ready_check(&alice, 5_000).await })
    };
    b.wait_asked(1, Duration::from_secs(5)).await;
    // Bob is still answering: his calls run meanwhile.
    let m = tokio::time::timeout(Duration::from_secs(1), bob.members())
        .await
        .expect("bob's call is not held back by his answer")
        .expect("members");
    assert_eq!(m.count, 2);
    assert!(
        !check.is_finished(),
        "the check waits for bob's late answer"
    );
    let (_, got) = check.await.expect("task");
    assert_eq!(
        got,
        states(&[("alice", ReadyState::Ready), ("bob", ReadyState::Ready)])
    );
}

#[tokio::test]
async fn answerers_may_call_the_hub_even_the_asker_on_its_own_connection() {
    let s = TestServer::memory(HubConfig::default()).await;
    // Alice's answer to her own ready check needs a call on her connection, whose
    // running call is that ready check: the call is parked while it waits on her.
    let (alice, a) = answerer(&s.url(), "r", "alice", Mode::CallFirst).await;
    let (_bob, b) = answerer(&s.url(), "r", "bob", Mode::CallFirst).await;
    let (_, got) = ready_check(&alice, 3_000).await;
    assert_eq!(
        got,
        states(&[("alice", ReadyState::Ready), ("bob", ReadyState::Ready)])
    );
    assert_eq!(*a.counted.lock().expect("lock"), [2]);
    assert_eq!(*b.counted.lock().expect("lock"), [2]);
}

#[tokio::test]
async fn asks_over_the_limits_are_refused_and_counted() {
    let mut config = HubConfig::default();
    config.max_asks_per_target = 1;
    config.max_asks_per_connection = 1;
    let s = TestServer::memory(config).await;
    let (alice, a) = answerer(&s.url(), "r", "alice", Mode::Never).await;
    let (bob, b) = answerer(&s.url(), "r", "bob", Mode::Never).await;
    // Per target: a second ask to bob while one waits.
    let first = {
        let h = s.handle.clone();
        let bob = id(&bob);
        tokio::spawn(async move {
            h.connection(bob)
                .ask_timeout(Duration::from_millis(1500))
                .ready_check(ask())
                .await
        })
    };
    b.wait_asked(1, Duration::from_secs(5)).await;
    let r = s
        .handle
        .connection(id(&bob))
        .ready_check(ask())
        .await
        .expect("ask");
    assert!(
        matches!(&r[0].outcome, AskOutcome::Failed(st) if st.code() == tonic::Code::ResourceExhausted),
        "{r:?}"
    );
    let r = first.await.expect("task").expect("ask");
    assert!(matches!(r[0].outcome, AskOutcome::TimedOut), "{r:?}");
    // Per asking connection: alice's first ready check waits on her own answer (so
    // her connection runs her next call), the second is refused at once.
    let waiting = {
        let alice = alice.clone();
        tokio::spawn(async move { ready_check(&alice, 1500).await })
    };
    a.wait_asked(1, Duration::from_secs(5)).await;
    let (report, got) = ready_check(&alice, 1500).await;
    assert_eq!(
        got,
        states(&[("alice", ReadyState::Failed), ("bob", ReadyState::Failed)])
    );
    assert!(
        report
            .members
            .iter()
            .all(|m| m.detail.contains("ResourceExhausted")),
        "{report:?}"
    );
    let (_, got) = waiting.await.expect("task");
    assert_eq!(
        got,
        states(&[
            ("alice", ReadyState::TimedOut),
            ("bob", ReadyState::TimedOut)
        ])
    );
    assert_eq!(s.handle.metrics().asks_refused, 3);
}

#[tokio::test]
async fn a_target_that_disconnects_ends_its_ask_at_once() {
    let s = TestServer::memory(HubConfig::default()).await;
    let (alice, _) = answerer(&s.url(), "r", "alice", Mode::Yes).await;
    let (bob, b) = answerer(&s.url(), "r", "bob", Mode::Never).await;
    let check = {
        let alice = alice.clone();
        tokio::spawn(async move { ready_check(&alice, 60_000).await })
    };
    b.wait_asked(1, Duration::from_secs(5)).await;
    // Bob's last client handle goes: his stream ends, and so does the ask to him.
    drop(bob);
    let (report, got) = tokio::time::timeout(Duration::from_secs(10), check)
        .await
        .expect("the ask ends when bob goes")
        .expect("task");
    assert_eq!(
        got,
        states(&[
            ("alice", ReadyState::Ready),
            ("bob", ReadyState::Disconnected)
        ]),
        "{report:?}"
    );
}

fn bus_provider(bus: &Bus) -> asks::MakeProvider {
    let bus = bus.clone();
    Arc::new(move || tests::conformance::ready(bus.provider()))
}

#[tokio::test]
async fn a_ready_check_across_three_servers_on_the_bus() {
    asks::group_across_servers(bus_provider(&Bus::new())).await;
}

#[tokio::test]
async fn the_target_server_crashing_ends_the_ask_at_once_on_the_bus() {
    asks::crash_mid_ask(bus_provider(&Bus::new()), Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_bus_going_down_ends_the_ask_at_once() {
    let bus = Bus::new();
    let s0 = TestServer::start(bus.provider(), HubConfig::default()).await;
    let s1 = TestServer::start(bus.provider(), HubConfig::default()).await;
    let (alice, _) = answerer(&s0.url(), "r", "alice", Mode::Yes).await;
    let (bob, b) = answerer(&s1.url(), "r", "bob", Mode::Never).await;
    let check = {
        let alice = alice.clone();
        tokio::spawn(async move { ready_check(&alice, 60_000).await })
    };
    b.wait_asked(1, Duration::from_secs(5)).await;
    bus.set_down(true);
    let (report, got) = tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .expect("the ask ends when the bus goes down")
        .expect("task");
    assert_eq!(
        got,
        states(&[
            ("alice", ReadyState::Ready),
            ("bob", ReadyState::Unreachable)
        ]),
        "{report:?}"
    );
    // While it is down, an ask to a connection of another server fails at once.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        s0.handle.connection(id(&bob)).ready_check(ask()),
    )
    .await
    .expect("at once")
    .expect("a connection ask lists no members");
    assert!(matches!(r[0].outcome, AskOutcome::Unreachable(_)), "{r:?}");
    // And a room's ready check cannot list the room.
    let err = alice
        .check_ready(examples::chat::CheckReadyRequest { timeout_ms: 1000 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(s0.handle.metrics().asks_unreachable >= 2);
}

#[tokio::test]
async fn an_ask_ends_when_the_asking_connection_goes() {
    use examples::chat::chat_request::Call;
    use examples::chat::{ChatRequest, ChatResponse, CheckReadyRequest, JoinRequest};
    // The server pings every 100 ms and closes a client silent for 600 ms.
    let config = HubConfig::default().heartbeat(
        Some(Duration::from_millis(100)),
        Some(Duration::from_millis(600)),
    );
    let s = TestServer::memory(config).await;
    let (_bob, b) = answerer(&s.url(), "r", "bob", Mode::Never).await;
    // Alice, on a raw stream, asks the room and then goes silent: no pong, no answer.
    let token = tests::login(&s.url(), "alice").await;
    let bearer = format!("Bearer {token}");
    let alice = tests::raw::RawConn::<ChatResponse>::open(
        tests::channel(&s.url()).await,
        "/chat.v1.ChatHub/Connect",
        &[("authorization", bearer.as_str())],
    )
    .await
    .expect("open");
    let call = |id, call| ChatRequest {
        id,
        control: None,
        call: Some(call),
        answer: None,
    };
    alice
        .send_msg(&call(1, Call::Join(JoinRequest { room: "r".into() })))
        .await;
    alice
        .send_msg(&call(
            2,
            Call::CheckReady(CheckReadyRequest { timeout_ms: 30_000 }),
        ))
        .await;
    b.wait_asked(1, Duration::from_secs(5)).await;
    // The heartbeat timeout closes alice's connection: her ask to bob and herself ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = s.handle.metrics();
        if m.asks_cancelled == 2 {
            assert_eq!(m.heartbeat_timeouts, 1, "{m:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not cancelled: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Bob is still connected and can be asked again.
    b.set(Mode::Yes);
    let r = s
        .handle
        .user("bob")
        .expect("user")
        .ready_check(ask())
        .await
        .expect("ask");
    assert!(
        matches!(
            r[0].outcome,
            AskOutcome::Answered(ReadyAnswer { ready: true })
        ),
        "{r:?}"
    );
}
