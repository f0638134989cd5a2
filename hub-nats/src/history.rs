//! Group history on JetStream: one stream per hub captures the hub's group subjects
//! and republishes each envelope it stored, with its stream sequence, to a parallel
//! subject space that the servers subscribe to instead.
//!
//! Stream `<prefix>-<hub>-history` (named like the sessions bucket), subjects
//! `<prefix>.<hub>.g.>`, `max_messages_per_subject` = the history's length, `max_age`,
//! direct gets allowed, and RePublish `<prefix>.<hub>.g.>` → `<prefix>.<hub>.h.>`.
//! A republished message carries `Nats-Sequence` (its stream sequence: the group
//! offset) and `Nats-Last-Sequence` (the sequence of the subject's message before it,
//! 0 if none: the previous offset of the group). Offsets are the stream's, shared by
//! every group of the hub, so the inbox sees gaps by the chain
//! ([`Inbox::receive_chained`](hub_core::remote::Inbox::receive_chained)). The epoch
//! is a hash of the stream's creation time: a stream made again (the server lost its
//! store, someone deleted it) numbers under another epoch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use hub_core::history::{GroupHistory, HistoryEntry, HistoryPage, HistoryQuery};
use hub_core::{BoxFuture, GroupError, GroupName};

use crate::BACKPLANE;
use crate::subject::Subjects;

/// The history stream of the hub whose subject prefix is `hub_prefix`:
/// `hub.chat.v1.ChatHub` → `hub-chat-v1-ChatHub-history`.
pub(crate) fn stream_name(hub_prefix: &str) -> String {
    let mut out = crate::sessions::sanitized(hub_prefix);
    out.push_str("-history");
    out
}

fn unavailable(op: &str, e: impl std::fmt::Display) -> GroupError {
    GroupError::Unavailable {
        backplane: BACKPLANE,
        message: format!("{op}: {e}"),
        source: None,
    }
}

/// The epoch of a stream created at `created` (its RFC 3339 text): FNV-1a, within
/// 2^53 - 1 (JSON-safe), never 0.
fn epoch_of(created: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in created.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h & ((1 << 53) - 1)).max(1)
}

/// One hub's group history stream.
#[derive(Debug)]
pub(crate) struct NatsHistory {
    client: async_nats::Client,
    js: jetstream::Context,
    /// The stream's name.
    pub(crate) stream: String,
    subjects: Subjects,
    max_len: usize,
    max_age: Duration,
    op_timeout: Duration,
    /// The stream's epoch once bound; 0: not yet. Kept while a bind again is due
    /// (`stale`): what arrives meanwhile is numbered under the last one known.
    epoch: AtomicU64,
    /// Bind again at the next use (a reconnect, a publish that failed).
    stale: std::sync::atomic::AtomicBool,
    /// Serializes binds.
    binding: tokio::sync::Mutex<()>,
}

/// A message read from the stream: its sequence, subject and data.
struct Stored {
    seq: u64,
    subject: String,
    data: Bytes,
}

impl NatsHistory {
    pub(crate) fn new(
        client: async_nats::Client,
        subjects: Subjects,
        (max_len, max_age): (usize, Duration),
        op_timeout: Duration,
    ) -> Self {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(op_timeout);
        NatsHistory {
            client,
            js,
            stream: stream_name(&subjects.base),
            subjects,
            max_len: max_len.max(1),
            max_age: max_age.max(Duration::from_millis(1)),
            op_timeout,
            epoch: AtomicU64::new(0),
            stale: std::sync::atomic::AtomicBool::new(false),
            binding: tokio::sync::Mutex::new(()),
        }
    }

    /// The epoch the stream was last bound with (0: never bound).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The epoch if bound and not due to bind again.
    fn bound(&self) -> Option<u64> {
        let epoch = self.epoch();
        (epoch != 0 && !self.stale.load(Ordering::Acquire)).then_some(epoch)
    }

    /// Binds again at the next use (after a reconnect: the stream may be new). The
    /// last epoch stays meanwhile.
    pub(crate) fn unbind(&self) {
        self.stale.store(true, Ordering::Release);
    }

    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            description: Some("hub group history (hub.v1.Envelope by group subject)".into()),
            subjects: vec![self.subjects.all_groups()],
            max_messages_per_subject: i64::try_from(self.max_len).unwrap_or(i64::MAX),
            max_age: self.max_age,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            num_replicas: 1,
            republish: Some(stream::Republish {
                source: self.subjects.all_groups(),
                destination: self.subjects.all_republished(),
                headers_only: false,
            }),
            ..Default::default()
        }
    }

    /// The stream, created (or its limits set) if needed; returns its epoch.
    pub(crate) async fn ensure(&self) -> Result<u64, GroupError> {
        if let Some(epoch) = self.bound() {
            return Ok(epoch);
        }
        let _binding = self.binding.lock().await;
        if let Some(epoch) = self.bound() {
            return Ok(epoch);
        }
        let config = self.config();
        let created = hub_core::deadline(BACKPLANE, "history stream", self.op_timeout, async {
            match self.js.create_stream(config.clone()).await {
                Ok(mut s) => Ok(s
                    .info()
                    .await
                    .map(|i| i.created.to_string())
                    .unwrap_or_else(|_| s.cached_info().created.to_string())),
                Err(created) => {
                    // There with other limits: make them ours.
                    let info = self.js.update_stream(config).await.map_err(|e| {
                        unavailable(
                            "history stream",
                            format!("cannot create ({created}) or update ({e}) {}", self.stream),
                        )
                    })?;
                    Ok(info.created.to_string())
                }
            }
        })
        .await?;
        let epoch = epoch_of(&created);
        self.epoch.store(epoch, Ordering::Release);
        self.stale.store(false, Ordering::Release);
        tracing::debug!(stream = %self.stream, epoch, "group history stream bound");
        Ok(epoch)
    }

    /// Publishes one group envelope through the stream, waiting for its ack: `Ok` once
    /// stored (and so republished to the subscribers).
    pub(crate) async fn publish(&self, subject: String, payload: Bytes) -> Result<(), GroupError> {
        self.ensure().await?;
        let result = hub_core::deadline(BACKPLANE, "publish", self.op_timeout, async {
            let ack = self
                .js
                .publish(subject, payload)
                .await
                .map_err(|e| unavailable("publish", e))?;
            ack.await.map_err(|e| unavailable("publish (stored)", e))
        })
        .await;
        if result.is_err() {
            // The stream may be gone (a server that lost its store): bind again.
            self.unbind();
        }
        result.map(|_| ())
    }

    /// A direct get from the stream (`None`: no such message).
    async fn direct(&self, request: serde_json::Value) -> Result<Option<Stored>, GroupError> {
        let subject = format!("$JS.API.DIRECT.GET.{}", self.stream);
        let msg = self
            .client
            .request(subject, Bytes::from(request.to_string()))
            .await
            .map_err(|e| unavailable("history read", e))?;
        if let Some(status) = msg.status
            && status != async_nats::StatusCode::OK
        {
            if status == async_nats::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            return Err(unavailable(
                "history read",
                format!("{status} {}", msg.description.unwrap_or_default()),
            ));
        }
        let headers = msg.headers.as_ref();
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let seq = header("Nats-Sequence")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| unavailable("history read", "a direct get without Nats-Sequence"))?;
        Ok(Some(Stored {
            seq,
            subject: header("Nats-Subject").unwrap_or_default().to_owned(),
            data: msg.payload,
        }))
    }

    /// Reads one page (see [`GroupHistory::read`]).
    async fn read_page(
        &self,
        group: &GroupName,
        query: HistoryQuery,
    ) -> Result<HistoryPage, GroupError> {
        let epoch = self.ensure().await?;
        let subject = self.subjects.group(group.as_str());
        let latest = self
            .direct(serde_json::json!({ "last_by_subj": subject }))
            .await?
            .map_or(0, |m| m.seq);
        let mut page = HistoryPage {
            epoch,
            latest,
            entries: Vec::new(),
        };
        if epoch != query.epoch || latest <= query.after {
            return Ok(page);
        }
        // The first entry follows `after` if that message is still held (or there was
        // none before it): next-by-subject skips nothing of the group that is held,
        // and the stream drops a subject's oldest messages first. Otherwise what
        // came between is unknown: its `prev` is left 0, a hole.
        let mut prev = if query.after == 0 {
            0
        } else {
            match self
                .direct(serde_json::json!({ "seq": query.after }))
                .await?
            {
                Some(m) if m.subject == subject => query.after,
                _ => 0,
            }
        };
        let mut next = query.after + 1;
        while page.entries.len() < query.limit.max(1) && next <= latest {
            let Some(m) = self
                .direct(serde_json::json!({ "seq": next, "next_by_subj": subject }))
                .await?
            else {
                break;
            };
            if m.seq < next {
                break;
            }
            page.entries.push(HistoryEntry {
                offset: m.seq,
                prev,
                envelope: m.data,
            });
            prev = m.seq;
            next = m.seq + 1;
        }
        Ok(page)
    }
}

/// The history as the inbox reads it.
#[derive(Debug, Clone)]
pub(crate) struct History(pub(crate) Arc<NatsHistory>);

impl GroupHistory for History {
    fn read<'a>(
        &'a self,
        group: &'a GroupName,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<HistoryPage, GroupError>> {
        Box::pin(hub_core::deadline(
            BACKPLANE,
            "history read",
            self.0.op_timeout,
            self.0.read_page(group, query),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_and_epochs() {
        assert_eq!(
            stream_name("hub.chat.v1.ChatHub"),
            "hub-chat-v1-ChatHub-history"
        );
        assert_ne!(stream_name("a-b.c"), stream_name("a.b-c"));
        let e = epoch_of("2026-12-02 14:00:00.123456789 +00:00:00");
        assert!(e > 0 && e < 1 << 53);
        assert_ne!(e, epoch_of("2026-12-02 14:00:00.123456790 +00:00:00"));
    }
}
