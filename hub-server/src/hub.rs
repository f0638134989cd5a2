//! What a hub's connections, contexts, pushes and service share: [`HubCore`] (the
//! untyped part of a hub) and [`HubShared`] (it, with the typed dispatch). Its own
//! module, so that the service, the connection task and the contexts each import it
//! and none of them imports another.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hub_core::session::{SessionGroup, SessionRecord};

use hub_core::{
    Backplane, ConnectionId, Delivery, GroupError, GroupName, HubMetrics, LocalGroups, MemberInfo,
    NodeId,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{HubConfig, PushError};

/// The most bytes the writer appends to a push: `seq` (field 2) as a varint.
pub(crate) const SEQ_SUFFIX_BYTES: usize = 11;

/// The untyped part of a hub, shared by its connections, contexts and pushes.
pub(crate) struct HubCore {
    /// The full service name, for logs and the hello frame.
    pub(crate) service: &'static str,
    /// This server.
    pub(crate) node: NodeId,
    /// Local members and delivery.
    pub(crate) local: Arc<LocalGroups>,
    /// What crosses servers (nothing, for the in-memory provider).
    pub(crate) backplane: Arc<dyn Backplane>,
    /// Limits and timings.
    pub(crate) config: HubConfig,
    /// Counters.
    pub(crate) metrics: Arc<HubMetrics>,
    /// Cancelled when the hub (or the whole server) shuts down.
    pub(crate) shutdown: CancellationToken,
    /// Why it shut down, for the goodbye frames.
    pub(crate) shutdown_reason: OnceLock<String>,
    /// Source of connection ids.
    pub(crate) next_conn: AtomicU64,
    /// Pinged when a connection ends (shutdown waits on it).
    pub(crate) conn_closed: Notify,
    /// The server-wide budget of bytes queued to clients.
    pub(crate) outbound: Arc<hub_core::OutboundBudget>,
    /// Sessions of connections, on a hub that keeps them.
    pub(crate) sessions: Option<crate::session::Sessions>,
    /// Asks waiting for answers on this server.
    pub(crate) asks: crate::ask_table::Asks,
}

impl HubCore {
    pub(crate) async fn join(
        &self,
        group: &GroupName,
        id: ConnectionId,
        user: Option<String>,
    ) -> Result<(), GroupError> {
        let outcome = self
            .local
            .join(group, id)
            .ok_or(GroupError::NotConnected(id))?;
        self.count_groups();
        if outcome.added {
            let info = MemberInfo {
                connection: id,
                user,
            };
            if let Some(fut) = self.backplane.joined(group, &info, outcome.first_local) {
                let joined = if self.positions_recorded(group) {
                    // The record keeps where the session joined: asked once the
                    // subscription is up, then written.
                    let joined = fut.await;
                    if joined.is_ok() {
                        self.record_position(group, id).await;
                    }
                    self.save_record(id).await;
                    joined
                } else {
                    // The session's record (if any) in the same round trip.
                    let (joined, ()) = tokio::join!(fut, self.save_record(id));
                    joined
                };
                if let Err(e) = joined {
                    HubMetrics::incr(&self.metrics.backplane_errors);
                    // Undo, so local state matches what other servers know.
                    let left = self.local.leave(group, id);
                    self.count_groups();
                    if let Some(fut) = self.backplane.left(group, &info, left.last_local) {
                        let _ = fut.await;
                    }
                    self.save_record(id).await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn leave(
        &self,
        group: &GroupName,
        id: ConnectionId,
        user: Option<String>,
    ) -> Result<bool, GroupError> {
        let outcome = self.local.leave(group, id);
        self.count_groups();
        if outcome.removed {
            let info = MemberInfo {
                connection: id,
                user,
            };
            if let Some(fut) = self.backplane.left(group, &info, outcome.last_local) {
                let (left, ()) = tokio::join!(fut, self.save_record(id));
                if let Err(e) = left {
                    HubMetrics::incr(&self.metrics.backplane_errors);
                    return Err(e);
                }
            }
        }
        Ok(outcome.removed)
    }

    /// The group that pushes to connection `id` go through
    /// ([`SessionConfig::connection_history`](crate::SessionConfig::connection_history)):
    /// `$conn/<id>`, on a hub that routes them so and whose backplane keeps that
    /// group's history. `None`: they go to the server holding the connection.
    pub(crate) fn connection_group(&self, id: ConnectionId) -> Option<GroupName> {
        if !self
            .sessions
            .as_ref()
            .is_some_and(|s| s.config.connection_history)
        {
            return None;
        }
        let group = GroupName::of_connection(id);
        self.backplane.echoes_own_pushes(&group).then_some(group)
    }

    /// Whether a session's record keeps where it joined `group`: sessions are shared
    /// and the group's backplane keeps its history.
    fn positions_recorded(&self, group: &GroupName) -> bool {
        self.shares_sessions() && self.backplane.echoes_own_pushes(group)
    }

    /// Keeps where the session of `id` joins `group` now, for its record (unless it
    /// is known already: a restored session rejoining where its replay starts). A
    /// failure is counted and logged: the record then keeps no position for the
    /// group, and a resume elsewhere tells its pushes as lost unless the client
    /// presents where it is.
    async fn record_position(&self, group: &GroupName, id: ConnectionId) {
        let Some(session) = self.sessions.as_ref().and_then(|s| s.get(id)) else {
            return;
        };
        let mut positions = session.record.lock().await;
        if positions.contains_key(group) {
            return;
        }
        let Some(fut) = self.backplane.group_position(group) else {
            return;
        };
        match fut.await {
            Ok(at) => {
                positions.insert(group.clone(), at);
            }
            Err(e) => {
                HubMetrics::incr(&self.metrics.backplane_errors);
                tracing::warn!(hub = self.service, conn = %id, group = %group, error = %e, "could not read the group's position for the session record");
            }
        }
    }

    /// Writes the backplane's record of the session of `id` (if it has one, on a
    /// backplane that shares sessions) from the registry as it is now. Writes of one
    /// session are serialized, so the last one written is the latest state. A failure is
    /// counted (`backplane_errors`) and logged: the session goes on, but may not be
    /// resumable on another server until its next join or leave.
    pub(crate) async fn save_record(&self, id: ConnectionId) {
        let core = self;
        if !core.shares_sessions() {
            return;
        }
        let Some(session) = core.sessions.as_ref().and_then(|s| s.get(id)) else {
            return;
        };
        let mut positions = session.record.lock().await;
        if session.io().ended {
            return;
        }
        let mine = core.local.groups_of(id);
        positions.retain(|g, _| mine.contains(g));
        let mut groups: Vec<SessionGroup> = mine
            .into_iter()
            .map(|group| SessionGroup {
                joined_at: positions.get(&group).copied(),
                group,
            })
            .collect();
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        let record = SessionRecord {
            connection: id,
            secret_sha256: session.secret_sha256,
            user: session.user.as_deref().map(str::to_owned),
            hub: core.service.to_owned(),
            server: core.node,
            groups,
        };
        let grace = core
            .sessions
            .as_ref()
            .map_or(Duration::ZERO, |s| s.config.grace);
        if let Some(fut) = core.backplane.save_session(&record, grace)
            && let Err(e) = fut.await
        {
            HubMetrics::incr(&core.metrics.backplane_errors);
            tracing::warn!(hub = core.service, conn = %id, error = %e, "could not write the session record");
        }
    }

    /// Whether this hub keeps sessions and its backplane shares them.
    pub(crate) fn shares_sessions(&self) -> bool {
        self.sessions.is_some() && self.backplane.shares_sessions()
    }

    /// The largest frame this hub sends (replies, pushes with their sequence number),
    /// as the hello advertises it: the hub's own limit, and no more than the
    /// backplane carries (a push must reach every server).
    pub(crate) fn max_outbound(&self) -> usize {
        let own = self.config.outbound_limit();
        match self.backplane.max_frame_bytes() {
            Some(b) => own.min(b.saturating_add(SEQ_SUFFIX_BYTES)),
            None => own,
        }
    }

    pub(crate) async fn member_count(&self, group: &GroupName) -> Result<u64, GroupError> {
        match self.backplane.member_count(group) {
            Some(fut) => fut.await.inspect_err(|_| {
                HubMetrics::incr(&self.metrics.backplane_errors);
            }),
            None => Ok(self.local.count(group.as_str()) as u64),
        }
    }

    pub(crate) async fn members(&self, group: &GroupName) -> Result<Vec<MemberInfo>, GroupError> {
        match self.backplane.members(group) {
            Some(fut) => fut.await.inspect_err(|_| {
                HubMetrics::incr(&self.metrics.backplane_errors);
            }),
            None => Ok(self.local.members(group.as_str())),
        }
    }

    /// Sets the groups gauge from the registry (after a join or leave).
    pub(crate) fn count_groups(&self) {
        self.metrics.groups.set(self.local.group_count() as f64);
    }

    /// Books the outcome of a backplane publish.
    pub(crate) fn published(
        &self,
        result: Result<(), GroupError>,
        d: &mut Delivery,
    ) -> Result<(), PushError> {
        match result {
            Ok(()) => {
                HubMetrics::incr(&self.metrics.backplane_published);
                d.published = true;
                Ok(())
            }
            Err(source) => {
                HubMetrics::incr(&self.metrics.backplane_publish_failures);
                tracing::warn!(hub = self.service, error = %source, "publish to backplane failed");
                Err(PushError::Backplane {
                    delivery: *d,
                    source,
                })
            }
        }
    }

    pub(crate) fn begin_shutdown(&self, reason: &str) {
        let _ = self.shutdown_reason.set(reason.to_owned());
        self.shutdown.cancel();
    }

    pub(crate) async fn wait_closed(&self) {
        loop {
            let notified = self.conn_closed.notified();
            // Every connection gone, and every `on_disconnect` hook done.
            let m = self.metrics.snapshot();
            if self.local.connections() == 0 && m.connections_opened == m.connections_closed {
                break;
            }
            notified.await;
        }
        if let Some(fut) = self.backplane.shutdown() {
            fut.await;
        }
    }
}

pub(crate) struct HubShared<D> {
    pub(crate) dispatch: D,
    pub(crate) core: Arc<HubCore>,
    /// Who a connection is, read once per `Connect`.
    pub(crate) identity: crate::identity::IdentityConfig,
}
