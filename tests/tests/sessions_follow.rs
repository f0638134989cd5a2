//! What is sent to a connection id reaches its session after the session moved to
//! another server. The id names the server that opened the session (A), and sends,
//! asks and commands to it are routed to A's channel; the server that restored the
//! session (B) listens on A's channel while it holds the session, and only then.
//! On real Redis and NATS (and the in-process bus): a session restored on B after A
//! died, and one taken over from a live A, each get a send from B itself, from a
//! third server C and from an emitter exactly once, and answer asks from B and C (and
//! from A, alive); a disconnect command from the emitter ends it on B, and B stops
//! listening on A's channel.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use examples::chat::chat_hub_emitter::ChatHubEmitter;
use examples::chat::chat_request::Answer;
use examples::chat::chat_response::Event;
use examples::chat::{ChatMessage, ChatRequest, ChatResponse, ReadyAnswer, ReadyCheck};
use hub_core::proto::{AnswerInfo, ClientControl, ResumeOutcome, client_control};
use hub_nats::{NatsEmitter, NatsProvider};
use hub_redis::{RedisEmitter, RedisProvider};
use hub_server::{AskOutcome, ConnectionId, GroupProvider, HubConfig, SessionConfig};
use test_support::{NatsServer, RedisServer};
use tests::raw::{Frame, RawConn};
use tests::resume::{next_frame, open, outcome};
use tests::{CrashableServer, TestServer, login};

const WAIT: Duration = Duration::from_secs(10);

fn config() -> HubConfig {
    HubConfig::default().sessions(Some(
        SessionConfig::default().grace(Duration::from_secs(30)),
    ))
}

/// A typed emitter on the Redis at `url`, as a game loop outside the servers has.
async fn redis_emitter(url: &str) -> ChatHubEmitter {
    ChatHubEmitter::new(
        RedisEmitter::connect_with(redis_options(url))
            .await
            .unwrap(),
    )
}

fn redis_options(url: &str) -> hub_redis::RedisProviderBuilder {
    RedisProvider::builder()
        .url(url)
        .presence_ttl(Duration::from_secs(1))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
}

fn redis_provider(url: &str) -> Arc<dyn GroupProvider> {
    Arc::new(redis_options(url).build().unwrap())
}

async fn nats_provider(url: String) -> Arc<dyn GroupProvider> {
    Arc::new(
        NatsProvider::builder()
            .heartbeat_interval(Duration::from_millis(500))
            .operation_timeout(Duration::from_secs(2))
            .share_sessions(true)
            .connect(&url)
            .await
            .unwrap(),
    )
}

fn whisper(text: &str) -> ChatMessage {
    ChatMessage {
        room: String::new(),
        from: "game".into(),
        text: text.into(),
    }
}

/// The next whisper `conn` gets (other frames skipped), with its seq.
async fn next_whisper(conn: &mut RawConn<ChatResponse>) -> (u64, String) {
    loop {
        let frame = next_frame(conn).await;
        if let Some(Event::OnWhisper(m)) = frame.event {
            return (frame.seq, m.text);
        }
    }
}

/// Reads whispers until each of `want` came, fails on one that comes twice or is not
/// wanted, then proves nothing more was on its way: `barrier` pushes one more, which
/// must be the next.
async fn exactly_once(
    conn: &mut RawConn<ChatResponse>,
    want: &[&str],
    barrier: impl AsyncFnOnce(&str),
) {
    let mut got: Vec<String> = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !want.iter().all(|w| got.iter().any(|g| g == w)) {
            let (_, text) = next_whisper(conn).await;
            assert!(
                want.contains(&text.as_str()),
                "unexpected {text:?} after {got:?}"
            );
            assert!(!got.contains(&text), "{text:?} came twice: {got:?}");
            got.push(text);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("within {WAIT:?}: want {want:?}, got {got:?}"));
    barrier("barrier").await;
    let next = tokio::time::timeout(WAIT, next_whisper(conn))
        .await
        .expect("the barrier within the wait");
    assert_eq!(next.1, "barrier", "after {got:?}");
}

/// `asker` asks the session of `id` a ready check while `conn` (its stream) answers
/// ready: the answer reaches the asker.
async fn ask_is_answered(asker: &TestServer, conn: &mut RawConn<ChatResponse>, id: ConnectionId) {
    let handle = asker.handle.clone();
    let ask = tokio::spawn(async move {
        handle
            .connection(id)
            .ready_check(ReadyCheck {
                room: String::new(),
                from: "test".into(),
            })
            .await
    });
    let ask_id = tokio::time::timeout(WAIT, async {
        loop {
            let frame = next_frame(conn).await;
            if let (
                Some(Event::ReadyCheck(_)),
                Some(hub_core::proto::server_control::Kind::Ask(a)),
            ) = (&frame.event, Frame::of(&frame).control())
            {
                return a.id;
            }
        }
    })
    .await
    .expect("the ask within the wait");
    conn.send_msg(&ChatRequest {
        id: 0,
        control: Some(ClientControl {
            kind: Some(client_control::Kind::Answer(AnswerInfo {
                id: ask_id,
                error: None,
            })),
        }),
        call: None,
        answer: Some(Answer::ReadyCheck(ReadyAnswer { ready: true })),
    })
    .await;
    let replies = tokio::time::timeout(WAIT, ask)
        .await
        .expect("the ask ends within the wait")
        .unwrap()
        .expect("ask");
    assert_eq!(replies.len(), 1);
    assert!(
        matches!(&replies[0].outcome, AskOutcome::Answered(a) if a.ready),
        "{:?}",
        replies[0].outcome
    );
}

/// alice's session, opened on `a`: its stream, token, hello and the seq of the
/// whisper `a` sent it.
async fn opened(
    a: &TestServer,
) -> (
    RawConn<ChatResponse>,
    String,
    hub_core::proto::ConnectionInfo,
    u64,
) {
    let token = login(&a.url(), "alice").await;
    let (mut old, hello) = open(&a.url(), &token, None).await;
    let id: ConnectionId = hello.connection_id.parse().unwrap();
    let d = a
        .handle
        .connection(id)
        .on_whisper(whisper("before"))
        .await
        .unwrap();
    assert_eq!(d.local, 1);
    let (last, text) = next_whisper(&mut old).await;
    assert_eq!(text, "before");
    (old, token, hello, last)
}

/// The session of `hello` resumed on `b` (`RESTORED`), and its connection id.
async fn restored_on(
    b: &TestServer,
    token: &str,
    hello: &hub_core::proto::ConnectionInfo,
    last: u64,
) -> (RawConn<ChatResponse>, ConnectionId) {
    let (alice, hello_b) = open(&b.url(), token, Some((&hello.resume_credential, last))).await;
    assert_eq!(outcome(&hello_b), ResumeOutcome::Restored, "{hello_b:?}");
    assert_eq!(hello_b.connection_id, hello.connection_id);
    assert_eq!(b.handle.metrics().backplane_nodes_adopted, 1);
    (alice, hello.connection_id.parse().unwrap())
}

/// Sends to `id` from `b` (where the session is), `c` and the emitter, then asks from
/// `b` and `c`; each reaches it once.
async fn reached_from_everywhere(
    alice: &mut RawConn<ChatResponse>,
    id: ConnectionId,
    b: &TestServer,
    c: &TestServer,
    em: Option<&ChatHubEmitter>,
) {
    let mut want = vec!["from b", "from c"];
    let d = b
        .handle
        .connection(id)
        .on_whisper(whisper("from b"))
        .await
        .unwrap();
    assert_eq!(d.local, 1, "served from B's own registry");
    c.handle
        .connection(id)
        .on_whisper(whisper("from c"))
        .await
        .unwrap();
    if let Some(em) = em {
        em.connection(id)
            .on_whisper(whisper("from the emitter"))
            .await
            .unwrap();
        want.push("from the emitter");
    }
    exactly_once(alice, &want, async |text| {
        c.handle
            .connection(id)
            .on_whisper(whisper(text))
            .await
            .unwrap();
    })
    .await;
    ask_is_answered(b, alice, id).await;
    ask_is_answered(c, alice, id).await;
}

/// Ends the session with a disconnect routed by its id (the emitter's; without one,
/// a clean half-close), and waits for B to stop listening on A's channel: its
/// counters say so, and on Redis `PUBSUB NUMSUB` of A's channel drops from
/// `subscribers` (B and, alive, A) to one fewer.
async fn ends_and_b_lets_go(
    mut alice: RawConn<ChatResponse>,
    id: ConnectionId,
    b: &TestServer,
    em: Option<&ChatHubEmitter>,
    redis: Option<(&RedisServer, u64)>,
) {
    if let Some((redis, subscribers)) = redis {
        assert_eq!(redis_listeners(redis, id).await, subscribers);
    }
    match em {
        Some(em) => em
            .disconnect_connection(id, tonic::Code::Ok, "bye")
            .await
            .unwrap(),
        None => {
            // Without an emitter: the session ends with a clean half-close.
            alice.close_send();
        }
    }
    tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = alice.next().await {}
    })
    .await
    .expect("the stream ends within the wait");
    test_support::eventually("B stops listening on A's channel", WAIT, async || {
        let left = match redis {
            Some((redis, subscribers)) => redis_listeners(redis, id).await == subscribers - 1,
            None => true,
        };
        b.handle.metrics().backplane_nodes_released == 1 && left
    })
    .await;
}

/// The session restored on B after A died.
async fn after_the_first_died<Fut>(
    make: impl Fn() -> Fut + Clone + Send + 'static,
    em: Option<ChatHubEmitter>,
    redis: Option<&RedisServer>,
) where
    Fut: Future<Output = Arc<dyn GroupProvider>>,
{
    let make_a = make.clone();
    let a = CrashableServer::start(make_a, config()).await;
    let b = TestServer::start(make().await, config()).await;
    let c = TestServer::start(make().await, config()).await;
    let (old, token, hello, last) = opened(&a).await;
    // Crashed before the stream ends (a clean half-close would end the session).
    a.crash();
    drop(old);
    let (mut alice, id) = restored_on(&b, &token, &hello, last).await;
    reached_from_everywhere(&mut alice, id, &b, &c, em.as_ref()).await;
    // A died: B is the one subscriber of A's channel.
    ends_and_b_lets_go(alice, id, &b, em.as_ref(), redis.map(|r| (r, 1))).await;
}

/// The session taken over from a live A: A leaves the sends and asks for it that
/// come to its channel to B, and its own go there too.
async fn from_a_live_server<Fut>(
    make: impl Fn() -> Fut,
    em: Option<ChatHubEmitter>,
    redis: Option<&RedisServer>,
) where
    Fut: Future<Output = Arc<dyn GroupProvider>>,
{
    let a = TestServer::start(make().await, config()).await;
    let b = TestServer::start(make().await, config()).await;
    let c = TestServer::start(make().await, config()).await;
    // The old stream stays open (A closes it with a goodbye when it lets go).
    let (_old, token, hello, last) = opened(&a).await;
    let (mut alice, id) = restored_on(&b, &token, &hello, last).await;
    test_support::eventually("A let go of the session", WAIT, async || {
        a.handle.metrics().sessions_taken_over == 1
    })
    .await;
    reached_from_everywhere(&mut alice, id, &b, &c, em.as_ref()).await;
    // From A itself: its registry no longer holds it; its channel, which B listens
    // on, does.
    let d = a
        .handle
        .connection(id)
        .on_whisper(whisper("from a"))
        .await
        .unwrap();
    assert_eq!(d.local, 0);
    exactly_once(&mut alice, &["from a"], async |text| {
        a.handle
            .connection(id)
            .on_whisper(whisper(text))
            .await
            .unwrap();
    })
    .await;
    ask_is_answered(&a, &mut alice, id).await;
    // A answered none of the asks for it itself (C got one answer per ask).
    assert_eq!(c.handle.metrics().answers_unmatched, 0);
    assert_eq!(a.handle.metrics().asks_disconnected, 0);
    // A lives: it and B subscribe to A's channel.
    ends_and_b_lets_go(alice, id, &b, em.as_ref(), redis.map(|r| (r, 2))).await;
}

/// Whether anything subscribes to the channel of the server connection `id` names
/// besides that server (alive or not).
async fn redis_listeners(redis: &RedisServer, id: ConnectionId) -> u64 {
    let channel = format!("hub:chat.v1.ChatHub:node:{}", id.node);
    let out = redis.cli(&["PUBSUB", "NUMSUB", &channel]);
    out.lines()
        .last()
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(0)
}

#[tokio::test]
async fn redis_sends_follow_a_session_restored_after_its_server_died() {
    let redis = RedisServer::start();
    let url = redis.url();
    let em = redis_emitter(&url).await;
    after_the_first_died(
        move || std::future::ready(redis_provider(&url)),
        Some(em),
        Some(&redis),
    )
    .await;
}

#[tokio::test]
async fn redis_sends_follow_a_session_taken_over_from_a_live_server() {
    let redis = RedisServer::start();
    let url = redis.url();
    let em = redis_emitter(&url).await;
    from_a_live_server(
        || std::future::ready(redis_provider(&url)),
        Some(em),
        Some(&redis),
    )
    .await;
}

#[tokio::test]
async fn nats_sends_follow_a_session_restored_after_its_server_died() {
    let nats = NatsServer::start();
    let url = nats.url();
    let em = ChatHubEmitter::new(NatsEmitter::connect(&url).await.unwrap());
    after_the_first_died(move || nats_provider(url.clone()), Some(em), None).await;
}

#[tokio::test]
async fn nats_sends_follow_a_session_taken_over_from_a_live_server() {
    let nats = NatsServer::start();
    let url = nats.url();
    let em = ChatHubEmitter::new(NatsEmitter::connect(&url).await.unwrap());
    from_a_live_server(|| nats_provider(url.clone()), Some(em), None).await;
}

#[tokio::test]
async fn bus_sends_follow_a_session_restored_after_its_server_died() {
    let bus = hub_core::bus::Bus::new();
    after_the_first_died(move || std::future::ready(bus.provider()), None, None).await;
}

#[tokio::test]
async fn bus_sends_follow_a_session_taken_over_from_a_live_server() {
    let bus = hub_core::bus::Bus::new();
    from_a_live_server(|| std::future::ready(bus.provider()), None, None).await;
}
