//! A group's history: the envelopes a backplane kept of a group's recent pushes,
//! numbered by the group's offsets, read back by offset.
//!
//! A backplane that numbers group pushes (Redis with `group_offsets`) can also keep
//! them (the `history` method of the relay module's `Transport`). The
//! [`crate::remote::Inbox`] reads it to fill a gap it sees in a group's offsets (a
//! pub/sub message dropped, a subscription that broke and came back) before it
//! delivers anything later of the group; anything the history no longer holds is told
//! to the members (`ServerControl.pushes_lost`).
//! The same read serves anyone who wants a group's pushes after an offset
//! ([`crate::Backplane::history`]), e.g. to replay them to a resumed session.

use bytes::Bytes;

use crate::{BoxFuture, GroupError, GroupName};

/// What to read of a group's history: the entries after offset `after` of epoch
/// `epoch`, at most `limit` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    /// The epoch the offsets belong to (offsets restart under a new epoch when the
    /// broker loses its state).
    pub epoch: u64,
    /// The last offset already seen: entries start after it.
    pub after: u64,
    /// The most entries returned.
    pub limit: usize,
}

/// One envelope of a group's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The group offset it was published with.
    pub offset: u64,
    /// The offset of the group's entry before it (0: none). On a backend whose
    /// offsets are contiguous per group (Redis) `offset - 1`; on one whose offsets are
    /// a sequence shared by all groups (a NATS JetStream stream) the previous
    /// message's of the group. Entries chain: a page is continuous when each entry's
    /// `prev` is the offset before it.
    pub prev: u64,
    /// The `hub.v1.Envelope`, as published (without the offset and epoch in front).
    pub envelope: Bytes,
}

/// What a history read found, read in one atomic step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryPage {
    /// The group's current epoch; 0 if the broker knows nothing of the group.
    pub epoch: u64,
    /// The group's latest offset in that epoch (0: none yet).
    pub latest: u64,
    /// The entries held after the query's offset, in offset order, at most the query's
    /// limit; empty when the epoch is not the query's.
    pub entries: Vec<HistoryEntry>,
}

impl HistoryPage {
    /// Whether the entries are every push of the query's epoch after its offset,
    /// without a hole, up to the last entry: nothing was trimmed or expired before them,
    /// and the epoch is the query's.
    pub fn is_continuous(&self, query: &HistoryQuery) -> bool {
        if self.epoch != query.epoch {
            return false;
        }
        let mut at = query.after;
        for e in &self.entries {
            if e.prev != at || e.offset <= at {
                return false;
            }
            at = e.offset;
        }
        // No entry although some were published after the offset: gone.
        !(self.entries.is_empty() && self.latest > query.after)
    }

    /// Whether the entries are continuous and reach the group's latest offset: the
    /// reader has seen everything published to the group up to the read.
    pub fn is_complete(&self, query: &HistoryQuery) -> bool {
        self.is_continuous(query)
            && self
                .entries
                .last()
                .map_or(self.latest <= query.after, |e| e.offset == self.latest)
    }
}

/// A backplane's store of group history.
pub trait GroupHistory: Send + Sync + 'static {
    /// Reads `group`'s entries after `query.after` in `query.epoch`, within the
    /// backend's own deadline.
    fn read<'a>(
        &'a self,
        group: &'a GroupName,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<HistoryPage, GroupError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(epoch: u64, latest: u64, offsets: &[u64]) -> HistoryPage {
        HistoryPage {
            epoch,
            latest,
            entries: offsets
                .iter()
                .map(|&offset| HistoryEntry {
                    offset,
                    prev: offset - 1,
                    envelope: Bytes::new(),
                })
                .collect(),
        }
    }

    /// Entries of a shared sequence: (offset, prev).
    fn chained(epoch: u64, latest: u64, entries: &[(u64, u64)]) -> HistoryPage {
        HistoryPage {
            epoch,
            latest,
            entries: entries
                .iter()
                .map(|&(offset, prev)| HistoryEntry {
                    offset,
                    prev,
                    envelope: Bytes::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn continuity_of_chained_offsets() {
        let q = HistoryQuery {
            epoch: 7,
            after: 10,
            limit: 10,
        };
        assert!(chained(7, 40, &[(14, 10), (22, 14), (40, 22)]).is_complete(&q));
        // The limit cut it short.
        let short = chained(7, 50, &[(14, 10), (22, 14)]);
        assert!(short.is_continuous(&q) && !short.is_complete(&q));
        // The entry after 10 is gone: the first one chains to something else.
        assert!(!chained(7, 40, &[(22, 14), (40, 22)]).is_continuous(&q));
        // A hole inside.
        assert!(!chained(7, 40, &[(14, 10), (40, 22)]).is_continuous(&q));
        assert!(chained(7, 10, &[]).is_complete(&q));
        assert!(!chained(7, 40, &[]).is_continuous(&q));
    }

    #[test]
    fn continuity_and_completeness() {
        let q = HistoryQuery {
            epoch: 7,
            after: 3,
            limit: 10,
        };
        assert!(page(7, 6, &[4, 5, 6]).is_complete(&q));
        // The limit cut it short: continuous, not complete.
        let short = page(7, 9, &[4, 5, 6]);
        assert!(short.is_continuous(&q) && !short.is_complete(&q));
        // Trimmed before the first entry, or everything gone.
        assert!(!page(7, 6, &[5, 6]).is_continuous(&q));
        assert!(!page(7, 6, &[]).is_continuous(&q));
        // Nothing published since: complete.
        assert!(page(7, 3, &[]).is_complete(&q));
        // Another epoch.
        assert!(!page(8, 3, &[]).is_continuous(&q));
    }
}
