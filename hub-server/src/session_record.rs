//! The backplane's records of this hub's sessions, as the connection and the resume
//! path use them: deleting the record of a session that ended here, and restoring here
//! a session another server held (`RESTORED`). Writing a record is
//! `HubCore::save_record`, beside the joins and leaves that change it.

use hub_core::ConnectionId;
use hub_core::HubMetrics;
use hub_core::proto::ResumeOutcome;
use hub_core::session::{SessionRecord, secret_matches};
use std::time::Duration;

use crate::hub::HubCore;
use crate::session::{Elsewhere, Refusal};

/// Deletes the backplane's record of a session that ended here (unless another
/// server holds it now).
pub(crate) async fn drop_record(core: &HubCore, id: ConnectionId) {
    if !core.shares_sessions() {
        return;
    }
    if let Some(fut) = core.backplane.drop_session(id, core.node)
        && let Err(e) = fut.await
    {
        HubMetrics::incr(&core.metrics.backplane_errors);
        tracing::warn!(hub = core.service, conn = %id, error = %e, "could not delete the session record");
    }
}

/// Stops listening on the channel of the server connection `id` names, for it: it
/// ended here (or its restore failed). Nothing for an id of this server.
pub(crate) async fn release(core: &HubCore, id: ConnectionId) {
    if id.node == core.node {
        return;
    }
    if let Some(fut) = core.backplane.release(id.node)
        && let Err(e) = fut.await
    {
        HubMetrics::incr(&core.metrics.backplane_errors);
        tracing::warn!(hub = core.service, conn = %id, error = %e, "could not stop listening on the channel of the server the connection id names");
    }
}

/// A session another server held, now held here: what the new connection is made of.
pub(crate) struct Restored {
    /// Its record, as written here (this server holds it).
    pub(crate) record: SessionRecord,
    /// The credential's secret (the credential stays the same).
    pub(crate) secret: u128,
    /// The last `seq` the client saw: the next push is numbered after it.
    pub(crate) seq: u64,
}

/// Resumes here a session this server does not hold, from the backplane's record:
/// checks the credential against it (constant time) and the identity, makes the
/// record this server's (of two servers doing this at once, one wins), and tells
/// the server that held it to let go if it is alive. `refused` is what the client is
/// told if the backplane knows no such session.
pub(crate) async fn restore(
    core: &HubCore,
    ask: Elsewhere,
    user: Option<&str>,
    refused: Refusal,
) -> Result<Restored, Refusal> {
    let Some(load) = core.backplane.load_session(ask.id) else {
        return Err(refused);
    };
    let unavailable = |e: hub_core::GroupError| {
        HubMetrics::incr(&core.metrics.backplane_errors);
        Refusal::new(
            ResumeOutcome::Unknown,
            format!("the session could not be looked up on the backplane: {e}"),
        )
    };
    let record = match load.await {
        Ok(Some(record)) => record,
        Ok(None) => return Err(refused),
        Err(e) => return Err(unavailable(e)),
    };
    if record.hub != core.service
        || record.connection != ask.id
        || !secret_matches(ask.secret, &record.secret_sha256)
    {
        return Err(Refusal::new(
            ResumeOutcome::Unknown,
            "the credential does not match the session",
        ));
    }
    if record.user.as_deref() != user {
        return Err(Refusal::new(
            ResumeOutcome::IdentityMismatch,
            "the stream is authenticated as another identity than the session",
        ));
    }
    if record.server == core.node {
        // This server held it and no longer does: it ended here.
        return Err(Refusal::new(ResumeOutcome::Expired, "the session ended"));
    }
    let old = record.server;
    let mine = SessionRecord {
        server: core.node,
        ..record
    };
    let grace = core
        .sessions
        .as_ref()
        .map_or(Duration::ZERO, |s| s.config.grace);
    // The connection id names the server that opened the session, and what is sent
    // to the id is routed to that server's channel: listen there first, so that
    // nothing sent once the session is here misses it. Undone if the claim fails, and
    // when the connection ends here (`leave_everything`).
    let adopted = ask.id.node != core.node;
    if adopted
        && let Some(adopt) = core.backplane.adopt(ask.id.node)
        && let Err(e) = adopt.await
    {
        return Err(unavailable(e));
    }
    let claimed = match core.backplane.claim_session(&mine, old, grace) {
        Some(claim) => claim.await.map_err(unavailable),
        None => Ok(false),
    };
    if !matches!(claimed, Ok(true)) && adopted {
        release(core, ask.id).await;
    }
    if !claimed? {
        return Err(Refusal::new(
            ResumeOutcome::Expired,
            "the session ended or was resumed on another server meanwhile",
        ));
    }
    let alive = match core.backplane.server_alive(old) {
        Some(alive) => alive.await.unwrap_or(true),
        None => false,
    };
    if alive {
        let takeover = hub_core::proto::Command {
            kind: Some(hub_core::proto::command::Kind::Takeover(
                hub_core::proto::Takeover {
                    server: core.node.to_string(),
                },
            )),
        };
        if let Some(fut) = core.backplane.command(old, &[ask.id], &takeover)
            && let Err(e) = fut.await
        {
            HubMetrics::incr(&core.metrics.backplane_errors);
            tracing::warn!(hub = core.service, conn = %ask.id, server = %old, error = %e, "could not tell the session's old server to let go");
        }
    }
    tracing::debug!(hub = core.service, conn = %ask.id, from = %old, alive, "session restored from its record");
    Ok(Restored {
        record: mine,
        secret: ask.secret,
        seq: ask.seq,
    })
}
