//! One conformance suite for every backplane topology: the chat hub on two or three
//! servers, each with a group provider of its own (as separate processes would have),
//! sharing groups through whatever the topology puts between them.
//!
//! A test file implements [`Topology`] (start the backplane, make a provider for
//! server `i`, and the faults it can inject) and instantiates the suite with
//! [`conformance_suite!`](crate::conformance_suite), which expands to one
//! `#[tokio::test]` per case. Cases that need a fault (crashing a hub server,
//! restarting the backplane, losing one node of a cluster) are generated only for
//! the capabilities the invocation names, and the names must equal the topology's
//! [`Topology::CAPABILITIES`] (checked at compile time): a topology that cannot do a
//! case says so, and the case does not exist for it, rather than passing by doing
//! nothing.
//!
//! ```ignore
//! struct Memory(Bus);
//!
//! impl Topology for Memory {
//!     const NAME: &'static str = "memory";
//!     fn start() -> Self {
//!         Memory(Bus::new())
//!     }
//!     fn provider(&self, _server: usize) -> ProviderFuture {
//!         conformance::ready(self.0.provider())
//!     }
//! }
//!
//! tests::conformance_suite!(Memory);
//! // With faults: tests::conformance_suite!(Redis; server_crash, backplane_restart);
//! ```
//!
//! # Proving that nothing else arrived
//!
//! No case sleeps to conclude that something did not arrive. Pushes from one sender
//! through one group arrive in the order sent, so after the pushes that must not reach
//! a connection, the same sender pushes a marker through the same group that must, and
//! the case waits for it (`nothing_more_via`): whatever was sent before it would have
//! come first. A push a server already delivered (one of its connections got it) is
//! likewise proved absent from that server's other connections by a marker the server
//! queues to them now (`nothing_more_here`). That a server receives nothing of a group
//! it has no members of is shown by a marker another server sends to one of its
//! connections after the group's pushes, and its `backplane_received` counter
//! (`not_received_after`): that relies on one server's publishes reaching another in
//! the order sent, across channels, which makes it weaker (never flaky) on a
//! backplane that reorders them.
//!
//! The only sleeps are the pauses of a member talking through an outage (20 ms
//! between says) and a leave made slow on purpose (300 ms); every wait is bounded
//! ([`WAIT`], [`CALL_BOUND`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use examples::chat::chat_hub_client::ChatHubClient;
use examples::chat::{ChatMessage, JoinRequest, SayRequest, UserEvent, WhisperRequest};
use hub_core::{ConnectionId, MemberInfo};
use hub_server::{GroupProvider, HubConfig};
use tokio::time::Instant;
use tonic::Code;

use crate::{CrashableServer, Recorder, Seen, TestServer, client, join_notice, joined, said};

/// How long any one wait of a case lasts at most (generous: the machine is shared).
pub const WAIT: Duration = Duration::from_secs(10);

/// The longest one call may take while the backplane is down or failing over: the
/// topologies' providers time out well within it (their operation timeouts are 2 s).
/// A call that takes longer hangs, which is a failure.
pub const CALL_BOUND: Duration = Duration::from_secs(5);

/// A provider being made, for a server whose runtime polls it: made on the runtime
/// of that server (see [`CrashableServer`]), its connections die with that server.
pub type ProviderFuture = Pin<Box<dyn Future<Output = Arc<dyn GroupProvider>> + Send + 'static>>;

/// A provider that is already made, as a [`ProviderFuture`].
pub fn ready(provider: Arc<dyn GroupProvider>) -> ProviderFuture {
    Box::pin(std::future::ready(provider))
}

/// The faults a topology can inject. Each enables the cases named after it in
/// [`conformance_suite!`](crate::conformance_suite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// A hub server can crash (its runtime stops at once, nothing cleaned up) and the
    /// backplane finds out within [`Topology::presence_expiry`].
    pub server_crash: bool,
    /// The whole backplane can be killed and restarted ([`Topology::kill_backplane`],
    /// [`Topology::restart_backplane`]).
    pub backplane_restart: bool,
    /// One node of a clustered backplane can die while the hub servers connected to it
    /// fail over to another ([`Topology::kill_node_of`]).
    pub node_failover: bool,
    /// The whole backplane can stall (`SIGSTOP`: connections stay open, nothing is
    /// answered) for [`Topology::tolerated_stall`] ([`Topology::pause_backplane`]).
    pub backplane_pause: bool,
}

impl Capabilities {
    /// No fault at all: the topology only serves groups.
    pub const NONE: Capabilities = Capabilities {
        server_crash: false,
        backplane_restart: false,
        node_failover: false,
        backplane_pause: false,
    };

    /// `self == other`, in a constant.
    pub const fn same_as(self, other: Capabilities) -> bool {
        self.server_crash == other.server_crash
            && self.backplane_restart == other.backplane_restart
            && self.node_failover == other.node_failover
            && self.backplane_pause == other.backplane_pause
    }
}

/// One way of sharing groups between hub servers: a backplane (a Redis, a Redis
/// Cluster, a NATS, a NATS cluster, an in-process bus) and how each server reaches it.
///
/// Only [`Topology::start`] and [`Topology::provider`] are required; the fault methods
/// are called only by the cases of the [`Capabilities`] the topology declares.
pub trait Topology: Sized + 'static {
    /// For messages (`redis`, `nats-cluster`...).
    const NAME: &'static str;

    /// The faults this topology can inject. Default: none.
    const CAPABILITIES: Capabilities = Capabilities::NONE;

    /// Starts a fresh backplane (one per test).
    fn start() -> Self;

    /// A new provider for hub server `server` (0, 1, 2...), as a separate process would
    /// make its own. It is polled on the runtime of the server that will use it.
    fn provider(&self, server: usize) -> ProviderFuture;

    /// The documented bound on how long a crashed server's members keep being counted
    /// after the crash (presence expiry): the crash case waits for at most this plus
    /// a margin for a loaded machine. Needed for `server_crash`.
    fn presence_expiry(&self) -> Duration {
        unsupported::<Self>("server_crash")
    }

    /// Kills every process of the backplane. Needed for `backplane_restart`.
    fn kill_backplane(&mut self) {
        unsupported::<Self>("backplane_restart")
    }

    /// Starts the backplane again after [`Topology::kill_backplane`] (same addresses,
    /// nothing kept). Needed for `backplane_restart`.
    fn restart_backplane(&mut self) {
        unsupported::<Self>("backplane_restart")
    }

    /// Kills the backplane node hub server `server` is connected to; the provider made
    /// for that server must be able to fail over to another node. Needed for
    /// `node_failover`.
    fn kill_node_of(&mut self, server: usize) {
        let _ = server;
        unsupported::<Self>("node_failover")
    }

    /// Stalls every process of the backplane until the returned guard is dropped.
    /// Needed for `backplane_pause`.
    fn pause_backplane(&self) -> Box<dyn Stall + '_> {
        unsupported::<Self>("backplane_pause")
    }

    /// The longest stall of the backplane after which nobody may be presumed dead:
    /// the stall case lasts this long. Needed for `backplane_pause`.
    fn tolerated_stall(&self) -> Duration {
        unsupported::<Self>("backplane_pause")
    }
}

/// A stalled backplane, resumed when dropped.
pub trait Stall {}

impl<T> Stall for T {}

fn unsupported<T: Topology>(capability: &str) -> ! {
    panic!(
        "the {} topology does not declare `{capability}`, yet a case needing it ran",
        T::NAME
    )
}

/// Expands to one `#[tokio::test]` per conformance case, run on the topology type
/// given (started afresh by [`Topology::start`] for each test), plus the cases of the
/// capabilities listed after a `;`, which must be exactly the type's
/// [`Topology::CAPABILITIES`]:
///
/// ```ignore
/// tests::conformance_suite!(Redis; server_crash, backplane_restart);
/// ```
#[macro_export]
macro_rules! conformance_suite {
    (@cases $topology:ty; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                $crate::conformance::$case(
                    <$topology as $crate::conformance::Topology>::start(),
                )
                .await;
            }
        )*
    };
    (@capability $topology:ty; server_crash) => {
        $crate::conformance_suite!(@cases $topology;
            a_crashed_servers_members_expire_and_are_reported_once,
        );
    };
    (@capability $topology:ty; backplane_restart) => {
        $crate::conformance_suite!(@cases $topology;
            a_backplane_restart_in_the_middle_of_traffic,
        );
    };
    (@capability $topology:ty; backplane_pause) => {
        $crate::conformance_suite!(@cases $topology;
            a_backplane_stall_hangs_nothing_and_kills_nobody,
        );
    };
    (@capability $topology:ty; node_failover) => {
        $crate::conformance_suite!(@cases $topology;
            a_failed_backplane_node_is_survived,
        );
    };
    ($topology:ty $(; $($capability:ident),* $(,)?)?) => {
        const _: () = {
            #[allow(unused_mut)]
            let mut declared = $crate::conformance::Capabilities::NONE;
            $($(declared.$capability = true;)*)?
            assert!(
                declared.same_as(<$topology as $crate::conformance::Topology>::CAPABILITIES),
                "the capabilities given to conformance_suite! are not the topology's CAPABILITIES"
            );
        };
        $crate::conformance_suite!(@cases $topology;
            every_target_mode_crosses_servers,
            counts_and_member_lists_cover_every_server,
            leave_and_disconnect_stop_deliveries_and_fix_counts,
            a_push_to_a_group_without_remote_members_reaches_no_other_server,
            pushes_from_one_sender_arrive_in_order_exactly_once,
            members_right_after_on_leave_do_not_list_the_leaver,
        );
        $($($crate::conformance_suite!(@capability $topology; $capability);)*)?
    };
}

// ---------------------------------------------------------------------------------
// Helpers.

/// Starts hub servers `0..n` of the topology (in this runtime).
async fn servers<T: Topology>(t: &T, n: usize) -> Vec<TestServer> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(TestServer::start(t.provider(i).await, HubConfig::default()).await);
    }
    out
}

fn id_of(c: &ChatHubClient) -> ConnectionId {
    c.connection_id().parse().expect("a connection id")
}

/// What a connection received, read in order.
pub struct Inbox {
    rx: Arc<Recorder>,
    read: usize,
    who: String,
}

impl Inbox {
    fn new(who: &str, rx: Arc<Recorder>) -> Self {
        Inbox {
            rx,
            read: 0,
            who: who.to_owned(),
        }
    }

    /// Waits for the next pushes and checks they are `want`, in order.
    async fn expect(&mut self, want: &[Seen]) {
        let n = self.read + want.len();
        let seen = self.rx.wait_for(n, WAIT).await;
        let got = &seen[self.read.min(seen.len())..n.min(seen.len())];
        assert_eq!(
            got, want,
            "{}: the pushes after the first {} (all: {seen:?})",
            self.who, self.read
        );
        self.read = n;
    }

    /// Waits for the next push that matches `wanted`; returns what came before it and
    /// reads past it.
    async fn until(&mut self, what: &str, wanted: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.rx.seen();
            if let Some(at) = seen[self.read..].iter().position(&wanted) {
                let before = seen[self.read..self.read + at].to_vec();
                self.read += at + 1;
                return before;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: {what} did not arrive within {WAIT:?}: {seen:?}",
                self.who
            );
            self.rx.wait_for(seen.len() + 1, left).await;
        }
    }

    /// Waits until every push of `want` arrived (in any order, among others) and reads
    /// past the last of them.
    async fn wait_all(&mut self, want: &[Seen]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.rx.seen();
            let at: Option<Vec<usize>> = want
                .iter()
                .map(|w| seen[self.read..].iter().position(|s| s == w))
                .collect();
            if let Some(at) = at {
                self.read += at.into_iter().max().map_or(0, |m| m + 1);
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: {want:?} did not all arrive within {WAIT:?}: {seen:?}",
                self.who
            );
            self.rx.wait_for(seen.len() + 1, left).await;
        }
    }

    /// Everything this connection received.
    fn all(&self) -> Vec<Seen> {
        self.rx.seen()
    }
}

/// Logs in as `user` on `server` and joins `room`.
async fn member(server: &TestServer, room: &str, user: &str) -> (ChatHubClient, Inbox) {
    let (c, rx) = joined(&server.url(), room, user).await;
    (c, Inbox::new(user, rx))
}

/// Logs in as `user` on `server`, in no room.
async fn loner(server: &TestServer, user: &str) -> (ChatHubClient, Inbox) {
    let (c, rx) = client(&server.url(), user).await;
    (c, Inbox::new(user, rx))
}

fn left(room: &str, user: &str) -> Seen {
    Seen::Leave(UserEvent {
        room: room.into(),
        user: user.into(),
    })
}

fn whispered(room: &str, from: &str, text: &str) -> Seen {
    Seen::Whisper(ChatMessage {
        room: room.into(),
        from: from.into(),
        text: text.into(),
    })
}

fn message(room: &str, from: &str, text: &str) -> ChatMessage {
    ChatMessage {
        room: room.into(),
        from: from.into(),
        text: text.into(),
    }
}

async fn say(c: &ChatHubClient, text: &str) {
    c.say(SayRequest { text: text.into() })
        .await
        .unwrap_or_else(|e| panic!("say {text:?}: {e}"));
}

async fn whisper(c: &ChatHubClient, user: &str, text: &str) -> Result<(), Code> {
    c.whisper(WhisperRequest {
        user: user.into(),
        text: text.into(),
    })
    .await
    .map_err(|e| e.code())
}

/// A marker message no case sends otherwise.
fn marker(room: &str) -> ChatMessage {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    message(room, "marker", &format!("marker {n}"))
}

/// Proves that nothing `server` pushed to `room` before (its connections' says and
/// joins included) reached the members whose inboxes are given beyond what they
/// read: `server` pushes a marker to the whole room, and each of them must have it
/// next. Give the inbox of every member of the room.
async fn nothing_more_via(server: &TestServer, room: &str, members: &mut [&mut Inbox]) {
    let m = marker(room);
    server
        .handle
        .group(room)
        .expect("a room")
        .on_message(m.clone())
        .await
        .expect("push a marker to the room");
    for inbox in members.iter_mut() {
        inbox.expect(&[Seen::Message(m.clone())]).await;
    }
}

/// Proves that nothing `server` queued to `conn` before reached it beyond what its
/// inbox read: the server queues a marker to it now, and it must be next.
async fn nothing_more_here(server: &TestServer, inbox: &mut Inbox, conn: ConnectionId) {
    let m = marker("");
    let d = server
        .handle
        .connection(conn)
        .on_message(m.clone())
        .await
        .expect("push a marker");
    assert_eq!(d.local, 1, "{} is not connected to that server", inbox.who);
    inbox.expect(&[Seen::Message(m)]).await;
}

/// Proves that `server` received nothing of what `from` published since its
/// `backplane_received` was `received`: `from` pushes a marker to `conn` on `server`
/// now, and once it arrived, it is the one envelope `server` received since. (This
/// relies on one server's publishes reaching another in the order sent, through
/// whatever channels; a backplane without that order makes the check weaker, never
/// flaky.)
async fn not_received_after(
    from: &TestServer,
    server: &TestServer,
    received: u64,
    inbox: &mut Inbox,
    conn: ConnectionId,
) {
    let m = marker("");
    from.handle
        .connection(conn)
        .on_message(m.clone())
        .await
        .expect("push a marker");
    inbox.expect(&[Seen::Message(m)]).await;
    assert_eq!(
        server.handle.metrics().backplane_received,
        received + 1,
        "a server with no member of the room received its traffic"
    );
}

/// Waits until every server counts `n` members of `group`.
async fn counts_become(servers: &[&TestServer], group: &str, n: u64) {
    for (i, s) in servers.iter().enumerate() {
        test_support::eventually(
            &format!("server {i} counts {n} members of {group}"),
            WAIT,
            async || s.handle.member_count(group).await.ok() == Some(n),
        )
        .await;
    }
}

/// Checks that every server counts `n` members of `group` and `c` connections of
/// each `(user, c)`, now.
async fn assert_counts(servers: &[&TestServer], group: &str, n: u64, users: &[(&str, u64)]) {
    for (i, s) in servers.iter().enumerate() {
        let got = s.handle.member_count(group).await;
        assert_eq!(
            got.as_ref().ok(),
            Some(&n),
            "server {i}: members of {group}: {got:?}"
        );
        for (user, c) in users {
            let got = s.handle.user_connections(user).await;
            assert_eq!(
                got.as_ref().ok(),
                Some(c),
                "server {i}: connections of {user}: {got:?}"
            );
        }
    }
}

/// The sorted member list of `group` as `server` reports it.
async fn member_list(server: &TestServer, group: &str) -> Vec<MemberInfo> {
    let mut m = server
        .handle
        .members(group)
        .await
        .unwrap_or_else(|e| panic!("members of {group}: {e}"));
    m.sort();
    m
}

fn info(c: &ChatHubClient, user: &str) -> MemberInfo {
    MemberInfo {
        connection: id_of(c),
        user: Some(user.into()),
    }
}

fn sorted(mut v: Vec<MemberInfo>) -> Vec<MemberInfo> {
    v.sort();
    v
}

/// A say's number, result and duration.
type Outcome = (u64, Result<(), Code>, Duration);

/// Says `m0`, `m1`... from one client, one every 20 ms, until stopped; keeps each
/// say's outcome and how long it took. A say that takes longer than [`CALL_BOUND`]
/// is recorded as `DEADLINE_EXCEEDED` (it hung).
struct Talker {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<ChatHubClient>,
}

impl Talker {
    fn start(c: ChatHubClient) -> Self {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let out = outcomes.clone();
        let task = tokio::spawn(async move {
            for i in 0.. {
                if *stopped.borrow_and_update() {
                    break;
                }
                let started = Instant::now();
                let r = tokio::time::timeout(
                    CALL_BOUND,
                    c.say(SayRequest {
                        text: format!("m{i}"),
                    }),
                )
                .await;
                let r = match r {
                    Ok(r) => r.map_err(|e| e.code()),
                    Err(_) => Err(Code::DeadlineExceeded),
                };
                out.lock().expect("lock").push((i, r, started.elapsed()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            c
        });
        Talker {
            outcomes,
            stop,
            task,
        }
    }

    fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().expect("lock").clone()
    }

    fn failures(&self) -> usize {
        self.outcomes()
            .iter()
            .filter(|(_, r, _)| r.is_err())
            .count()
    }

    async fn stop(self) -> (ChatHubClient, Vec<Outcome>) {
        let _ = self.stop.send(true);
        let c = tokio::time::timeout(CALL_BOUND * 2, self.task)
            .await
            .expect("the talker stops")
            .expect("the talker");
        let outcomes = self.outcomes.lock().expect("lock").clone();
        (c, outcomes)
    }
}

/// The number of an `m{i}` say from `from`, if `s` is one.
fn number(s: &Seen, from: &str) -> Option<u64> {
    match s {
        Seen::Message(m) if m.from == from => m.text.strip_prefix('m')?.parse().ok(),
        _ => None,
    }
}

/// Whether `s` is an `m{i}` say from `from` numbered above `after`.
fn said_after(s: &Seen, from: &str, after: u64) -> bool {
    number(s, from).is_some_and(|n| n > after)
}

/// The numbers of the `m{i}` says from `from` in `seen`, in the order they arrived.
fn numbers(seen: &[Seen], from: &str) -> Vec<u64> {
    seen.iter().filter_map(|s| number(s, from)).collect()
}

/// Every say came back within [`CALL_BOUND`] (none hung), and any failure was
/// `UNAVAILABLE`.
fn assert_bounded(outcomes: &[Outcome]) {
    for (i, r, took) in outcomes {
        assert!(
            matches!(r, Ok(()) | Err(Code::Unavailable)),
            "say m{i}: {r:?} after {took:?}"
        );
        assert!(*took < CALL_BOUND, "say m{i} took {took:?}");
    }
}

/// Checks a talker's outcomes against what a member received: every failure is
/// `UNAVAILABLE` and came back within [`CALL_BOUND`] (none hung), at least one say
/// failed, what arrived is in order without duplicates, and no say reported failed
/// arrived.
fn check_outage(outcomes: &[Outcome], received: &[u64]) {
    let failed: Vec<u64> = outcomes
        .iter()
        .filter(|(_, r, _)| r.is_err())
        .map(|(i, ..)| *i)
        .collect();
    assert!(!failed.is_empty(), "no say failed during the outage");
    assert_bounded(outcomes);
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "out of order or duplicated: {received:?}"
    );
    for i in &failed {
        assert!(
            !received.contains(i),
            "m{i} was reported failed yet arrived"
        );
    }
}

// ---------------------------------------------------------------------------------
// Cases every topology runs.

/// Every targeting mode reaches exactly its members on every server: `except` (a say:
/// everyone but the sender; a handle push leaving out members of other servers),
/// `only` (one member on another server), one connection and a list of connections on
/// other servers (no group), a user's connections on two servers (a whisper), and
/// `all` (a leave notice, a handle push). A whisper to a user connected nowhere is
/// `NOT_FOUND` after asking every server.
pub async fn every_target_mode_crosses_servers<T: Topology>(t: T) {
    let s = servers(&t, 3).await;
    let (a, b, c) = (&s[0], &s[1], &s[2]);
    let (alice, mut alice_in) = member(a, "lobby", "alice").await;
    let (bob, mut bob_in) = member(b, "lobby", "bob").await;
    alice_in.expect(&[join_notice("lobby", "bob")]).await;
    let (carol, mut carol_in) = member(c, "lobby", "carol").await;
    alice_in.expect(&[join_notice("lobby", "carol")]).await;
    bob_in.expect(&[join_notice("lobby", "carol")]).await;
    let (dave, mut dave_in) = member(b, "lobby", "dave").await;
    for inbox in [&mut alice_in, &mut bob_in, &mut carol_in] {
        inbox.expect(&[join_notice("lobby", "dave")]).await;
    }

    // except, from a client: bob's say reaches everyone else, on every server.
    say(&bob, "hi all").await;
    for inbox in [&mut alice_in, &mut carol_in, &mut dave_in] {
        inbox.expect(&[said("lobby", "bob", "hi all")]).await;
    }
    // B's marker through the lobby: bob got nothing before it (not his own say), and
    // nobody got the say twice.
    nothing_more_via(
        b,
        "lobby",
        &mut [&mut alice_in, &mut bob_in, &mut carol_in, &mut dave_in],
    )
    .await;
    assert!(b.handle.metrics().backplane_published >= 1);
    assert!(a.handle.metrics().backplane_received >= 1);

    // except, from a handle: all but two members, on two other servers.
    let m = message("lobby", "system", "not bob, not carol");
    a.handle
        .group("lobby")
        .expect("group")
        .except([id_of(&bob), id_of(&carol)])
        .on_message(m.clone())
        .await
        .expect("push");
    alice_in.expect(&[Seen::Message(m.clone())]).await;
    dave_in.expect(&[Seen::Message(m)]).await;
    nothing_more_via(
        a,
        "lobby",
        &mut [&mut alice_in, &mut bob_in, &mut carol_in, &mut dave_in],
    )
    .await;

    // only: one member of the group, on a server the pusher has nobody of.
    let m = message("lobby", "system", "only carol");
    let d = a
        .handle
        .group("lobby")
        .expect("group")
        .only([id_of(&carol)])
        .on_message(m.clone())
        .await
        .expect("push");
    assert!(d.published, "{d:?}");
    assert_eq!(d.local, 0, "{d:?}");
    carol_in.expect(&[Seen::Message(m)]).await;
    nothing_more_via(
        a,
        "lobby",
        &mut [&mut alice_in, &mut bob_in, &mut carol_in, &mut dave_in],
    )
    .await;

    // One connection on another server, in no particular group.
    let m = message("", "system", "direct");
    a.handle
        .connection(id_of(&dave))
        .on_whisper(m.clone())
        .await
        .expect("push");
    dave_in.expect(&[Seen::Whisper(m)]).await;
    // B delivered it (dave has it): a marker B queues to bob now comes after anything
    // B queued him with it.
    nothing_more_here(b, &mut bob_in, id_of(&bob)).await;
    // Connections on two other servers: dave on B, carol on C.
    let m = message("", "system", "direct to two");
    a.handle
        .connections([id_of(&dave), id_of(&carol)])
        .on_whisper(m.clone())
        .await
        .expect("push");
    dave_in.expect(&[Seen::Whisper(m.clone())]).await;
    carol_in.expect(&[Seen::Whisper(m)]).await;
    nothing_more_here(b, &mut bob_in, id_of(&bob)).await;

    // A user: alice whispers to carol (on C) from A.
    assert_eq!(whisper(&alice, "carol", "psst").await, Ok(()));
    carol_in
        .expect(&[whispered("lobby", "alice", "psst")])
        .await;
    // A user with connections on two servers gets it on both: carol connects on A too.
    let (_carol2, mut carol2_in) = member(a, "lobby", "carol").await;
    for inbox in [&mut alice_in, &mut bob_in, &mut carol_in, &mut dave_in] {
        inbox.expect(&[join_notice("lobby", "carol")]).await;
    }
    assert_eq!(whisper(&bob, "carol", "both").await, Ok(()));
    carol_in.expect(&[whispered("lobby", "bob", "both")]).await;
    carol2_in.expect(&[whispered("lobby", "bob", "both")]).await;
    // A delivered it to carol's second connection: alice, beside her, got nothing.
    nothing_more_here(a, &mut alice_in, id_of(&alice)).await;
    // A whisper to a user connected nowhere is refused after asking every server.
    assert_eq!(whisper(&alice, "zed", "?").await, Err(Code::NotFound));

    // all: dave leaves, everyone still in the room hears it, on every server.
    dave.leave().await.expect("leave");
    for inbox in [&mut alice_in, &mut bob_in, &mut carol_in, &mut carol2_in] {
        inbox.expect(&[left("lobby", "dave")]).await;
    }
    // all, from a handle of a server with one member (carol) of the room.
    let m = message("lobby", "system", "everyone");
    c.handle
        .group("lobby")
        .expect("group")
        .on_message(m.clone())
        .await
        .expect("push");
    for inbox in [&mut alice_in, &mut bob_in, &mut carol_in, &mut carol2_in] {
        inbox.expect(&[Seen::Message(m.clone())]).await;
    }
    // B delivered it to bob: dave, who left, got nothing of it.
    nothing_more_here(b, &mut dave_in, id_of(&dave)).await;

    let members = alice.members().await.expect("members");
    assert_eq!(members.members, ["alice", "bob", "carol", "carol"]);
    assert_eq!(members.count, 4);

    // Nothing else went through the room from any server.
    for server in [a, b, c] {
        nothing_more_via(
            server,
            "lobby",
            &mut [&mut alice_in, &mut bob_in, &mut carol_in, &mut carol2_in],
        )
        .await;
    }
}

/// Member counts, member lists and a user's connection counts add up the members of
/// every server, on every server: several members per server, a user with
/// connections on two servers, a room on one server only, a room nobody is in.
pub async fn counts_and_member_lists_cover_every_server<T: Topology>(t: T) {
    let s = servers(&t, 3).await;
    let (a, b, c) = (&s[0], &s[1], &s[2]);
    let (alice, _) = member(a, "lobby", "alice").await;
    let (ben1, _) = member(a, "lobby", "ben").await;
    let (bob, _) = member(b, "lobby", "bob").await;
    let (bea, _) = member(b, "lobby", "bea").await;
    let (ben2, _) = member(c, "lobby", "ben").await;
    let (carol, _) = member(c, "garden", "carol").await;
    let all = [a, b, c];
    counts_become(&all, "lobby", 5).await;

    assert_counts(
        &all,
        "lobby",
        5,
        &[("ben", 2), ("bea", 1), ("carol", 1), ("nobody", 0)],
    )
    .await;
    assert_counts(&all, "garden", 1, &[]).await;
    assert_counts(&all, "empty", 0, &[]).await;
    let lobby = sorted(vec![
        info(&alice, "alice"),
        info(&ben1, "ben"),
        info(&bob, "bob"),
        info(&bea, "bea"),
        info(&ben2, "ben"),
    ]);
    for (i, server) in all.iter().enumerate() {
        assert_eq!(member_list(server, "lobby").await, lobby, "server {i}");
        assert_eq!(
            member_list(server, "garden").await,
            [info(&carol, "carol")],
            "server {i}"
        );
        assert_eq!(member_list(server, "empty").await, [], "server {i}");
    }
    // And through the hub, from a client.
    let members = alice.members().await.expect("members");
    assert_eq!(members.members, ["alice", "bea", "ben", "ben", "bob"]);
    assert_eq!(members.count, 5);
    let members = carol.members().await.expect("members");
    assert_eq!((members.count, members.members), (1, vec!["carol".into()]));
}

/// A member who leaves hears nothing more of the room and is no longer counted; back
/// in, he is delivered to again. A client that goes away without leaving is
/// announced to the others (`on_leave`), its user has no connection left (a whisper
/// is `NOT_FOUND`). A server whose last member of a room goes away (disconnects, or
/// leaves) stops receiving the room's traffic.
pub async fn leave_and_disconnect_stop_deliveries_and_fix_counts<T: Topology>(t: T) {
    let s = servers(&t, 3).await;
    let (a, b, c) = (&s[0], &s[1], &s[2]);
    let all = [a, b, c];
    let (alice, mut alice_in) = member(a, "lobby", "alice").await;
    let (bob, mut bob_in) = member(b, "lobby", "bob").await;
    alice_in.expect(&[join_notice("lobby", "bob")]).await;
    let (carol, mut carol_in) = member(b, "lobby", "carol").await;
    alice_in.expect(&[join_notice("lobby", "carol")]).await;
    bob_in.expect(&[join_notice("lobby", "carol")]).await;
    let (cy, mut cy_in) = member(c, "lobby", "cy").await;
    for inbox in [&mut alice_in, &mut bob_in, &mut carol_in] {
        inbox.expect(&[join_notice("lobby", "cy")]).await;
    }
    // Ivy stays on C in no room, so that C can be reached once cy is gone.
    let (ivy, mut ivy_in) = loner(c, "ivy").await;
    counts_become(&all, "lobby", 4).await;

    // Bob leaves: everyone else hears it, the counts drop.
    bob.leave().await.expect("leave");
    for inbox in [&mut alice_in, &mut carol_in, &mut cy_in] {
        inbox.expect(&[left("lobby", "bob")]).await;
    }
    assert_counts(&all, "lobby", 3, &[("bob", 1)]).await;
    // He hears nothing more: B got alice's say (carol did), and bob nothing of it.
    say(&alice, "after bob").await;
    carol_in
        .expect(&[said("lobby", "alice", "after bob")])
        .await;
    cy_in.expect(&[said("lobby", "alice", "after bob")]).await;
    nothing_more_here(b, &mut bob_in, id_of(&bob)).await;

    // Back in: delivered to again.
    bob.join(JoinRequest {
        room: "lobby".into(),
    })
    .await
    .expect("join again");
    for inbox in [&mut alice_in, &mut carol_in, &mut cy_in] {
        inbox.expect(&[join_notice("lobby", "bob")]).await;
    }
    say(&alice, "welcome back").await;
    for inbox in [&mut bob_in, &mut carol_in, &mut cy_in] {
        inbox
            .expect(&[said("lobby", "alice", "welcome back")])
            .await;
    }
    assert_counts(&all, "lobby", 4, &[]).await;

    // Carol goes away without leaving: the others are told, she is counted nowhere.
    drop(carol);
    for inbox in [&mut alice_in, &mut bob_in, &mut cy_in] {
        inbox.expect(&[left("lobby", "carol")]).await;
    }
    assert_counts(&all, "lobby", 3, &[("carol", 0)]).await;
    assert_eq!(
        whisper(&alice, "carol", "there?").await,
        Err(Code::NotFound)
    );

    // Cy goes away too: C has no member of the room left.
    drop(cy);
    alice_in.expect(&[left("lobby", "cy")]).await;
    bob_in.expect(&[left("lobby", "cy")]).await;
    assert_counts(&all, "lobby", 2, &[("cy", 0), ("ivy", 1)]).await;
    let received = c.handle.metrics().backplane_received;
    say(&alice, "bye cy").await;
    bob_in.expect(&[said("lobby", "alice", "bye cy")]).await;
    not_received_after(a, c, received, &mut ivy_in, id_of(&ivy)).await;

    let members = alice.members().await.expect("members");
    assert_eq!(members.members, ["alice", "bob"]);
    assert_eq!(members.count, 2);
    // Nothing else came through the room, from either server with members.
    for server in [a, b] {
        nothing_more_via(server, "lobby", &mut [&mut alice_in, &mut bob_in]).await;
    }

    // Bob, now B's last member of the room, leaves: B stops receiving it too.
    bob.leave().await.expect("leave");
    alice_in.expect(&[left("lobby", "bob")]).await;
    assert_counts(&all, "lobby", 1, &[("bob", 1)]).await;
    let received = b.handle.metrics().backplane_received;
    say(&alice, "alone").await;
    not_received_after(a, b, received, &mut bob_in, id_of(&bob)).await;
    for (i, server) in all.iter().enumerate() {
        assert_eq!(
            server.handle.metrics().backplane_errors,
            0,
            "server {i}: {:?}",
            server.handle.metrics()
        );
    }
}

/// A room whose members are all on one server: its pushes (a say, a handle push)
/// reach its members there and nobody else, on that server or any other, and the
/// other servers do not even receive them.
pub async fn a_push_to_a_group_without_remote_members_reaches_no_other_server<T: Topology>(t: T) {
    let s = servers(&t, 3).await;
    let (a, b, c) = (&s[0], &s[1], &s[2]);
    let (alice, mut alice_in) = member(a, "solo", "alice").await;
    let (_al, mut al_in) = member(a, "solo", "al").await;
    alice_in.expect(&[join_notice("solo", "al")]).await;
    let (ann, mut ann_in) = member(a, "lobby", "ann").await;
    let (bob, mut bob_in) = member(b, "lobby", "bob").await;
    ann_in.expect(&[join_notice("lobby", "bob")]).await;
    let (carol, mut carol_in) = member(c, "lobby", "carol").await;
    ann_in.expect(&[join_notice("lobby", "carol")]).await;
    bob_in.expect(&[join_notice("lobby", "carol")]).await;
    counts_become(&[a, b, c], "solo", 2).await;
    let received = [
        b.handle.metrics().backplane_received,
        c.handle.metrics().backplane_received,
    ];

    say(&alice, "just us").await;
    al_in.expect(&[said("solo", "alice", "just us")]).await;
    let m = message("solo", "system", "solo push");
    a.handle
        .group("solo")
        .expect("group")
        .on_message(m.clone())
        .await
        .expect("push");
    alice_in.expect(&[Seen::Message(m.clone())]).await;
    al_in.expect(&[Seen::Message(m)]).await;
    // On A, ann (in another room) got nothing of it.
    nothing_more_here(a, &mut ann_in, id_of(&ann)).await;
    // B and C did not even receive them.
    not_received_after(a, b, received[0], &mut bob_in, id_of(&bob)).await;
    not_received_after(a, c, received[1], &mut carol_in, id_of(&carol)).await;
    // Still counted everywhere, though.
    assert_counts(&[a, b, c], "solo", 2, &[]).await;
}

/// Pushes from one sender to one room arrive at every member, on every server, in
/// the order sent, each exactly once, while other senders push to the same room at
/// the same time: two clients on two servers and a server's handle on a third.
pub async fn pushes_from_one_sender_arrive_in_order_exactly_once<T: Topology>(t: T) {
    const N: usize = 100;
    let s = servers(&t, 3).await;
    let (a, b, c) = (&s[0], &s[1], &s[2]);
    let (alice, mut alice_in) = member(a, "lobby", "alice").await;
    let (bob, mut bob_in) = member(b, "lobby", "bob").await;
    alice_in.expect(&[join_notice("lobby", "bob")]).await;
    let (carol, mut carol_in) = member(c, "lobby", "carol").await;
    alice_in.expect(&[join_notice("lobby", "carol")]).await;
    bob_in.expect(&[join_notice("lobby", "carol")]).await;
    let (cy, mut cy_in) = member(c, "lobby", "cy").await;
    for inbox in [&mut alice_in, &mut bob_in, &mut carol_in] {
        inbox.expect(&[join_notice("lobby", "cy")]).await;
    }

    let talk = async |who: &ChatHubClient, name: &str| {
        for i in 0..N {
            say(who, &format!("{name}{i}")).await;
        }
        say(who, &format!("{name} end")).await;
    };
    let handle = async {
        for i in 0..N {
            c.handle
                .group("lobby")
                .expect("group")
                .on_message(message("lobby", "system", &format!("system{i}")))
                .await
                .expect("push");
        }
        c.handle
            .group("lobby")
            .expect("group")
            .on_message(message("lobby", "system", "system end"))
            .await
            .expect("push");
    };
    tokio::join!(talk(&alice, "alice"), talk(&bob, "bob"), handle);

    let senders = ["alice", "bob", "system"];
    let on = [
        (a, id_of(&alice)),
        (b, id_of(&bob)),
        (c, id_of(&carol)),
        (c, id_of(&cy)),
    ];
    for (inbox, (server, conn)) in [&mut alice_in, &mut bob_in, &mut carol_in, &mut cy_in]
        .into_iter()
        .zip(on)
    {
        let others: Vec<&str> = senders
            .iter()
            .copied()
            .filter(|s| *s != inbox.who)
            .collect();
        // Each sender's last push is the barrier for its others.
        let ends: Vec<Seen> = others
            .iter()
            .map(|sender| said("lobby", sender, &format!("{sender} end")))
            .collect();
        inbox.wait_all(&ends).await;
        // And a marker queued on the member's own server now, after every say
        // returned: nothing delivered there before (its own says) is left to come.
        nothing_more_here(server, inbox, conn).await;
        let seen = inbox.all();
        for sender in &others {
            let texts: Vec<String> = seen
                .iter()
                .filter_map(|s| match s {
                    Seen::Message(m) if m.from == *sender => Some(m.text.clone()),
                    _ => None,
                })
                .collect();
            let want: Vec<String> = (0..N)
                .map(|i| format!("{sender}{i}"))
                .chain([format!("{sender} end")])
                .collect();
            assert_eq!(texts, want, "{}: the pushes from {sender}", inbox.who);
        }
        let from_self = seen
            .iter()
            .filter(|s| matches!(s, Seen::Message(m) if m.from == inbox.who))
            .count();
        assert_eq!(from_self, 0, "{} got its own says back", inbox.who);
    }
}

/// A backplane whose leaves take a while (a loaded one), to show the order of a
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
        member: &'a MemberInfo,
        first: bool,
    ) -> Option<hub_core::BoxFuture<'a, Result<(), hub_core::GroupError>>> {
        self.0.joined(group, member, first)
    }
    fn left<'a>(
        &'a self,
        group: &'a hub_core::GroupName,
        member: &'a MemberInfo,
        last: bool,
    ) -> Option<hub_core::BoxFuture<'a, Result<(), hub_core::GroupError>>> {
        Some(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
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
    fn max_frame_bytes(&self) -> Option<usize> {
        self.0.max_frame_bytes()
    }
    fn members<'a>(
        &'a self,
        group: &'a hub_core::GroupName,
    ) -> Option<hub_core::BoxFuture<'a, Result<Vec<MemberInfo>, hub_core::GroupError>>> {
        self.0.members(group)
    }
    fn shutdown(&self) -> Option<hub_core::BoxFuture<'_, ()>> {
        self.0.shutdown()
    }
}

/// A members call made right after `on_leave` arrives never lists the leaver, even
/// when the leave takes a while to reach the backplane (300 ms here): the removal
/// comes first, then the notice.
pub async fn members_right_after_on_leave_do_not_list_the_leaver<T: Topology>(t: T) {
    let a = TestServer::start(t.provider(0).await, HubConfig::default()).await;
    let b = TestServer::start(
        Arc::new(SlowLeaves(t.provider(1).await)),
        HubConfig::default(),
    )
    .await;
    let (alice, mut alice_in) = member(&a, "lobby", "alice").await;
    let (bob, _) = member(&b, "lobby", "bob").await;
    alice_in.expect(&[join_notice("lobby", "bob")]).await;
    drop(bob);
    alice_in.expect(&[left("lobby", "bob")]).await;
    assert_eq!(alice.members().await.expect("members").members, ["alice"]);
}

// ---------------------------------------------------------------------------------
// Cases of a capability.

/// A crashed server (every task stopped at once, nothing cleaned up) stops counting
/// within the topology's presence expiry: counts, member lists and a user's
/// connection count drop its members on every other server, and every other member
/// of their rooms gets one `on_leave` per lost member (the chat hub's
/// `on_members_lost`), after the member lists stopped listing them. The others still
/// talk.
pub async fn a_crashed_servers_members_expire_and_are_reported_once<T: Topology>(t: T) {
    let a = TestServer::start(t.provider(0).await, HubConfig::default()).await;
    let c = TestServer::start(t.provider(2).await, HubConfig::default()).await;
    let provider = t.provider(1);
    let b = CrashableServer::start(move || provider, HubConfig::default()).await;
    let (alice, mut alice_in) = member(&a, "lobby", "alice").await;
    let (carol, mut carol_in) = member(&c, "lobby", "carol").await;
    alice_in.expect(&[join_notice("lobby", "carol")]).await;
    let (_bob, _) = member(&b, "lobby", "bob").await;
    alice_in.expect(&[join_notice("lobby", "bob")]).await;
    carol_in.expect(&[join_notice("lobby", "bob")]).await;
    // Ben is alone in his room; bob has a second connection, on C, in no room.
    let (_ben, _) = member(&b, "hall", "ben").await;
    let (_bob2, _) = loner(&c, "bob").await;
    let survivors = [&a, &c];
    counts_become(&survivors, "lobby", 3).await;
    assert_counts(&survivors, "hall", 1, &[("bob", 2), ("ben", 1)]).await;

    b.crash();
    let crashed = Instant::now();
    alice_in.expect(&[left("lobby", "bob")]).await;
    let took = crashed.elapsed();
    // Listed no more by the time the notice arrives.
    assert_eq!(
        alice.members().await.expect("members").members,
        ["alice", "carol"]
    );
    carol_in.expect(&[left("lobby", "bob")]).await;
    let bound = t.presence_expiry() + Duration::from_secs(5);
    assert!(
        took < bound,
        "{}: on_leave for a crashed server's member after {took:?}, bound {bound:?}",
        T::NAME
    );
    assert_counts(&survivors, "lobby", 2, &[("bob", 1), ("ben", 0)]).await;
    assert_counts(&survivors, "hall", 0, &[]).await;
    for (i, server) in survivors.iter().enumerate() {
        let list = member_list(server, "lobby").await;
        assert_eq!(
            list,
            sorted(vec![info(&alice, "alice"), info(&carol, "carol")]),
            "{i}"
        );
    }

    // Once: carol says something, and alice got nothing else before it.
    say(&carol, "still here").await;
    alice_in
        .expect(&[said("lobby", "carol", "still here")])
        .await;
    nothing_more_via(&a, "lobby", &mut [&mut alice_in, &mut carol_in]).await;
    nothing_more_via(&c, "lobby", &mut [&mut alice_in, &mut carol_in]).await;
    // A reported bob (lobby); C reported bob twice: in the lobby and as a user
    // (bob's second connection there is in his user's group).
    assert_eq!(a.handle.metrics().backplane_members_lost, 1);
    assert_eq!(c.handle.metrics().backplane_members_lost, 2);
    println!(
        "{}: on_leave for a crashed server's member after {took:?} (presence expiry {:?})",
        T::NAME,
        t.presence_expiry()
    );
}

/// The whole backplane dies and comes back while a member talks: every say is
/// answered (none hangs), those made while the backplane is down fail with
/// `UNAVAILABLE`, and none of those arrives; member queries fail with `UNAVAILABLE`
/// rather than answer wrong. Once it is back, the servers reconnect and resubscribe on
/// their own: traffic flows both ways, counts are whole, new members join; what
/// arrived is in order, without duplicates, and nobody was reported lost.
pub async fn a_backplane_restart_in_the_middle_of_traffic<T: Topology>(mut t: T) {
    let s = servers(&t, 2).await;
    let (a, b) = (&s[0], &s[1]);
    let (alice, mut alice_in) = member(a, "lobby", "alice").await;
    let (bob, mut bob_in) = member(b, "lobby", "bob").await;
    alice_in.expect(&[join_notice("lobby", "bob")]).await;

    let talker = Talker::start(alice);
    bob_in
        .until("a first say", |s| matches!(s, Seen::Message(_)))
        .await;
    t.kill_backplane();
    test_support::eventually("three says failed", WAIT, async || talker.failures() >= 3).await;
    // While it is down: member queries and a push from a handle fail, quickly.
    let started = Instant::now();
    let members = tokio::time::timeout(CALL_BOUND, bob.members())
        .await
        .expect("a members call while the backplane is down returns");
    assert_eq!(
        members.as_ref().map_err(|e| e.code()).err(),
        Some(Code::Unavailable),
        "{members:?} after {:?}",
        started.elapsed()
    );
    let push = tokio::time::timeout(
        CALL_BOUND,
        b.handle.group("lobby").expect("group").on_message(message(
            "lobby",
            "system",
            "while down",
        )),
    )
    .await
    .expect("a push while the backplane is down returns");
    assert!(push.is_err(), "{push:?}");
    t.restart_backplane();
    let restarted_at = talker.outcomes().len() as u64;

    // Flowing again, without restarting either hub server.
    bob_in
        .until("a say sent after the restart", |s| {
            said_after(s, "alice", restarted_at)
        })
        .await;
    let (alice, outcomes) = talker.stop().await;
    say(&alice, "last").await;
    bob_in
        .until("the last say", |s| *s == said("lobby", "alice", "last"))
        .await;
    check_outage(&outcomes, &numbers(&bob_in.all(), "alice"));
    let failed = outcomes.iter().filter(|(_, r, _)| r.is_err()).count() as u64;
    assert!(a.handle.metrics().backplane_publish_failures >= failed);

    // Both resubscribed: bob's say reaches alice, the next push she gets.
    test_support::eventually("both servers reconnected", WAIT, async || {
        a.handle.metrics().backplane_reconnects >= 1 && b.handle.metrics().backplane_reconnects >= 1
    })
    .await;
    counts_become(&[a, b], "lobby", 2).await;
    // A may resubscribe a moment after B: bob says until one reaches alice.
    let deadline = Instant::now() + WAIT;
    for i in 0.. {
        assert!(Instant::now() < deadline, "bob's says do not reach alice");
        say(&bob, &format!("back {i}")).await;
        let got = alice_in
            .rx
            .wait_for(alice_in.read + 1, Duration::from_millis(300))
            .await;
        if got.len() > alice_in.read {
            break;
        }
    }
    let m = marker("");
    b.handle
        .group("lobby")
        .expect("group")
        .only([id_of(&alice)])
        .on_message(m.clone())
        .await
        .expect("push");
    // Through the lobby from B, after bob's says: alice got those and nothing else.
    let got = alice_in
        .until("B's marker", |s| *s == Seen::Message(m.clone()))
        .await;
    assert!(
        !got.is_empty()
            && got.iter().all(
                |s| matches!(s, Seen::Message(m) if m.from == "bob" && m.text.starts_with("back "))
            ),
        "{got:?}"
    );
    // New members join, on either server, and are counted everywhere.
    let (_dan, _) = member(b, "lobby", "dan").await;
    alice_in.expect(&[join_notice("lobby", "dan")]).await;
    assert_counts(&[a, b], "lobby", 3, &[]).await;
    // The outage was not a crash of either server: nobody was reported lost.
    nothing_more_via(a, "lobby", &mut [&mut alice_in]).await;
    for (i, server) in s.iter().enumerate() {
        assert_eq!(
            server.handle.metrics().backplane_members_lost,
            0,
            "server {i}"
        );
    }
    assert!(
        !bob_in.all().iter().any(|s| matches!(s, Seen::Leave(_))),
        "{:?}",
        bob_in.all()
    );
}

/// The whole backplane stalls (processes stopped, connections open, nothing
/// answered) for as long as the topology tolerates while a member talks: every call
/// comes back within [`CALL_BOUND`] (a say with OK or `UNAVAILABLE`, a member list
/// with the right members or `UNAVAILABLE`, never a wrong list); once it answers
/// again, traffic flows, in order and without duplicates, counts are whole, and
/// nobody was presumed dead for the silence.
pub async fn a_backplane_stall_hangs_nothing_and_kills_nobody<T: Topology>(t: T) {
    let s = servers(&t, 2).await;
    let (a, b) = (&s[0], &s[1]);
    let (alice, mut alice_in) = member(a, "lobby", "alice").await;
    let (_ann, _) = member(a, "lobby", "ann").await;
    let (bob, mut bob_in) = member(b, "lobby", "bob").await;
    let (_bea, _) = member(b, "lobby", "bea").await;
    counts_become(&[a, b], "lobby", 4).await;
    let everyone = ["alice", "ann", "bea", "bob"];

    let talker = Talker::start(alice);
    bob_in
        .until(
            "a first say",
            |s| matches!(s, Seen::Message(m) if m.from == "alice"),
        )
        .await;
    let stall = t.tolerated_stall();
    let paused = t.pause_backplane();
    let stalled = Instant::now();
    let members = tokio::time::timeout(CALL_BOUND, bob.members())
        .await
        .expect("a members call during the stall returns");
    match &members {
        Ok(m) => assert_eq!(m.members, everyone, "a wrong list during the stall"),
        Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e}"),
    }
    // A wait for time to pass: the stall lasts as long as the topology tolerates.
    tokio::time::sleep_until(stalled + stall).await;
    drop(paused);
    let resumed_at = talker.outcomes().len() as u64;
    println!(
        "{}: members during a stall of {stall:?} -> {:?}",
        T::NAME,
        members.as_ref().map(|m| m.count).map_err(|e| e.code())
    );

    bob_in
        .until("a say sent after the stall", |s| {
            said_after(s, "alice", resumed_at)
        })
        .await;
    let (_alice, outcomes) = talker.stop().await;
    assert_bounded(&outcomes);
    counts_become(&[a, b], "lobby", 4).await;
    assert_eq!(
        bob.members()
            .await
            .expect("members after the stall")
            .members,
        everyone
    );
    // Nobody presumed dead: no leave notice, no member reported lost.
    read_past_a_marker_from(a, &mut bob_in).await;
    read_past_a_marker_from(b, &mut alice_in).await;
    for inbox in [&alice_in, &bob_in] {
        let got = inbox.all();
        assert!(!got.iter().any(|s| matches!(s, Seen::Leave(_))), "{got:?}");
        let said = numbers(&got, "alice");
        assert!(said.windows(2).all(|w| w[0] < w[1]), "{said:?}");
    }
    for (i, server) in s.iter().enumerate() {
        assert_eq!(
            server.handle.metrics().backplane_members_lost,
            0,
            "server {i}"
        );
    }
}

/// Pushes a marker from `server` to the lobby and reads `inbox` past it, whatever
/// came before.
async fn read_past_a_marker_from(server: &TestServer, inbox: &mut Inbox) {
    let m = marker("lobby");
    server
        .handle
        .group("lobby")
        .expect("a room")
        .on_message(m.clone())
        .await
        .expect("push a marker");
    let m = Seen::Message(m);
    inbox.until("the marker", |s| *s == m).await;
}

/// The backplane node one hub server is connected to dies: that server fails over to
/// another node and resubscribes on its own, while its member talks: every say is
/// answered (none hangs), those that fail fail with `UNAVAILABLE` and do not arrive,
/// what arrives is in order. Then it is reachable again, counts are whole, and the
/// other servers never noticed.
pub async fn a_failed_backplane_node_is_survived<T: Topology>(mut t: T) {
    let s = servers(&t, 3).await;
    let (a, b, c) = (&s[0], &s[1], &s[2]);
    let (alice, mut alice_in) = member(a, "lobby", "alice").await;
    let (bob, mut bob_in) = member(b, "lobby", "bob").await;
    alice_in.expect(&[join_notice("lobby", "bob")]).await;
    let (carol, mut carol_in) = member(c, "lobby", "carol").await;
    alice_in.expect(&[join_notice("lobby", "carol")]).await;
    bob_in.expect(&[join_notice("lobby", "carol")]).await;
    counts_become(&[a, b, c], "lobby", 3).await;
    say(&alice, "before").await;
    bob_in.expect(&[said("lobby", "alice", "before")]).await;
    carol_in.expect(&[said("lobby", "alice", "before")]).await;
    assert_eq!(whisper(&carol, "bob", "psst").await, Ok(()));
    bob_in.expect(&[whispered("lobby", "carol", "psst")]).await;

    // Bob talks all along; his server's node dies.
    let talker = Talker::start(bob);
    alice_in
        .until("a first say", |s| matches!(s, Seen::Message(_)))
        .await;
    t.kill_node_of(1);
    test_support::eventually("B failed over", WAIT * 2, async || {
        b.handle.metrics().backplane_reconnects >= 1
    })
    .await;
    let reconnected_at = talker.outcomes().len() as u64;
    alice_in
        .until("a say of bob's after the failover", |s| {
            said_after(s, "bob", reconnected_at)
        })
        .await;
    let (bob, outcomes) = talker.stop().await;
    assert_bounded(&outcomes);
    say(&bob, "I'm back").await;
    for inbox in [&mut alice_in, &mut carol_in] {
        inbox
            .until("bob's last say", |s| *s == said("lobby", "bob", "I'm back"))
            .await;
        let got = numbers(&inbox.all(), "bob");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        for (i, r, _) in &outcomes {
            if r.is_err() {
                assert!(!got.contains(i), "m{i} was reported failed yet arrived");
            }
        }
    }
    // Bob is reachable again: a say and a whisper to him arrive.
    say(&alice, "after").await;
    bob_in
        .until("a say after the failover", |s| {
            *s == said("lobby", "alice", "after")
        })
        .await;
    assert_eq!(whisper(&carol, "bob", "again").await, Ok(()));
    bob_in.expect(&[whispered("lobby", "carol", "again")]).await;
    counts_become(&[a, b, c], "lobby", 3).await;
    for (i, server) in s.iter().enumerate() {
        assert_eq!(
            server.handle.metrics().backplane_members_lost,
            0,
            "server {i}"
        );
    }
    assert_eq!(a.handle.metrics().backplane_reconnects, 0);
    assert_eq!(c.handle.metrics().backplane_reconnects, 0);
}
