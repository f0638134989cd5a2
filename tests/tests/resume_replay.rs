//! Sessions that move to another server get back the group pushes they missed, with
//! group history (on Redis, and on NATS JetStream): each push of a group with history carries its position
//! (`control.position`: group, offset, epoch); a client that presents the last one of
//! each group (`hub-resume-positions-bin`) when it resumes elsewhere gets, on that
//! server, every push it missed once and in order, then the live ones. What history
//! no longer holds is told (`pushes_lost`), never skipped silently.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use examples::chat::chat_hub_client::ChatHubClient;
use examples::chat::chat_request::Call;
use examples::chat::chat_response::Event;
use examples::chat::{ChatMessage, ChatResponse, JoinRequest, SayRequest};
use hub_core::bus::Bus;
use hub_core::proto::server_control::Kind;
use hub_core::proto::{ConnectionInfo, Position, PushesLost, ResumeOutcome};
use hub_nats::NatsProvider;
use hub_redis::RedisProvider;
use hub_server::{ConnectionId, GroupProvider, HubConfig, SessionConfig};
use test_support::{NatsServer, RedisServer};
use tests::raw::{Frame, RawConn};
use tests::resume::{next_frame, open, open_at, outcome, send, until_reply};
use tests::{CrashableServer, TestServer, login};

const WAIT: Duration = Duration::from_secs(10);

fn config() -> HubConfig {
    HubConfig::default().sessions(Some(
        SessionConfig::default().grace(Duration::from_secs(30)),
    ))
}

/// The broker the servers share.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Redis,
    Nats,
    /// The in-process bus with a ring per group (`Bus::with_history`).
    Bus,
}

/// A running broker of any kind.
enum Broker {
    Redis(RedisServer),
    Nats(NatsServer),
    Bus(Bus),
}

/// What a server's provider connects to.
#[derive(Clone)]
enum Source {
    Redis(String),
    Nats(String),
    Bus(Bus),
}

impl Broker {
    fn start(backend: Backend, history: usize) -> Broker {
        match backend {
            Backend::Redis => Broker::Redis(RedisServer::start()),
            Backend::Nats => Broker::Nats(NatsServer::start()),
            Backend::Bus => Broker::Bus(Bus::with_history(history)),
        }
    }

    fn source(&self) -> Source {
        match self {
            Broker::Redis(r) => Source::Redis(r.url()),
            Broker::Nats(n) => Source::Nats(n.url()),
            Broker::Bus(b) => Source::Bus(b.clone()),
        }
    }
}

async fn provider(source: Source, history: usize) -> Arc<dyn GroupProvider> {
    match source {
        Source::Bus(bus) => bus.provider(),
        Source::Redis(url) => Arc::new(
            RedisProvider::builder()
                .url(url)
                .presence_ttl(Duration::from_secs(1))
                .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
                .history(history, Duration::from_secs(60))
                .build()
                .expect("provider"),
        ),
        // Sessions shared through JetStream, a server presumed dead 1.5 s after its
        // last beat.
        Source::Nats(url) => Arc::new(
            NatsProvider::builder()
                .options(
                    hub_nats::async_nats::ConnectOptions::new()
                        .reconnect_delay_callback(|_| Duration::from_millis(100)),
                )
                .heartbeat_interval(Duration::from_millis(500))
                .operation_timeout(Duration::from_secs(2))
                .share_sessions(true)
                .history(history, Duration::from_secs(60))
                .connect(&url)
                .await
                .expect("connect to NATS"),
        ),
    }
}

/// What a raw client keeps, as a stock client would: the chat lines it read (seq,
/// text), the last position of each group, and the loss notices.
#[derive(Default)]
struct Reader {
    lines: Vec<(u64, String)>,
    positions: HashMap<String, Position>,
    lost: Vec<PushesLost>,
}

impl Reader {
    /// Reads frames until one says `text` (bounded by [`WAIT`]).
    async fn until_said(&mut self, conn: &mut RawConn<ChatResponse>, text: &str) {
        tokio::time::timeout(WAIT, async {
            loop {
                let frame = next_frame(conn).await;
                if self.take(frame) == Some(text.to_owned()) {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{text} never came; lines {:?}", self.lines));
    }

    /// Keeps what one frame says; returns its chat line, if any.
    fn take(&mut self, frame: ChatResponse) -> Option<String> {
        match Frame::of(&frame).control() {
            Some(Kind::Position(p)) => {
                self.positions.insert(p.group.clone(), p.clone());
            }
            Some(Kind::PushesLost(l)) => self.lost.push(l.clone()),
            _ => {}
        }
        match frame.event {
            Some(Event::OnMessage(m)) => {
                self.lines.push((frame.seq, m.text.clone()));
                Some(m.text)
            }
            _ => None,
        }
    }

    fn texts(&self) -> Vec<String> {
        self.lines.iter().map(|l| l.1.clone()).collect()
    }

    fn positions(&self) -> Vec<Position> {
        self.positions.values().cloned().collect()
    }
}

async fn join(conn: &mut RawConn<ChatResponse>, room: &str) {
    send(conn, 1, Call::Join(JoinRequest { room: room.into() })).await;
    tokio::time::timeout(WAIT, until_reply(conn, 1))
        .await
        .expect("joined in time");
}

/// Bob, on `url`, says `m<from>` to `m<to>` one after the other (each waits for its
/// reply, so they are published in that order); `said` counts them.
fn bob_says(
    bob: ChatHubClient,
    from: u64,
    to: u64,
    said: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in from..=to {
            bob.say(SayRequest {
                text: format!("m{i}"),
            })
            .await
            .expect("say");
            said.store(i, Ordering::Release);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// Server A (crashable) and B over one broker with group history of `history`
/// entries; alice (raw, a session) in `lobby` on A, Bob (the Rust client) on B.
struct Pair {
    _broker: Broker,
    a: CrashableServer,
    b: TestServer,
    token: String,
    alice: RawConn<ChatResponse>,
    hello: ConnectionInfo,
    bob: ChatHubClient,
}

impl Pair {
    async fn start(backend: Backend, history: usize) -> Pair {
        Pair::start_with(backend, history, config).await
    }

    /// The same, both servers with `config()`.
    async fn start_with(backend: Backend, history: usize, config: fn() -> HubConfig) -> Pair {
        let broker = Broker::start(backend, history);
        let source = broker.source();
        let source_a = source.clone();
        let a = CrashableServer::start(
            move || async move { provider(source_a, history).await },
            config(),
        )
        .await;
        let b = TestServer::start(provider(source, history).await, config()).await;
        let token = login(&a.url(), "alice").await;
        let (mut alice, hello) = open(&a.url(), &token, None).await;
        join(&mut alice, "lobby").await;
        let (bob, _) = tests::joined_via(&a.url(), &b.url(), "lobby", "bob").await;
        Pair {
            _broker: broker,
            a,
            b,
            token,
            alice,
            hello,
            bob,
        }
    }
}

/// Waits (bounded by [`WAIT`]) until `count` reaches `n`: a sender counting what it
/// sent has gone on that far.
async fn until_count(count: &AtomicU64, n: u64) {
    tokio::time::timeout(WAIT, async {
        while count.load(Ordering::Acquire) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the sender did not reach {n} in time"));
}

fn numbered(from: u64, to: u64) -> Vec<String> {
    (from..=to).map(|i| format!("m{i}")).collect()
}

/// Alice is on A, Bob on B, both in `lobby`; Bob keeps talking. A is killed (its
/// runtime stops: no clean-up) while Bob is mid-stream; alice resumes on B with her
/// seq and her last position. She reads every line exactly once and in order across
/// the move, the ones she missed replayed on B, then the live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moved_after_its_server_died_misses_no_push_and_sees_none_twice() {
    moved_after_a_crash(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_session_moved_after_its_server_died_misses_no_push_and_sees_none_twice() {
    moved_after_a_crash(Backend::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_a_session_moved_after_its_server_died_misses_no_push_and_sees_none_twice() {
    moved_after_a_crash(Backend::Bus).await;
}

async fn moved_after_a_crash(backend: Backend) {
    let Pair {
        _broker,
        a,
        b,
        token,
        mut alice,
        hello,
        bob,
    } = Pair::start(backend, 1000).await;

    let said = Arc::new(AtomicU64::new(0));
    let talk = bob_says(bob.clone(), 1, 300, said.clone());
    let mut seen = Reader::default();
    seen.until_said(&mut alice, "m40").await;
    a.crash();
    drop(alice);
    let at_crash = said.load(Ordering::Acquire);

    // Bob goes on while alice is between servers.
    until_count(&said, at_crash + 50).await;
    let last_seq = seen.lines.last().expect("lines").0;
    let lobby = seen.positions.get("lobby").cloned().expect("a position");
    assert!(lobby.epoch != 0 && lobby.offset >= 40, "{lobby:?}");
    let (mut alice, restored) = open_at(
        &b.url(),
        &token,
        Some((&hello.resume_credential, last_seq)),
        &seen.positions(),
    )
    .await;
    assert_eq!(outcome(&restored), ResumeOutcome::Restored, "{restored:?}");
    assert_eq!(restored.connection_id, hello.connection_id);

    tokio::time::timeout(WAIT * 3, talk)
        .await
        .expect("bob finished in time")
        .expect("bob's task");
    seen.until_said(&mut alice, "m300").await;
    assert_eq!(seen.texts(), numbered(1, 300), "lost: {:?}", seen.lost);
    assert!(seen.lost.is_empty(), "{:?}", seen.lost);
    // The seq goes on after the one presented, without a gap or a repeat.
    let seqs: Vec<u64> = seen.lines.iter().map(|l| l.0).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(
        at_crash < 300,
        "bob was done before the crash: the test proves nothing"
    );
    assert!(b.handle.metrics().backplane_pushes_recovered > 0);
    // The replay is counted (the hello's `replayed` is 0 for a restored session) once
    // every group's history has been read, just after its last replayed push.
    tokio::time::timeout(WAIT, async {
        while b.handle.metrics().restored_pushes_replayed == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the replay to the restored session is counted");
    assert_eq!(restored.resumption.as_ref().map(|r| r.replayed), Some(0));
}

/// A client that presents no positions (one that never read `control.position`)
/// still gets what was sent while it was away: the session record keeps where it
/// joined each group with history, and B replays from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_positions_a_moved_session_replays_from_where_it_joined() {
    without_positions(Backend::Redis, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_without_positions_a_moved_session_replays_from_where_it_joined() {
    without_positions(Backend::Nats, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_without_positions_a_moved_session_replays_from_where_it_joined() {
    without_positions(Backend::Bus, None).await;
}

/// Positions that are not a `hub.v1.ResumePositions` are ignored, as none: the
/// resume is not refused, and the replay starts where the session joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_positions_are_ignored_and_the_replay_starts_at_the_join() {
    without_positions(Backend::Redis, Some(b"\xff\xff\xff not protobuf")).await;
}

async fn without_positions(backend: Backend, positions: Option<&[u8]>) {
    let Pair {
        _broker,
        a,
        b,
        token,
        alice,
        hello,
        bob,
    } = Pair::start(backend, 1000).await;
    a.crash();
    drop(alice);
    for i in 1..=5 {
        bob.say(SayRequest {
            text: format!("m{i}"),
        })
        .await
        .expect("say");
    }

    let (mut alice, restored) = tests::resume::open_with_positions_bytes(
        &b.url(),
        &token,
        Some((&hello.resume_credential, 0)),
        positions,
    )
    .await;
    assert_eq!(outcome(&restored), ResumeOutcome::Restored, "{restored:?}");
    bob.say(SayRequest { text: "m6".into() })
        .await
        .expect("say");
    let mut seen = Reader::default();
    seen.until_said(&mut alice, "m6").await;
    assert_eq!(seen.texts(), numbered(1, 6));
    assert!(seen.lost.is_empty(), "{:?}", seen.lost);
    // Malformed positions are counted; none presented are not.
    assert_eq!(
        b.handle.metrics().resume_positions_ignored,
        u64::from(positions.is_some())
    );
}

/// More was sent while the client was away than the group's history keeps: what is
/// gone is told (`pushes_lost` with the count) before the rest, never skipped
/// silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_history_no_longer_holds_are_told_to_the_moved_session() {
    trimmed_replay(Backend::Redis).await;
}

/// On NATS the stream's sequences are shared by the hub's groups: how many are gone
/// is unknown (told as 0), but it is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_pushes_history_no_longer_holds_are_told_to_the_moved_session() {
    trimmed_replay(Backend::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_pushes_history_no_longer_holds_are_told_to_the_moved_session() {
    trimmed_replay(Backend::Bus).await;
}

async fn trimmed_replay(backend: Backend) {
    // A stream of about 10 entries (Redis's MAXLEN ~ trims by whole nodes: it may
    // keep more; NATS keeps exactly 10 per group).
    let Pair {
        _broker,
        a,
        b,
        token,
        mut alice,
        hello,
        bob,
    } = Pair::start(backend, 10).await;
    bob.say(SayRequest { text: "m1".into() })
        .await
        .expect("say");
    let mut seen = Reader::default();
    seen.until_said(&mut alice, "m1").await;
    a.crash();
    drop(alice);
    for i in 2..=400 {
        bob.say(SayRequest {
            text: format!("m{i}"),
        })
        .await
        .expect("say");
    }
    let last_seq = seen.lines.last().expect("lines").0;
    let (mut alice, restored) = open_at(
        &b.url(),
        &token,
        Some((&hello.resume_credential, last_seq)),
        &seen.positions(),
    )
    .await;
    assert_eq!(outcome(&restored), ResumeOutcome::Restored, "{restored:?}");
    bob.say(SayRequest {
        text: "m401".into(),
    })
    .await
    .expect("say");
    seen.until_said(&mut alice, "m401").await;
    let lost: u64 = seen.lost.iter().map(|l| l.missed).sum();
    let got = seen.texts();
    // Every line is either read or counted lost (on Redis, whose offsets count the
    // group's pushes), and what was read is in order.
    assert!(!seen.lost.is_empty(), "history of about 10 kept all 400");
    match backend {
        Backend::Redis => {
            assert_eq!(got.len() as u64 + lost, 401, "lost {:?}", seen.lost);
            assert!(lost > 0, "history of about 10 kept all 400");
        }
        Backend::Bus => {
            // Contiguous offsets and a ring of exactly 10: m1, the lost m2..m390
            // told, m391..m400 replayed, m401 live.
            assert_eq!(lost, 389, "{:?}", seen.lost);
            assert_eq!(got.len(), 12, "{got:?}");
            assert_eq!(got[1], "m391", "{got:?}");
        }
        Backend::Nats => {
            assert_eq!(lost, 0, "{:?}", seen.lost);
            // m1, the 10 the stream keeps (m391 to m400), m401 live.
            assert_eq!(got.len(), 12, "{got:?}");
            assert_eq!(got[1], "m391", "{got:?}");
        }
    }
    assert_eq!(got.first().map(String::as_str), Some("m1"));
    let numbers: Vec<u64> = got.iter().map(|t| t[1..].parse().expect("m<n>")).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    assert!(
        seen.lost.iter().all(|l| l.group == "lobby"),
        "{:?}",
        seen.lost
    );
}

/// With `SessionConfig::connection_history`, pushes to a connection id go through the
/// connection's own group (`$conn/<id>`), with its offsets and history: B keeps
/// pushing to alice's id while A (where she is) is killed and before she resumes on
/// B. She reads every push exactly once and in order across the move: those sent
/// while no server held her session are replayed from history on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_a_connection_id_reach_it_once_across_its_servers_death() {
    sends_across_a_crash(Backend::Redis, To::Connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_pushes_to_a_connection_id_reach_it_once_across_its_servers_death() {
    sends_across_a_crash(Backend::Nats, To::Connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_pushes_to_a_connection_id_reach_it_once_across_its_servers_death() {
    sends_across_a_crash(Backend::Bus, To::Connection).await;
}

/// Pushes to a user go through the group `$user/<id>`: with group history they are
/// recovered the same way, with no setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_a_user_reach_it_once_across_its_servers_death() {
    sends_across_a_crash(Backend::Redis, To::User).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_pushes_to_a_user_reach_it_once_across_its_servers_death() {
    sends_across_a_crash(Backend::Nats, To::User).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_pushes_to_a_user_reach_it_once_across_its_servers_death() {
    sends_across_a_crash(Backend::Bus, To::User).await;
}

/// Whom B pushes to in [`sends_across_a_crash`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum To {
    /// Alice's connection id, on hubs with `connection_history`.
    Connection,
    /// The user alice, on hubs with the default session settings.
    User,
}

async fn sends_across_a_crash(backend: Backend, to: To) {
    fn by_id() -> HubConfig {
        HubConfig::default().sessions(Some(
            SessionConfig::default()
                .grace(Duration::from_secs(30))
                .connection_history(true),
        ))
    }
    let Pair {
        _broker,
        a,
        b,
        token,
        mut alice,
        hello,
        bob: _bob,
    } = Pair::start_with(backend, 1000, if to == To::User { config } else { by_id }).await;
    let id: ConnectionId = hello.connection_id.parse().expect("an id");

    // B pushes d1..d300 to alice's id, one after the other.
    let said = Arc::new(AtomicU64::new(0));
    let handle = b.handle.clone();
    let counter = said.clone();
    let pushes = tokio::spawn(async move {
        for i in 1..=300u64 {
            let push = match to {
                To::Connection => handle.connection(id),
                To::User => handle.user("alice").expect("a user name"),
            };
            push.on_message(ChatMessage {
                room: String::new(),
                from: "b".into(),
                text: format!("d{i}"),
            })
            .await
            .expect("push");
            counter.store(i, Ordering::Release);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut seen = Reader::default();
    seen.until_said(&mut alice, "d40").await;
    a.crash();
    drop(alice);
    let at_crash = said.load(Ordering::Acquire);
    // B goes on while alice is between servers.
    until_count(&said, at_crash + 50).await;
    let own = match to {
        To::Connection => format!("$conn/{id}"),
        To::User => "$user/alice".to_owned(),
    };
    assert!(
        seen.positions.contains_key(&own),
        "the pushes carried positions of {own}: {:?}",
        seen.positions.keys()
    );
    let last_seq = seen.lines.last().expect("lines").0;
    let (mut alice, restored) = open_at(
        &b.url(),
        &token,
        Some((&hello.resume_credential, last_seq)),
        &seen.positions(),
    )
    .await;
    assert_eq!(outcome(&restored), ResumeOutcome::Restored, "{restored:?}");
    assert_eq!(restored.connection_id, hello.connection_id);

    tokio::time::timeout(WAIT * 3, pushes)
        .await
        .expect("the pushes finished in time")
        .expect("the pushes' task");
    seen.until_said(&mut alice, "d300").await;
    let want: Vec<String> = (1..=300).map(|i| format!("d{i}")).collect();
    assert_eq!(seen.texts(), want, "lost: {:?}", seen.lost);
    assert!(seen.lost.is_empty(), "{:?}", seen.lost);
    let seqs: Vec<u64> = seen.lines.iter().map(|l| l.0).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(
        at_crash < 300,
        "the pushes were done before the crash: the test proves nothing"
    );
}
