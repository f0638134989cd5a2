//! Who is a member where: the presence keys, kept so that a crashed server's members
//! stop being counted within the presence TTL.
//!
//! Every server registers an *incarnation* `{node}:{inc}` in the sorted set
//! `{base}:nodes`, scored with its expiry time (Redis server time, ms) and refreshed
//! every TTL/3. Member entries carry the incarnation that wrote them, and queries
//! only count entries whose incarnation is live, so a dead server's entries stop
//! counting as soon as its score passes, whether or not anyone cleaned them up yet.
//!
//! An incarnation that expired is never revived: a server that finds it missed its
//! heartbeats (or reconnects) registers a new one and rewrites its entries. Clean-up
//! of a dead incarnation (by any live server) deletes only that incarnation's entries,
//! so it cannot race with the server coming back.
//!
//! A member entry is held by the server whose node its connection id names, unless a
//! session of that connection was resumed on another server: that server's entries
//! say so in their value (`@{node}{inc}`), and only the holder's leave, rewrite or
//! clean-up touches them. The `HOLDER` Lua function reads an entry either way.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::sync::atomic::Ordering::Relaxed;

use futures_util::{StreamExt, TryStreamExt};
use hub_core::{ConnectionId, GroupError, GroupName, HubMetrics, MemberInfo, MembersLost, NodeId};
use redis::{Script, Value};

use crate::conn::Conn;
use crate::keys::incarnation;
use crate::shared::Shared;

/// The holder (node) and incarnation of a member entry (field, value), in Lua.
const HOLDER: &str = r"
local function holder(f, v)
  if string.sub(v, 1, 1) == '@' then return string.sub(v, 2, 17), string.sub(v, 18, 25) end
  return string.sub(f, 1, 16), string.sub(v, 1, 8)
end
";

/// A script that uses [`HOLDER`].
fn with_holder(body: &str) -> Script {
    Script::new(&format!("{HOLDER}{body}"))
}

/// Adds or refreshes a member (taking over another holder's entry of the same
/// connection: a resumed session). KEYS: count, members. ARGV: node, connection, value.
static JOIN: LazyLock<Script> = LazyLock::new(|| {
    with_holder(
        r"
local old = redis.call('HGET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
local nn, inc = holder(ARGV[2], ARGV[3])
if old then
  local on, oinc = holder(ARGV[2], old)
  if on == nn and oinc == inc then return 0 end
  local f = on .. ':' .. oinc
  if redis.call('HINCRBY', KEYS[1], f, -1) <= 0 then redis.call('HDEL', KEYS[1], f) end
end
redis.call('HINCRBY', KEYS[1], nn .. ':' .. inc, 1)
return 1
",
    )
});

/// Removes a member, if this server holds its entry. KEYS: count, members. ARGV:
/// node, connection.
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    with_holder(
        r"
local old = redis.call('HGET', KEYS[2], ARGV[2])
if not old then return 0 end
local on, oinc = holder(ARGV[2], old)
if on ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[2])
local f = on .. ':' .. oinc
if redis.call('HINCRBY', KEYS[1], f, -1) <= 0 then redis.call('HDEL', KEYS[1], f) end
return 1
",
    )
});

/// Replaces every entry one server holds in one group by the given members.
/// KEYS: count, members. ARGV: node, inc, then connection/value pairs.
static REPLACE: LazyLock<Script> = LazyLock::new(|| {
    with_holder(
        r"
local cp = ARGV[1] .. ':'
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if holder(all[i], all[i + 1]) == ARGV[1] then redis.call('HDEL', KEYS[2], all[i]) end
end
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #cp) == cp then redis.call('HDEL', KEYS[1], f) end
end
local n = 0
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  n = n + 1
end
if n > 0 then redis.call('HSET', KEYS[1], cp .. ARGV[2], n) end
return n
",
    )
});

/// Deletes the entries of one dead incarnation in one group; returns them as a flat
/// list of connection, value pairs. KEYS: count, members. ARGV: node, inc.
static PURGE: LazyLock<Script> = LazyLock::new(|| {
    with_holder(
        r"
redis.call('HDEL', KEYS[1], ARGV[1] .. ':' .. ARGV[2])
local all = redis.call('HGETALL', KEYS[2])
local gone = {}
for i = 1, #all, 2 do
  local h, hinc = holder(all[i], all[i + 1])
  if h == ARGV[1] and hinc == ARGV[2] then
    redis.call('HDEL', KEYS[2], all[i])
    table.insert(gone, all[i])
    table.insert(gone, all[i + 1])
  end
end
return gone
",
    )
});

/// Registers an incarnation as live. KEYS: nodes. ARGV: incarnation, ttl ms.
static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return now
",
    )
});

/// Extends a live incarnation; an expired one stays dead. Returns {1 if it was live,
/// up to 16 dead incarnations}. KEYS: nodes. ARGV: incarnation, ttl ms.
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
local alive = 0
if old and tonumber(old) >= now then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  alive = 1
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, 16)
return {alive, dead}
",
    )
});

/// The live incarnations. KEYS: nodes.
static LIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
",
    )
});

/// Forgets an incarnation if it is (still) expired. KEYS: nodes. ARGV: incarnation.
static FORGET_DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) < now then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
",
    )
});

/// Writes a session record held by ARGV[1], if the stored one is held by ARGV[1]
/// (or, with ARGV[4], by ARGV[4]; without it, also if there is none). KEYS: session.
/// ARGV: server, record, ttl ms, [from]. Returns 1 if written.
static SAVE_SESSION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('HGET', KEYS[1], 's')
if ARGV[4] then
  if held ~= ARGV[4] then return 0 end
elseif held and held ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'r', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

/// Deletes a session record if ARGV[1] holds it. KEYS: session. ARGV: server.
static DROP_SESSION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 's') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// A member entry's value: the incarnation (8 hex digits), then `|user` if it has one.
pub(crate) fn entry_value(inc: u32, user: Option<&str>) -> String {
    match user {
        Some(u) => format!("{inc:08x}|{u}"),
        None => format!("{inc:08x}"),
    }
}

/// The value of an entry server `me` writes for `connection`: [`entry_value`] for
/// its own connections, `@{me}` in front for a connection whose id another server
/// issued (a session resumed here).
pub(crate) fn held_value(
    me: NodeId,
    connection: ConnectionId,
    inc: u32,
    user: Option<&str>,
) -> String {
    let value = entry_value(inc, user);
    if connection.node == me {
        value
    } else {
        format!("@{me}{value}")
    }
}

/// Reads an entry value: (incarnation digits, user).
pub(crate) fn parse_entry(value: &str) -> Option<(&str, Option<&str>)> {
    let inc = value.get(..8)?;
    match value.get(8..)? {
        "" => Some((inc, None)),
        rest => Some((inc, Some(rest.strip_prefix('|')?))),
    }
}

/// Reads an entry of `connection`: (the server holding it, incarnation digits, user).
pub(crate) fn parse_held(
    connection: ConnectionId,
    value: &str,
) -> Option<(NodeId, &str, Option<&str>)> {
    match value.strip_prefix('@') {
        Some(rest) => {
            let node = u64::from_str_radix(rest.get(..16)?, 16).ok()?;
            let (inc, user) = parse_entry(rest.get(16..)?)?;
            Some((NodeId(node), inc, user))
        }
        None => {
            let (inc, user) = parse_entry(value)?;
            Some((connection.node, inc, user))
        }
    }
}

/// How long a session record of this server lives past a heartbeat: its `ttl`
/// (the session's grace) after this server's presence would expire.
fn record_ttl(shared: &Shared, ttl: std::time::Duration) -> u64 {
    (ttl + shared.cfg.presence_ttl).as_millis().max(1) as u64
}

/// Writes a session record this server holds; with `from`, only if `from` holds
/// the stored one (a takeover), else unless another server holds it.
pub(crate) async fn save_session(
    shared: &Shared,
    record: &hub_core::session::SessionRecord,
    from: Option<NodeId>,
    ttl: std::time::Duration,
) -> Result<bool, GroupError> {
    let mut c = shared.conn("save_session").await?;
    let ms = record_ttl(shared, ttl);
    let mut inv = SAVE_SESSION.key(shared.keys.session(&record.connection.to_string()));
    inv.arg(record.server.to_string())
        .arg(record.encode())
        .arg(ms);
    if let Some(from) = from {
        inv.arg(from.to_string());
    }
    let written: i64 = shared
        .timed(
            "save_session",
            shared.cfg.command_timeout,
            inv.invoke_async(&mut c),
        )
        .await?;
    let mut held = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
    if written == 1 {
        held.insert(record.connection, ms);
    } else {
        held.remove(&record.connection);
    }
    Ok(written == 1)
}

/// The record of a session, if one lives.
pub(crate) async fn load_session(
    shared: &Shared,
    connection: ConnectionId,
) -> Result<Option<hub_core::session::SessionRecord>, GroupError> {
    let mut c = shared.conn("load_session").await?;
    let bytes: Option<Vec<u8>> = shared
        .timed(
            "load_session",
            shared.cfg.command_timeout,
            redis::cmd("HGET")
                .arg(shared.keys.session(&connection.to_string()))
                .arg("r")
                .query_async(&mut c),
        )
        .await?;
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    hub_core::session::SessionRecord::decode(&bytes)
        .map(Some)
        .map_err(|e| crate::shared::unavailable(format!("load_session: {e}")))
}

/// Deletes the record of a session if `server` holds it; this server stops
/// extending it either way.
pub(crate) async fn drop_session(
    shared: &Shared,
    connection: ConnectionId,
    server: NodeId,
) -> Result<(), GroupError> {
    shared
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&connection);
    let mut c = shared.conn("drop_session").await?;
    shared
        .timed(
            "drop_session",
            shared.cfg.command_timeout,
            DROP_SESSION
                .key(shared.keys.session(&connection.to_string()))
                .arg(server.to_string())
                .invoke_async::<Value>(&mut c),
        )
        .await?;
    Ok(())
}

/// Whether server `node` has a live incarnation.
pub(crate) async fn server_alive(shared: &Shared, node: NodeId) -> Result<bool, GroupError> {
    let mut c = shared.conn("server_alive").await?;
    let live: Vec<String> = shared
        .timed(
            "server_alive",
            shared.cfg.command_timeout,
            LIVE.key(shared.keys.nodes()).invoke_async(&mut c),
        )
        .await?;
    let prefix = format!("{node}:");
    Ok(live.iter().any(|inc| inc.starts_with(&prefix)))
}

/// Extends the records of the sessions this server holds (at each heartbeat).
pub(crate) async fn refresh_sessions(shared: &Shared, cmd: &Conn) -> Result<(), GroupError> {
    let held: Vec<(ConnectionId, u64)> = shared
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(id, ms)| (*id, *ms))
        .collect();
    let timeout = shared.cfg.command_timeout;
    futures_util::stream::iter(held)
        .map(|(id, ms)| {
            let mut c = cmd.clone();
            async move {
                shared
                    .timed(
                        "refresh_sessions",
                        timeout,
                        redis::cmd("PEXPIRE")
                            .arg(shared.keys.session(&id.to_string()))
                            .arg(ms)
                            .query_async::<Value>(&mut c),
                    )
                    .await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Registers a new incarnation and writes every local member under it, then drops
/// what the previous incarnation left. Holds the registration lock throughout, so no
/// join or leave interleaves with the rewrite.
pub(crate) async fn register(shared: &Shared, cmd: &Conn) -> Result<(), GroupError> {
    let mut reg = shared.presence.write().await;
    let old = reg.inc;
    let inc = shared.next_inc.fetch_add(1, Relaxed);
    let me = incarnation(shared.node, inc);
    let timeout = shared.cfg.command_timeout;
    let ttl = shared.cfg.presence_ttl.as_millis() as u64;
    let mut c = cmd.clone();
    shared
        .timed(
            "register",
            timeout,
            REGISTER
                .key(shared.keys.nodes())
                .arg(&me)
                .arg(ttl)
                .invoke_async::<Value>(&mut c),
        )
        .await?;

    let groups = shared.local.groups();
    let set = shared.keys.node_groups(shared.node, inc);
    if !groups.is_empty() {
        let mut sadd = redis::cmd("SADD");
        sadd.arg(&set);
        for g in &groups {
            sadd.arg(g.as_str());
        }
        shared
            .timed("register", timeout, sadd.query_async::<Value>(&mut c))
            .await?;
    }
    futures_util::stream::iter(groups.iter().cloned())
        .map(|g| replace(shared, cmd, g, inc))
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;

    if old != 0 {
        // Whatever the previous incarnation had and this one does not.
        let old_set = shared.keys.node_groups(shared.node, old);
        let before: Vec<String> = shared
            .timed(
                "register",
                timeout,
                redis::cmd("SMEMBERS").arg(&old_set).query_async(&mut c),
            )
            .await?;
        let now: HashSet<&str> = groups.iter().map(GroupName::as_str).collect();
        let stale: Vec<GroupName> = before
            .iter()
            .filter(|g| !now.contains(g.as_str()))
            .filter_map(|g| GroupName::from_wire(g).ok())
            .collect();
        futures_util::stream::iter(stale)
            .map(|g| replace(shared, cmd, g, inc))
            .buffer_unordered(64)
            .try_collect::<Vec<()>>()
            .await?;
        shared
            .timed(
                "register",
                timeout,
                redis::cmd("DEL").arg(&old_set).query_async::<Value>(&mut c),
            )
            .await?;
        shared
            .timed(
                "register",
                timeout,
                redis::cmd("ZREM")
                    .arg(shared.keys.nodes())
                    .arg(incarnation(shared.node, old))
                    .query_async::<Value>(&mut c),
            )
            .await?;
    }
    reg.inc = inc;
    tracing::debug!(hub = shared.hub, incarnation = %me, groups = groups.len(), "presence registered");
    Ok(())
}

/// Rewrites this server's entries of one group from the local registry.
async fn replace(
    shared: &Shared,
    cmd: &Conn,
    group: GroupName,
    inc: u32,
) -> Result<(), GroupError> {
    let members = shared.local.members(group.as_str());
    let mut inv = REPLACE.key(shared.keys.count(group.as_str()));
    inv.key(shared.keys.members(group.as_str()))
        .arg(shared.node.to_string())
        .arg(format!("{inc:08x}"));
    for m in &members {
        inv.arg(m.connection.to_string()).arg(held_value(
            shared.node,
            m.connection,
            inc,
            m.user.as_deref(),
        ));
    }
    let mut c = cmd.clone();
    shared
        .timed(
            "register",
            shared.cfg.command_timeout,
            inv.invoke_async::<Value>(&mut c),
        )
        .await?;
    Ok(())
}

/// What a heartbeat found.
#[derive(Debug)]
pub(crate) struct Beat {
    /// This server's incarnation was still live (else it must register a new one).
    pub(crate) alive: bool,
    /// Expired incarnations waiting for clean-up.
    pub(crate) dead: Vec<String>,
}

/// Extends this server's incarnation.
pub(crate) async fn heartbeat(shared: &Shared, cmd: &Conn) -> Result<Beat, GroupError> {
    let inc = shared.registration("heartbeat").await?.inc;
    let ttl = shared.cfg.presence_ttl.as_millis() as u64;
    let mut c = cmd.clone();
    let (alive, dead): (i64, Vec<String>) = shared
        .timed(
            "heartbeat",
            shared.cfg.command_timeout,
            HEARTBEAT
                .key(shared.keys.nodes())
                .arg(incarnation(shared.node, inc))
                .arg(ttl)
                .invoke_async(&mut c),
        )
        .await?;
    Ok(Beat {
        alive: alive == 1,
        dead,
    })
}

/// Records a local join.
pub(crate) async fn join(
    shared: &Shared,
    group: &GroupName,
    member: &MemberInfo,
    first: bool,
) -> Result<(), GroupError> {
    // The connection first: the first registration takes the lock exclusively.
    let cmd = shared.conn("join").await?;
    let reg = shared.registration("join").await?;
    let timeout = shared.cfg.command_timeout;
    let mut c1 = cmd.clone();
    let mut c2 = cmd;
    let add = async {
        if first {
            redis::cmd("SADD")
                .arg(shared.keys.node_groups(shared.node, reg.inc))
                .arg(group.as_str())
                .query_async::<Value>(&mut c1)
                .await?;
        }
        Ok::<_, redis::RedisError>(())
    };
    let mut inv = JOIN.key(shared.keys.count(group.as_str()));
    inv.key(shared.keys.members(group.as_str()))
        .arg(shared.node.to_string())
        .arg(member.connection.to_string())
        .arg(held_value(
            shared.node,
            member.connection,
            reg.inc,
            member.user.as_deref(),
        ));
    let entry = inv.invoke_async::<Value>(&mut c2);
    shared
        .timed("join", timeout, async {
            futures_util::try_join!(add, entry)
        })
        .await?;
    Ok(())
}

/// Records a local leave.
pub(crate) async fn leave(
    shared: &Shared,
    group: &GroupName,
    member: &MemberInfo,
    last: bool,
) -> Result<(), GroupError> {
    let cmd = shared.conn("leave").await?;
    let reg = shared.registration("leave").await?;
    let mut c1 = cmd.clone();
    let mut c2 = cmd;
    let mut inv = LEAVE.key(shared.keys.count(group.as_str()));
    inv.key(shared.keys.members(group.as_str()))
        .arg(shared.node.to_string())
        .arg(member.connection.to_string());
    let entry = inv.invoke_async::<Value>(&mut c1);
    let remove = async {
        // A join may have made the group non-empty again meanwhile; then keep it listed.
        if last && shared.local.count(group.as_str()) == 0 {
            redis::cmd("SREM")
                .arg(shared.keys.node_groups(shared.node, reg.inc))
                .arg(group.as_str())
                .query_async::<Value>(&mut c2)
                .await?;
        }
        Ok::<_, redis::RedisError>(())
    };
    shared
        .timed("leave", shared.cfg.command_timeout, async {
            futures_util::try_join!(entry, remove)
        })
        .await?;
    Ok(())
}

/// The live incarnations and one hash of a group, read together.
async fn read_group<T: redis::FromRedisValue>(
    shared: &Shared,
    key: String,
    op: &'static str,
) -> Result<(HashSet<String>, T), GroupError> {
    let cmd = shared.conn(op).await?;
    let mut c1 = cmd.clone();
    let mut c2 = cmd;
    let live = LIVE.key(shared.keys.nodes());
    let live = live.invoke_async::<Vec<String>>(&mut c1);
    let mut hgetall = redis::cmd("HGETALL");
    hgetall.arg(key);
    let hash = hgetall.query_async::<T>(&mut c2);
    let (live, hash) = shared
        .timed(op, shared.cfg.command_timeout, async {
            futures_util::try_join!(live, hash)
        })
        .await?;
    Ok((live.into_iter().collect(), hash))
}

/// Members of `group` on every live server: this server's from the local registry,
/// the others' from Redis.
pub(crate) async fn count(shared: &Shared, group: &GroupName) -> Result<u64, GroupError> {
    let (live, counts): (_, HashMap<String, i64>) =
        read_group(shared, shared.keys.count(group.as_str()), "member_count").await?;
    let me = shared.origin.as_str();
    let remote: i64 = counts
        .iter()
        .filter(|(inc, _)| !inc.starts_with(me) && live.contains(*inc))
        .map(|(_, n)| (*n).max(0))
        .sum();
    Ok(shared.local.count(group.as_str()) as u64 + remote as u64)
}

/// The members of `group` on every live server, sorted by connection id.
pub(crate) async fn members(
    shared: &Shared,
    group: &GroupName,
) -> Result<Vec<MemberInfo>, GroupError> {
    let (live, entries): (_, HashMap<String, String>) =
        read_group(shared, shared.keys.members(group.as_str()), "members").await?;
    let mut out = shared.local.members(group.as_str());
    for (conn, value) in &entries {
        let Ok(id) = conn.parse::<ConnectionId>() else {
            continue;
        };
        let Some((holder, inc, user)) = parse_held(id, value) else {
            continue;
        };
        if holder == shared.node {
            continue;
        }
        if live.contains(&format!("{holder}:{inc}")) {
            out.push(MemberInfo {
                connection: id,
                user: user.map(str::to_owned),
            });
        }
    }
    out.sort();
    Ok(out)
}

/// Cleans up after dead incarnations (one live server does each, under a lock).
pub(crate) async fn purge(
    shared: &Shared,
    cmd: &Conn,
    dead: Vec<String>,
) -> Result<(), GroupError> {
    let timeout = shared.cfg.command_timeout;
    let mut c = cmd.clone();
    for who in dead {
        let Some((node, inc)) = who.split_once(':') else {
            continue;
        };
        let Ok(node_id) = u64::from_str_radix(node, 16) else {
            continue;
        };
        let Ok(inc_n) = u32::from_str_radix(inc, 16) else {
            continue;
        };
        // Asks of this server waiting on that server's connections end now (whoever
        // cleans up; the others hear it from the loss notices).
        shared.inbox.events().server_dead(hub_core::NodeId(node_id));
        let lock: Option<String> = shared
            .timed(
                "purge",
                timeout,
                redis::cmd("SET")
                    .arg(shared.keys.purge_lock(&who))
                    .arg(shared.origin.as_str())
                    .arg("NX")
                    .arg("PX")
                    .arg(60_000)
                    .query_async(&mut c),
            )
            .await?;
        if lock.is_none() {
            continue;
        }
        let set = shared.keys.node_groups(hub_core::NodeId(node_id), inc_n);
        let groups: Vec<String> = shared
            .timed(
                "purge",
                timeout,
                redis::cmd("SMEMBERS").arg(&set).query_async(&mut c),
            )
            .await?;
        let lost: Vec<(String, Vec<(String, String)>)> = futures_util::stream::iter(groups)
            .map(|g| {
                let mut c = cmd.clone();
                async move {
                    let mut inv = PURGE.key(shared.keys.count(&g));
                    inv.key(shared.keys.members(&g)).arg(node).arg(inc);
                    let gone: Vec<(String, String)> = shared
                        .timed("purge", timeout, inv.invoke_async(&mut c))
                        .await?;
                    Ok::<_, GroupError>((g, gone))
                }
            })
            .buffer_unordered(64)
            .try_collect()
            .await?;
        // The entries are gone (and were not counted since the incarnation expired):
        // now tell every server with members of those groups.
        for (group, gone) in lost {
            report_lost(shared, cmd, node_id, &group, &gone).await;
        }
        shared
            .timed(
                "purge",
                timeout,
                redis::cmd("DEL").arg(&set).query_async::<Value>(&mut c),
            )
            .await?;
        shared
            .timed(
                "purge",
                timeout,
                FORGET_DEAD
                    .key(shared.keys.nodes())
                    .arg(&who)
                    .invoke_async::<Value>(&mut c),
            )
            .await?;
        tracing::info!(hub = shared.hub, incarnation = %who, "cleaned up the presence entries of a dead server");
    }
    Ok(())
}

/// Tells every server with members of `group` (and this one) which members a dead
/// server had: a loss notice on the group's channel.
async fn report_lost(
    shared: &Shared,
    cmd: &Conn,
    node: u64,
    group: &str,
    gone: &[(String, String)],
) {
    let Ok(group) = GroupName::from_wire(group) else {
        return;
    };
    let server = hub_core::NodeId(node);
    let mut members: Vec<MemberInfo> = gone
        .iter()
        .filter_map(|(conn, value)| {
            let connection = conn.parse::<ConnectionId>().ok()?;
            let (_, _, user) = parse_held(connection, value)?;
            Some(MemberInfo {
                connection,
                user: user.map(str::to_owned),
            })
        })
        .collect();
    if members.is_empty() {
        return;
    }
    members.sort();
    let lost = MembersLost {
        group,
        server,
        members,
    };
    let payload = shared.inbox.writer().lost(&lost);
    let channel = shared.keys.group_channel(lost.group.as_str());
    let name = if shared.cfg.sharded {
        "SPUBLISH"
    } else {
        "PUBLISH"
    };
    let mut c = cmd.clone();
    let sent = shared
        .timed(
            "purge",
            shared.cfg.command_timeout,
            redis::cmd(name)
                .arg(&channel)
                .arg(&payload[..])
                .query_async::<Value>(&mut c),
        )
        .await;
    if let Err(e) = sent {
        HubMetrics::incr(&shared.metrics.backplane_errors);
        tracing::warn!(hub = shared.hub, group = %lost.group, error = %e, "could not tell the other servers about lost members");
    }
    if shared.local.count(lost.group.as_str()) > 0 {
        shared.inbox.events().members_lost(lost);
    }
}

/// Removes every entry of this server (graceful shutdown).
pub(crate) async fn unregister(shared: &Shared) -> Result<(), GroupError> {
    let mut reg = shared.presence.write().await;
    if reg.inc == 0 {
        return Ok(());
    }
    let cmd = shared.conn("unregister").await?;
    let mut c = cmd.clone();
    let timeout = shared.cfg.command_timeout;
    let set = shared.keys.node_groups(shared.node, reg.inc);
    let mut groups: Vec<String> = shared
        .timed(
            "unregister",
            timeout,
            redis::cmd("SMEMBERS").arg(&set).query_async(&mut c),
        )
        .await?;
    groups.extend(shared.local.groups().iter().map(|g| g.to_string()));
    groups.sort();
    groups.dedup();
    let node = shared.node.to_string();
    futures_util::stream::iter(groups)
        .map(|g| {
            let mut c = cmd.clone();
            let node = &node;
            async move {
                // REPLACE with no members: drops this server's entries of the group.
                let mut inv = REPLACE.key(shared.keys.count(&g));
                inv.key(shared.keys.members(&g)).arg(node).arg("00000000");
                shared
                    .timed("unregister", timeout, inv.invoke_async::<Value>(&mut c))
                    .await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    shared
        .timed(
            "unregister",
            timeout,
            redis::cmd("DEL").arg(&set).query_async::<Value>(&mut c),
        )
        .await?;
    shared
        .timed(
            "unregister",
            timeout,
            redis::cmd("ZREM")
                .arg(shared.keys.nodes())
                .arg(incarnation(shared.node, reg.inc))
                .query_async::<Value>(&mut c),
        )
        .await?;
    reg.inc = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_values_round_trip() {
        assert_eq!(entry_value(0x2a, None), "0000002a");
        assert_eq!(entry_value(0x2a, Some("al|ice")), "0000002a|al|ice");
        assert_eq!(parse_entry("0000002a"), Some(("0000002a", None)));
        assert_eq!(
            parse_entry("0000002a|al|ice"),
            Some(("0000002a", Some("al|ice")))
        );
        assert_eq!(parse_entry("0000002a|"), Some(("0000002a", Some(""))));
        assert_eq!(parse_entry("0000002ax"), None);
        assert_eq!(parse_entry("short"), None);
        let (a, b) = (NodeId(0xa), NodeId(0xb));
        let own = ConnectionId { node: a, local: 3 };
        let value = held_value(a, own, 0x2a, Some("u"));
        assert_eq!(parse_held(own, &value), Some((a, "0000002a", Some("u"))));
        let value = held_value(b, own, 0x2a, None);
        assert_eq!(value, "@000000000000000b0000002a");
        assert_eq!(parse_held(own, &value), Some((b, "0000002a", None)));
    }
}
