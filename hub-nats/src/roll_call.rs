//! Members across servers: asking every live server for its members of a group
//! (the roll call) and answering other servers' roll calls.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::Message;
use bytes::Bytes;
use hub_core::{ConnectionId, GroupError, GroupName, HubMetrics, MemberInfo};
use prost::Message as _;
use tokio::time::Instant;

use crate::BACKPLANE;
use crate::proto;
use crate::state::{Inner, lock};

/// Answers one roll call may queue before the asker reads them. A roll call gets
/// one answer per server (more for very long member lists), so this is only hit by
/// a misbehaving publisher; extra answers are dropped and counted in `backplane_errors`.
const ROLL_CALL_QUEUE: usize = 1024;

/// What a roll call gathered.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Members on every server, this one included.
    pub(crate) count: u64,
    /// Their list (empty for a count-only roll call).
    pub(crate) members: Vec<MemberInfo>,
}

fn unavailable(message: String) -> GroupError {
    GroupError::Unavailable {
        backplane: BACKPLANE,
        message,
        source: None,
    }
}

/// Asks every server for its members of `group` and gathers the answers, until every
/// live server answered. A live server that does not answer within the roll-call
/// timeout makes the query fail with `Unavailable` rather than return a count
/// without its members: it may be slow, or NATS may have stalled; a crashed server is
/// left out once it is presumed dead (3 missed heartbeats). Alone, the answer is
/// local, once a round trip shows NATS is answering (a stalled NATS could be hiding
/// the others).
pub(crate) async fn ask(
    inner: &Inner,
    group: &GroupName,
    count_only: bool,
) -> Result<Tally, GroupError> {
    let local = inner.inbox.local();
    let mut tally = if count_only {
        Tally {
            count: local.count(group.as_str()) as u64,
            ..Tally::default()
        }
    } else {
        let members = local.members(group.as_str());
        Tally {
            count: members.len() as u64,
            members,
        }
    };
    inner.wait_ready().await?;
    inner.check_connected("member query")?;
    let timeout = inner.config.roll_call_timeout;
    let (expected, warming) = lock(&inner.peers).expected(Instant::now());
    if expected.is_empty() && !warming {
        // Alone, if NATS answers at all.
        inner.round_trip("member query", timeout).await.map_err(|e| {
            unavailable(format!(
                "member query: NATS did not answer within {timeout:?} ({e}); the other servers cannot be heard"
            ))
        })?;
        return Ok(tally);
    }
    let (guard, mut answers) = inner.pending.register(ROLL_CALL_QUEUE);
    let query = proto::RollCall {
        origin: inner.origin().to_owned(),
        group: group.as_str().to_owned(),
        count_only,
    };
    let reply = format!("{}.{}", inner.replies, guard.token);
    let payload = Bytes::from(query.encode_to_vec());
    inner
        .bounded("member query", inner.config.op_timeout, async {
            inner
                .client
                .publish_with_reply(inner.subjects.roll_call.clone(), reply, payload)
                .await
                .map_err(|e| {
                    GroupError::unavailable(
                        BACKPLANE,
                        "member query: NATS refused the roll call",
                        e,
                    )
                })
        })
        .await?;

    let deadline = Instant::now() + timeout;
    let mut waiting: HashSet<String> = expected.into_iter().collect();
    let mut answered: HashSet<String> = HashSet::new();
    let mut partial: HashMap<String, Vec<MemberInfo>> = HashMap::new();
    let metrics = inner.metrics();
    while warming || !waiting.is_empty() {
        let Ok(Some(payload)) = tokio::time::timeout_at(deadline, answers.recv()).await else {
            break;
        };
        let answer = match proto::RollCallAnswer::decode(payload) {
            Ok(a) => a,
            Err(e) => {
                HubMetrics::incr(&metrics.backplane_malformed);
                tracing::warn!(hub = inner.hub, error = %e, "dropped a malformed roll-call answer");
                continue;
            }
        };
        if answer.node == inner.origin() || answered.contains(&answer.node) {
            continue;
        }
        lock(&inner.peers).seen(&answer.node, Instant::now());
        let part = partial.entry(answer.node.clone()).or_default();
        for m in answer.members {
            match m.connection.parse::<ConnectionId>() {
                Ok(connection) => part.push(MemberInfo {
                    connection,
                    user: m.user,
                }),
                Err(_) => HubMetrics::incr(&metrics.backplane_malformed),
            }
        }
        if !answer.more {
            let members = partial.remove(&answer.node).unwrap_or_default();
            if count_only {
                tally.count += answer.count;
            } else {
                tally.count += members.len() as u64;
                // What the whereabouts of a group with members here should say.
                lock(&inner.whereabouts).replace(group, &answer.node, &members, answer.changes);
                tally.members.extend(members);
            }
            waiting.remove(&answer.node);
            answered.insert(answer.node);
        }
    }
    drop(guard);
    if !waiting.is_empty() {
        let mut silent: Vec<String> = waiting.into_iter().collect();
        silent.sort();
        return Err(unavailable(format!(
            "member query: {} server(s) did not answer within {timeout:?} ({}); a crashed server is left out once it missed 3 heartbeats",
            silent.len(),
            silent.join(", ")
        )));
    }
    Ok(tally)
}

/// Answers a roll call with this server's members of the group (possibly none).
pub(crate) async fn answer(inner: &Inner, msg: Message) {
    let metrics = inner.metrics();
    let (Some(reply), Ok(query)) = (msg.reply, proto::RollCall::decode(msg.payload)) else {
        HubMetrics::incr(&metrics.backplane_malformed);
        tracing::warn!(hub = inner.hub, "dropped a malformed roll call");
        return;
    };
    if query.origin == inner.origin() || inner.check_connected("roll call").is_err() {
        return;
    }
    let local = inner.inbox.local();
    // Read before the members: every change numbered up to this is in the list.
    let changes = inner.changes.load(std::sync::atomic::Ordering::SeqCst);
    let (count, members) = if query.count_only {
        (local.count(&query.group) as u64, Vec::new())
    } else {
        let members = local.members(&query.group);
        (members.len() as u64, members)
    };
    let limit = (inner.max_payload / 2).max(4096);
    for mut part in answer_parts(inner.origin(), members, count, limit) {
        part.changes = changes;
        let payload = Bytes::from(part.encode_to_vec());
        if let Err(e) = inner
            .send("roll-call answer", reply.to_string(), payload)
            .await
        {
            HubMetrics::incr(&metrics.backplane_errors);
            tracing::warn!(hub = inner.hub, group = %query.group, error = %e, "roll call not answered");
            return;
        }
    }
}

/// Encodes a roll-call answer in parts of at most about `limit` bytes.
pub(crate) fn answer_parts(
    node: &str,
    members: Vec<MemberInfo>,
    count: u64,
    limit: usize,
) -> Vec<proto::RollCallAnswer> {
    let mut parts = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for m in members {
        let member = proto::Member {
            connection: m.connection.to_string(),
            user: m.user,
        };
        let len = member.encoded_len() + 4;
        if size + len > limit && !current.is_empty() {
            parts.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(member);
    }
    parts.push(current);
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, members)| proto::RollCallAnswer {
            node: node.to_owned(),
            count,
            members,
            more: i + 1 < n,
            changes: 0,
        })
        .collect()
}

/// How long a liveness probe of our own NATS connection may take.
pub(crate) fn probe_timeout(inner: &Inner) -> Duration {
    inner.config.roll_call_timeout
}
