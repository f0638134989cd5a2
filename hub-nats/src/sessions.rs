//! Session records in a JetStream key-value bucket, one bucket per hub: what lets a
//! session be resumed on another server (`hub_core::session`).
//!
//! The bucket is [`bucket_name`] of the hub's subject prefix, the key the connection
//! id (`<node>-<n>`), the value the encoded `hub.v1.SessionRecord`, one revision kept
//! per key. A claim is a compare-and-set on the revision (`kv.update`) of an entry
//! read as held by the server it is claimed from: of two servers claiming one
//! record, one wins. The nats-server may have no per-message TTL (2.9), so records
//! expire by the bucket's `max_age` and this server rewrites its own records at each
//! heartbeat interval while it lives (also a compare-and-set: a record claimed
//! meanwhile is left alone, and no longer rewritten). A record of a dead server
//! expires `max_age` after its last rewrite.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, ErrorCode, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use hub_core::session::SessionRecord;
use hub_core::{ConnectionId, GroupError, HubMetrics, NodeId};

use crate::BACKPLANE;
use crate::peers::MISSED_BEATS;

/// Records written per refresh at once.
const REFRESH_CONCURRENCY: usize = 64;

/// Tries of a save that keeps losing a compare-and-set to other writers.
const SAVE_TRIES: usize = 3;

/// The KV bucket of the session records of the hub whose subject prefix is
/// `hub_prefix` (`<subject prefix>.<hub full name>`): `.` becomes `-`, `-` becomes
/// `_D` and `_` becomes `__` (KV bucket names take only letters, digits, `-` and `_`;
/// different prefixes give different buckets), then `-sessions`:
/// `hub.chat.v1.ChatHub` → `hub-chat-v1-ChatHub-sessions`.
pub(crate) fn bucket_name(hub_prefix: &str) -> String {
    let mut out = sanitized(hub_prefix);
    out.push_str("-sessions");
    out
}

/// `hub_prefix` as a JetStream name (letters, digits, `-` and `_`), one name per
/// prefix (see [`bucket_name`]).
pub(crate) fn sanitized(hub_prefix: &str) -> String {
    let mut out = String::with_capacity(hub_prefix.len() + 12);
    for c in hub_prefix.chars() {
        match c {
            '.' => out.push('-'),
            '-' => out.push_str("_D"),
            '_' => out.push_str("__"),
            c if c.is_ascii_alphanumeric() => out.push(c),
            // Not in a valid prefix or hub name; escaped all the same.
            c => out.push_str(&format!("_{:X}_", u32::from(c))),
        }
    }
    out
}

/// Whether the NATS server has JetStream for this account, as the provider finds at
/// connect (a request to `$JS.API.INFO`): `Err` says why not. (The account info is
/// read as plain JSON: async-nats' own reader wants fields a 2.9 server lacks.)
pub(crate) async fn probe(client: &async_nats::Client, within: Duration) -> Result<(), String> {
    use async_nats::RequestErrorKind;
    let answer = tokio::time::timeout(within, client.request("$JS.API.INFO", Bytes::new())).await;
    let present = |why: String| {
        // There but not ready (a cluster electing its leader) or slow: sessions are
        // shared, and fail as unavailable until it answers.
        tracing::warn!(%why, "JetStream did not answer at connect; session records will be tried anyway");
        Ok(())
    };
    match answer {
        Err(_) => present(format!("no answer within {within:?}")),
        Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => {
            Err("JetStream is not enabled on the NATS server (no responders)".into())
        }
        Ok(Err(e)) => present(e.to_string()),
        Ok(Ok(msg)) => {
            let info: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
            let code = info["error"]["err_code"].as_u64();
            if code == Some(ErrorCode::JETSTREAM_NOT_ENABLED.0)
                || code == Some(ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT.0)
            {
                Err(format!("JetStream is not enabled: {}", info["error"]))
            } else if code.is_some() {
                present(info["error"].to_string())
            } else {
                Ok(())
            }
        }
    }
}

fn unavailable(op: &str, e: impl std::fmt::Display) -> GroupError {
    GroupError::Unavailable {
        backplane: BACKPLANE,
        message: format!("{op}: {e}"),
        source: None,
    }
}

/// A record this server holds: what it wrote last, at which revision.
#[derive(Debug, Clone)]
struct Held {
    value: Bytes,
    revision: u64,
}

/// The session records of one hub.
#[derive(Debug)]
pub(crate) struct SessionStore {
    js: jetstream::Context,
    client: async_nats::Client,
    /// The bucket's name.
    pub(crate) bucket: String,
    /// Time limit of one operation.
    op_timeout: Duration,
    /// Added to a session's grace in the bucket's `max_age`: the records of a server
    /// then outlive its presence (3 heartbeat intervals) by the grace, and a record is
    /// never older than `max_age` while its server rewrites it each interval.
    presence: Duration,
    /// The bucket, once opened with a `max_age` (the second field).
    store: tokio::sync::Mutex<Option<(kv::Store, Duration)>>,
    /// The records this server holds, rewritten at each refresh.
    held: Mutex<HashMap<ConnectionId, Held>>,
}

impl SessionStore {
    pub(crate) fn new(
        client: async_nats::Client,
        bucket: String,
        op_timeout: Duration,
        heartbeat: Duration,
    ) -> Self {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(op_timeout);
        SessionStore {
            js,
            client,
            bucket,
            op_timeout,
            presence: heartbeat * MISSED_BEATS,
            store: tokio::sync::Mutex::new(None),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// The bucket's `max_age` for sessions of grace `ttl`.
    pub(crate) fn max_age(&self, ttl: Duration) -> Duration {
        (ttl + self.presence).max(Duration::from_millis(100))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connected(&self, op: &str) -> Result<(), GroupError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(unavailable(
                op,
                format!("not connected to NATS ({state}); nothing was sent"),
            )),
        }
    }

    /// Runs one operation within the time limit, failing at once while disconnected.
    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, GroupError>>,
    ) -> Result<T, GroupError> {
        self.connected(op)?;
        hub_core::deadline(BACKPLANE, op, self.op_timeout, fut).await
    }

    /// The bucket with `max_age` for grace `ttl`: created if missing, its `max_age`
    /// changed if another grace made it.
    async fn open(&self, ttl: Duration) -> Result<kv::Store, GroupError> {
        let max_age = self.max_age(ttl);
        let mut store = self.store.lock().await;
        if let Some((s, age)) = &*store
            && *age == max_age
        {
            return Ok(s.clone());
        }
        // The stream a KV bucket is, made directly: async-nats' `create_key_value`
        // first reads the account info, which it cannot parse from a 2.9 server.
        let config = jetstream::stream::Config {
            name: format!("KV_{}", self.bucket),
            description: Some("hub session records (hub.v1.SessionRecord by connection id)".into()),
            subjects: vec![format!("$KV.{}.>", self.bucket)],
            max_messages_per_subject: 1,
            max_age,
            storage: jetstream::stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        };
        if let Err(created) = self.js.create_stream(config.clone()).await {
            // There with another configuration (another grace): make it ours.
            self.js.update_stream(config).await.map_err(|e| {
                unavailable(
                    "session bucket",
                    format!("cannot create ({created}) or update ({e}) {}", self.bucket),
                )
            })?;
            tracing::info!(bucket = %self.bucket, ?max_age, "session bucket's max_age set");
        }
        let opened = self
            .js
            .get_key_value(self.bucket.clone())
            .await
            .map_err(|e| unavailable("session bucket", e))?;
        *store = Some((opened.clone(), max_age));
        Ok(opened)
    }

    /// The bucket if it exists (without a grace to create it with).
    async fn existing(&self) -> Result<Option<kv::Store>, GroupError> {
        if let Some((s, _)) = &*self.store.lock().await {
            return Ok(Some(s.clone()));
        }
        match self.js.get_key_value(self.bucket.clone()).await {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                let missing = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<jetstream::context::GetStreamError>())
                    .is_some_and(|s| {
                        matches!(s.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                            if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
                    });
                if missing {
                    Ok(None)
                } else {
                    Err(unavailable("session bucket", e))
                }
            }
        }
    }

    /// The entry of `key` and the record in it, if one lives (a deleted or purged
    /// entry is none; an unreadable value is `Err(None)` with its revision).
    async fn read(
        kv: &kv::Store,
        key: &str,
    ) -> Result<Option<(u64, Result<SessionRecord, ()>)>, GroupError> {
        let entry = kv
            .entry(key)
            .await
            .map_err(|e| unavailable("session record", e))?;
        Ok(entry.and_then(|e| match e.operation {
            kv::Operation::Put => {
                Some((e.revision, SessionRecord::decode(&e.value).map_err(|_| ())))
            }
            kv::Operation::Delete | kv::Operation::Purge => None,
        }))
    }

    fn keep(&self, connection: ConnectionId, value: Bytes, revision: u64) {
        self.held().insert(connection, Held { value, revision });
    }

    /// Writes a record this server holds, unless another server holds the stored one.
    pub(crate) async fn save(
        &self,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<(), GroupError> {
        self.bounded("save_session", async {
            let kv = self.open(ttl).await?;
            let key = record.connection.to_string();
            let value = Bytes::from(record.encode());
            // Usually the stored record is the one this server wrote last.
            let last = self.held().get(&record.connection).map(|h| h.revision);
            if let Some(rev) = last {
                match kv.update(&key, value.clone(), rev).await {
                    Ok(rev) => {
                        self.keep(record.connection, value, rev);
                        return Ok(());
                    }
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                    Err(e) => return Err(unavailable("save_session", e)),
                }
            }
            for _ in 0..SAVE_TRIES {
                let written = match Self::read(&kv, &key).await? {
                    Some((_, Ok(stored))) if stored.server != record.server => {
                        // Claimed by another server: not ours any more.
                        self.held().remove(&record.connection);
                        return Ok(());
                    }
                    Some((rev, _)) => match kv.update(&key, value.clone(), rev).await {
                        Ok(rev) => Some(rev),
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => None,
                        Err(e) => return Err(unavailable("save_session", e)),
                    },
                    None => match kv.create(&key, value.clone()).await {
                        Ok(rev) => Some(rev),
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
                        Err(e) => return Err(unavailable("save_session", e)),
                    },
                };
                if let Some(rev) = written {
                    self.keep(record.connection, value, rev);
                    return Ok(());
                }
            }
            Err(unavailable(
                "save_session",
                format!("the record of {key} kept changing under {SAVE_TRIES} writes"),
            ))
        })
        .await
    }

    /// Writes `record` (held here now) if the stored one is held by `from`, by a
    /// compare-and-set on its revision. Returns whether it did.
    pub(crate) async fn claim(
        &self,
        record: &SessionRecord,
        from: NodeId,
        ttl: Duration,
    ) -> Result<bool, GroupError> {
        self.bounded("claim_session", async {
            let kv = self.open(ttl).await?;
            let key = record.connection.to_string();
            let Some((rev, Ok(stored))) = Self::read(&kv, &key).await? else {
                return Ok(false);
            };
            if stored.server != from {
                return Ok(false);
            }
            let value = Bytes::from(record.encode());
            match kv.update(&key, value.clone(), rev).await {
                Ok(rev) => {
                    self.keep(record.connection, value, rev);
                    Ok(true)
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(unavailable("claim_session", e)),
            }
        })
        .await
    }

    /// The record of `connection`, if one lives.
    pub(crate) async fn load(
        &self,
        connection: ConnectionId,
    ) -> Result<Option<SessionRecord>, GroupError> {
        self.bounded("load_session", async {
            let Some(kv) = self.existing().await? else {
                return Ok(None);
            };
            match Self::read(&kv, &connection.to_string()).await? {
                None => Ok(None),
                Some((_, Ok(record))) => Ok(Some(record)),
                Some((_, Err(()))) => Err(unavailable(
                    "load_session",
                    "malformed session record in the bucket",
                )),
            }
        })
        .await
    }

    /// Deletes the record of `connection` if `server` holds it (compare-and-set on
    /// the revision read); this server stops rewriting it either way.
    pub(crate) async fn drop_record(
        &self,
        connection: ConnectionId,
        server: NodeId,
    ) -> Result<(), GroupError> {
        self.held().remove(&connection);
        self.bounded("drop_session", async {
            let Some(kv) = self.existing().await? else {
                return Ok(());
            };
            let key = connection.to_string();
            let Some((rev, Ok(stored))) = Self::read(&kv, &key).await? else {
                return Ok(());
            };
            if stored.server != server {
                return Ok(());
            }
            match kv.delete_expect_revision(&key, Some(rev)).await {
                Ok(()) => Ok(()),
                // Changed meanwhile (claimed by another server): not ours to delete.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(()),
                Err(e) => Err(unavailable("drop_session", e)),
            }
        })
        .await
    }

    /// Rewrites every record this server holds, so none outlives `max_age` while this
    /// server lives. A record changed meanwhile by another server (claimed) is no
    /// longer this server's; one that could not be written stays for the next time.
    pub(crate) async fn refresh(&self, metrics: &HubMetrics, hub: &str) {
        let held: Vec<(ConnectionId, Held)> =
            self.held().iter().map(|(id, h)| (*id, h.clone())).collect();
        if held.is_empty() || self.connected("refresh_sessions").is_err() {
            return;
        }
        let Some(kv) = self.store.lock().await.as_ref().map(|(s, _)| s.clone()) else {
            return;
        };
        let kv = &kv;
        let results: Vec<(ConnectionId, u64, Result<u64, String>)> =
            futures_util::stream::iter(held)
                .map(|(id, h)| async move {
                    let key = id.to_string();
                    let r = match tokio::time::timeout(
                        self.op_timeout,
                        kv.update(&key, h.value.clone(), h.revision),
                    )
                    .await
                    {
                        Ok(Ok(rev)) => Ok(rev),
                        Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            Err(String::new())
                        }
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("timed out after {:?}", self.op_timeout)),
                    };
                    (id, h.revision, r)
                })
                .buffer_unordered(REFRESH_CONCURRENCY)
                .collect()
                .await;
        let mut failed = 0usize;
        let mut error = String::new();
        let mut held = self.held();
        for (id, tried, r) in results {
            // Saved again meanwhile: that write is newer than this one.
            let Some(h) = held.get_mut(&id).filter(|h| h.revision == tried) else {
                continue;
            };
            match r {
                Ok(rev) => h.revision = rev,
                Err(e) if e.is_empty() => {
                    held.remove(&id);
                }
                Err(e) => {
                    failed += 1;
                    error = e;
                }
            }
        }
        drop(held);
        if failed > 0 {
            HubMetrics::incr(&metrics.backplane_errors);
            tracing::warn!(hub, failed, %error, "session records not refreshed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bucket_name;

    #[test]
    fn bucket_names_are_kv_names_and_distinct() {
        assert_eq!(
            bucket_name("hub.chat.v1.ChatHub"),
            "hub-chat-v1-ChatHub-sessions"
        );
        assert_eq!(bucket_name("my_app.a.B"), "my__app-a-B-sessions");
        assert_eq!(bucket_name("my-app.a.B"), "my_Dapp-a-B-sessions");
        assert_ne!(bucket_name("a.b_c"), bucket_name("a_b.c"));
        assert_ne!(bucket_name("a-b.c"), bucket_name("a.b.c"));
        for name in [bucket_name("x-y_z.q.R"), bucket_name("hub.a.B")] {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{name}"
            );
        }
    }
}
