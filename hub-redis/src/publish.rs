//! The publisher: drains queued publishes into pipelines, several in flight, and
//! answers each caller on its own.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hub_core::{GroupError, HubMetrics};
use tokio::sync::{mpsc, oneshot};

use crate::conn::Conn;
use crate::envelope::LossSignal;
use crate::shared::{BACKPLANE, Link, Shared, redis_error, unavailable};

/// Pipelines sent and not yet answered, at most. Keeps Redis busy while the previous
/// batch's replies are on their way. Ordering is kept: batches are taken from the
/// queue in order, each pipeline future is first polled (and so handed to the
/// connection, which writes requests in the order they were made) in the order it was
/// pushed.
const MAX_IN_FLIGHT: usize = 4;

/// Publishes a group envelope with the group's next offset and its epoch in front
/// (`offset = 8`, `epoch = 9`, varints: protobuf reads fields in any order), in one
/// atomic step, so offsets follow the order of publication on the channel.
/// KEYS[1]: the group's offset hash, KEYS[2] (with history): the group's history
/// stream; ARGV: channel, envelope, an epoch for a new hash, the publish command, and
/// with history the stream's length and its lifetime in milliseconds.
///
/// With history, the message published is also added to the stream under the id
/// `<offset>-1` (so history and live delivery share one order, and a reader finds an
/// offset by id), the stream trimmed to about its length and its expiry pushed back.
/// A new epoch drops a stream left from an older one (ids must grow).
const OFFSET_SCRIPT: &str = r#"
local o = redis.call('HINCRBY', KEYS[1], 'o', 1)
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[3]
  redis.call('HSET', KEYS[1], 'e', e)
  if KEYS[2] then
    redis.call('DEL', KEYS[2])
  end
end
local function varint(n)
  local t = {}
  while n >= 128 do
    t[#t + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  t[#t + 1] = string.char(n)
  return table.concat(t)
end
local m = '\64' .. varint(o) .. '\72' .. varint(tonumber(e)) .. ARGV[2]
if KEYS[2] then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], string.format('%d-1', o), 'm', m)
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
redis.call(ARGV[4], ARGV[1], m)
return o
"#;

/// Reads a group's history: its offset and epoch, then (if the epoch is ARGV[3]) up to
/// ARGV[2] messages of the stream from the id ARGV[1], in one atomic step.
/// KEYS[1]: the offset hash, KEYS[2]: the stream. Returns `{latest, epoch, m...}`.
pub(crate) const HISTORY_READ_SCRIPT: &str = r#"
local h = redis.call('HMGET', KEYS[1], 'o', 'e')
local out = {h[1] or '0', h[2] or '0'}
if h[2] ~= ARGV[3] then
  return out
end
local r = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
for _, entry in ipairs(r) do
  out[#out + 1] = entry[2][2]
end
return out
"#;

/// The command publishing `payload` on `channel` with the group's next offset (its
/// offset hash `key`) and, with `history` (the group's stream), adding it there: the
/// script above, with a fresh epoch offered (the script keeps the first one).
pub(crate) fn offset_command(
    cfg: &crate::Config,
    key: &str,
    history: Option<&str>,
    channel: &str,
    payload: &[u8],
) -> redis::Cmd {
    let name = if cfg.sharded { "SPUBLISH" } else { "PUBLISH" };
    let epoch = (rand::random::<u64>() & hub_core::frame::MAX_SAFE_INTEGER) | 1;
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(OFFSET_SCRIPT)
        .arg(if history.is_some() { 2 } else { 1 })
        .arg(key);
    if let Some(stream) = history {
        cmd.arg(stream);
    }
    cmd.arg(channel).arg(payload).arg(epoch).arg(name);
    if let (Some(_), Some(limits)) = (history, &cfg.history) {
        cmd.arg(limits.max_len)
            .arg(limits.max_age.as_millis().max(1) as u64);
    }
    cmd
}

/// One queued publish.
pub(crate) struct PubReq {
    /// The channel.
    pub(crate) channel: String,
    /// The group's offset hash, when group pushes carry offsets, and its history
    /// stream when kept.
    pub(crate) offsets: Option<(String, Option<String>)>,
    /// The encoded envelope.
    pub(crate) payload: Bytes,
    /// The caller's answer.
    pub(crate) done: oneshot::Sender<Result<(), GroupError>>,
}

/// Runs until the backplane is cancelled.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<PubReq>) {
    let max_batch = shared.cfg.max_batch;
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            req = rx.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                let Some(first) = req else { break };
                let mut batch = Vec::with_capacity(max_batch.min(64));
                batch.push(first);
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let conn = match &*shared.link.borrow() {
                    Link::Up { cmd, loss } => Some((cmd.clone(), loss.clone())),
                    _ => None,
                };
                match conn {
                    Some((conn, loss)) => in_flight.push(send(shared.clone(), conn, loss, batch)),
                    None => {
                        // Queued while the link was up (maybe answered Ok already),
                        // not sent: counted by `answer` when nobody waits.
                        for r in batch {
                            answer(&shared, r.done, Err(unavailable("publish: not connected to Redis")));
                        }
                    }
                }
            }
        }
    }
    rx.close();
    while let Ok(r) = rx.try_recv() {
        answer(
            &shared,
            r.done,
            Err(unavailable("publish: the hub is shut down")),
        );
    }
}

/// Sends one batch as pipelined `PUBLISH` (or `SPUBLISH`) commands and answers every caller.
///
/// A batch Redis does not answer within the publish timeout, or that fails, marks the
/// link down at once: later publishes fail fast with `Unavailable` (as in an outage)
/// instead of being answered `Ok` and lost behind a stalled connection.
async fn send(shared: Arc<Shared>, conn: Conn, loss: LossSignal, batch: Vec<PubReq>) {
    let name = if shared.cfg.sharded {
        "SPUBLISH"
    } else {
        "PUBLISH"
    };
    let mut commands = Vec::with_capacity(batch.len());
    let mut answers = Vec::with_capacity(batch.len());
    for r in batch {
        match r.offsets {
            Some((key, history)) => {
                let cmd = offset_command(
                    &shared.cfg,
                    &key,
                    history.as_deref(),
                    &r.channel,
                    &r.payload,
                );
                commands.push((key.into_bytes(), cmd));
            }
            None => {
                let mut cmd = redis::cmd(name);
                cmd.arg(&r.channel).arg(&r.payload[..]);
                commands.push((r.channel.into_bytes(), cmd));
            }
        }
        answers.push(Some(r.done));
    }
    let after = shared.cfg.publish_timeout;
    match tokio::time::timeout(after, conn.run_pipelined(commands)).await {
        Ok(results) => {
            for (indices, result) in results {
                if let Err(e) = &result {
                    tracing::debug!(hub = shared.hub, error = %e, commands = indices.len(), "publish pipeline failed");
                    if is_link_failure(e) {
                        shared.link_failed(&loss, &format!("publish failed: {e}"));
                    }
                }
                for i in indices {
                    if let Some(done) = answers.get_mut(i).and_then(Option::take) {
                        answer(
                            &shared,
                            done,
                            result.clone().map_err(|e| redis_error("publish", e)),
                        );
                    }
                }
            }
        }
        Err(_) => {
            shared.link_failed(
                &loss,
                &format!("Redis did not answer a publish within {after:?}"),
            );
            for done in answers.into_iter().flatten() {
                let timeout = GroupError::Timeout {
                    backplane: BACKPLANE,
                    op: "publish",
                    after,
                };
                answer(&shared, done, Err(timeout));
            }
        }
    }
}

/// Whether a failed command means the connection is unusable (not a refusal of this
/// one command, such as a cluster redirection the client could not follow).
fn is_link_failure(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

/// Answers a caller; a failure nobody waits for (the publish was answered `Ok` once
/// queued) is counted in `backplane_lost_after_ok` and logged, so it is never silent.
fn answer(
    shared: &Shared,
    done: oneshot::Sender<Result<(), GroupError>>,
    result: Result<(), GroupError>,
) {
    if let Err(Err(e)) = done.send(result)
        && !shared.cfg.confirm_publishes
    {
        HubMetrics::incr(&shared.metrics.backplane_lost_after_ok);
        tracing::warn!(hub = shared.hub, error = %e, "a push answered Ok was not confirmed by Redis (probably lost)");
    }
}
