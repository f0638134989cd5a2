//! Which other hub servers are alive, from their heartbeats.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

/// A server presumed dead after this many of its heartbeat intervals of silence.
pub(crate) const MISSED_BEATS: u32 = 3;

/// The shortest and longest heartbeat interval a peer may announce (a bogus value
/// must not make it immortal or make it flap).
const MIN_INTERVAL: Duration = Duration::from_millis(50);
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// One other server.
#[derive(Debug, Clone, Copy)]
struct Peer {
    /// When we last heard from it (heartbeat or roll-call answer).
    last_seen: Instant,
    /// Its own heartbeat interval, from its heartbeats.
    interval: Duration,
}

impl Peer {
    fn dead_at(&self) -> Instant {
        self.last_seen + self.interval * MISSED_BEATS
    }
}

/// The other servers of one hub that beat recently, and whether we may trust the list yet.
#[derive(Debug)]
pub(crate) struct Peers {
    /// This server's node id (never listed).
    me: String,
    /// Node id → what we know.
    nodes: HashMap<String, Peer>,
    /// Until then the list may be incomplete (we just connected and sent a hello):
    /// a roll call then waits its whole deadline instead of stopping early.
    warm_until: Instant,
    /// The interval assumed for a server we heard from without a heartbeat.
    default_interval: Duration,
    /// Servers found silent at the last check: presumed dead only if still silent at
    /// the next one (see [`Peers::expire`]).
    suspects: HashSet<String>,
}

impl Peers {
    /// An empty list, warming up until `warm_until`.
    pub(crate) fn new(me: String, default_interval: Duration, warm_until: Instant) -> Self {
        Peers {
            me,
            nodes: HashMap::new(),
            warm_until,
            default_interval,
            suspects: HashSet::new(),
        }
    }

    /// A heartbeat (or hello) from `node`, beating every `interval`. Returns whether it is new.
    pub(crate) fn beat(&mut self, node: &str, interval: Duration, now: Instant) -> bool {
        if node == self.me {
            return false;
        }
        let peer = Peer {
            last_seen: now,
            interval: interval.clamp(MIN_INTERVAL, MAX_INTERVAL),
        };
        self.suspects.remove(node);
        self.nodes.insert(node.to_owned(), peer).is_none()
    }

    /// `node` answered something: it is alive (keeps its known interval).
    pub(crate) fn seen(&mut self, node: &str, now: Instant) {
        if node == self.me {
            return;
        }
        let default = self.default_interval;
        self.suspects.remove(node);
        self.nodes
            .entry(node.to_owned())
            .and_modify(|p| p.last_seen = now)
            .or_insert(Peer {
                last_seen: now,
                interval: default,
            });
    }

    /// Whether `node` is listed: it beat or answered, and is not presumed dead yet.
    pub(crate) fn listed(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// `node` said goodbye. Returns whether it was listed.
    pub(crate) fn gone(&mut self, node: &str) -> bool {
        self.nodes.remove(node).is_some()
    }

    /// Drops the servers silent for [`MISSED_BEATS`] intervals at this check and at
    /// the one before (both made after NATS answered our own probe); returns their
    /// ids. The second check is what tells a dead server from one whose heartbeats
    /// are still on their way after a stall of the backplane: in a cluster our own
    /// node can answer us before the other nodes' traffic comes through the routes.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, p)| p.dead_at() <= now)
            .map(|(n, _)| n.clone())
            .collect();
        let (dead, suspects): (Vec<String>, Vec<String>) =
            due.into_iter().partition(|n| self.suspects.contains(n));
        for n in &dead {
            self.nodes.remove(n);
        }
        self.suspects = suspects.into_iter().collect();
        dead
    }

    /// Whether a server is silent long enough to be presumed dead.
    pub(crate) fn any_due(&self, now: Instant) -> bool {
        self.nodes.values().any(|p| p.dead_at() <= now)
    }

    /// Treats every server as heard from now: after our own silence (a stalled or
    /// lost NATS connection), the others get their full grace period again.
    pub(crate) fn grace(&mut self, now: Instant) {
        for p in self.nodes.values_mut() {
            p.last_seen = p.last_seen.max(now);
        }
        self.suspects.clear();
    }

    /// Restarts the warm-up (after a reconnect).
    pub(crate) fn warm_up(&mut self, until: Instant) {
        self.warm_until = self.warm_until.max(until);
    }

    /// The servers a roll call should wait for, and whether the list may be incomplete.
    pub(crate) fn expected(&self, now: Instant) -> (Vec<String>, bool) {
        let live = self
            .nodes
            .iter()
            .filter(|(_, p)| p.dead_at() > now)
            .map(|(n, _)| n.clone())
            .collect();
        (live, now < self.warm_until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEAT: Duration = Duration::from_secs(2);

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn a_silent_server_dies_after_three_intervals() {
        let t0 = Instant::now();
        let mut p = Peers::new("me".into(), BEAT, t0);
        assert!(p.beat("a", BEAT, t0));
        assert!(!p.beat("a", BEAT, t0));
        p.beat("b", BEAT, t0);
        p.beat("me", BEAT, t0);
        assert_eq!(sorted(p.expected(t0).0), vec!["a", "b"]);

        // "a" keeps beating, "b" falls silent.
        let t1 = t0 + BEAT * 2;
        p.beat("a", BEAT, t1);
        assert!(p.expire(t1).is_empty());
        let t2 = t0 + BEAT * 3;
        assert_eq!(
            p.expected(t2).0,
            vec!["a"],
            "b no longer expected once 3 beats are missed"
        );
        // Silent at one check: suspected; still silent at the next: dead.
        assert!(p.expire(t2).is_empty());
        let t3 = t2 + BEAT;
        p.beat("a", BEAT, t3);
        assert_eq!(p.expire(t3), vec!["b".to_string()]);
        assert_eq!(p.expected(t3).0, vec!["a"]);
    }

    #[test]
    fn a_heartbeat_after_one_silent_check_clears_the_suspicion() {
        // After a stall, our own probe may be answered before the others' heartbeats
        // come through: one check finds "a" silent, its beat arrives before the next.
        let t0 = Instant::now();
        let mut p = Peers::new("me".into(), BEAT, t0);
        p.beat("a", BEAT, t0);
        let stalled = t0 + BEAT * 5;
        assert!(p.expire(stalled).is_empty());
        p.beat("a", BEAT, stalled + BEAT / 10);
        assert!(p.expire(stalled + BEAT).is_empty());
        // Silent again later: suspected afresh, not dead at once.
        let again = stalled + BEAT * 5;
        assert!(p.expire(again).is_empty());
        assert_eq!(p.expire(again + BEAT), vec!["a".to_string()]);
    }

    #[test]
    fn goodbye_and_answers() {
        let t0 = Instant::now();
        let mut p = Peers::new("me".into(), BEAT, t0);
        p.beat("a", Duration::from_millis(100), t0);
        assert!(p.gone("a"));
        assert!(!p.gone("a"));
        p.seen("c", t0);
        assert_eq!(p.expected(t0).0, vec!["c"]);
        assert!(p.expire(t0 + BEAT * 3).is_empty());
        assert_eq!(p.expire(t0 + BEAT * 4), vec!["c".to_string()]);
    }

    #[test]
    fn bogus_intervals_are_clamped() {
        let t0 = Instant::now();
        let mut p = Peers::new("me".into(), BEAT, t0);
        p.beat("zero", Duration::ZERO, t0);
        p.beat("huge", Duration::from_secs(86_400), t0);
        let later = t0 + MAX_INTERVAL * MISSED_BEATS;
        assert_eq!(sorted(p.expire(t0 + BEAT * 3)), Vec::<String>::new());
        assert_eq!(sorted(p.expire(t0 + BEAT * 4)), vec!["zero"]);
        assert!(p.expire(later).is_empty());
        assert_eq!(sorted(p.expire(later + BEAT)), vec!["huge"]);
    }

    #[test]
    fn our_own_silence_gives_everyone_a_grace_period() {
        let t0 = Instant::now();
        let mut p = Peers::new("me".into(), BEAT, t0);
        p.beat("a", BEAT, t0);
        let late = t0 + BEAT * 4;
        assert!(p.any_due(late));
        p.grace(late);
        assert!(!p.any_due(late));
        assert!(p.expire(late + BEAT).is_empty());
        assert!(p.expire(late + BEAT * 3).is_empty());
        assert_eq!(p.expire(late + BEAT * 4), vec!["a".to_string()]);
    }

    #[test]
    fn warm_up_window() {
        let t0 = Instant::now();
        let mut p = Peers::new("me".into(), BEAT, t0 + BEAT);
        assert!(p.expected(t0).1);
        assert!(!p.expected(t0 + BEAT).1);
        p.warm_up(t0 + BEAT * 2);
        assert!(p.expected(t0 + BEAT).1);
    }
}
