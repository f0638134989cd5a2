//! Pushes and commands from outside the hub: a process that is not a hub server (a
//! game loop, a worker) publishes envelopes on the backplane the hub servers share,
//! and every server holding a selected connection delivers or acts on it.
//!
//! - [`Emit`] is what a backend implements: publish one encoded envelope on a group's
//!   channel or subject, or on one server's own (`hub_redis::RedisEmitter`,
//!   `hub_nats::NatsEmitter`). It knows nothing of envelopes.
//! - [`Emitter`] writes the envelopes (with an origin of its own,
//!   `emitter/<name>/<random>`) and routes them: a push to a group, a user or
//!   connections, and the commands (disconnect, remove from a group). Generated
//!   `FooHubEmitter`s wrap it with the hub's typed pushes.
//! - On the servers, [`crate::remote::Inbox`] delivers pushes as any other server's,
//!   and hands the local connections a command selects to the hub runtime
//!   ([`BackplaneEvents::with_commands`]), which closes them or runs the leave path.
//!
//! Delivery is what the backplane gives: at most once, in order per emitter and
//! group (channel). A publish is one `PUBLISH` or NATS publish per channel, bounded by
//! the backend's timeout; it fails with [`GroupError`] when the backplane is down.

use std::sync::Arc;

use bytes::Bytes;

pub use crate::command::{Action, Commanded, MembersRemoved};
use crate::relay::Channel;
use crate::remote::EnvelopeWriter;
use crate::{
    BackplaneEvents, BoxFuture, ConnectionId, Destination, GroupError, GroupName, NodeId, Target,
    proto,
};

impl Destination {
    /// Every connection of the user `user_id` (the group `$user/<id>` the runtime keeps).
    pub fn user(user_id: &str) -> Result<Self, GroupError> {
        Ok(Self::group(GroupName::reserved("user", user_id)?))
    }
}

/// A backplane as a publisher that is not a hub server: one envelope to one
/// channel. Implemented by `hub_redis::RedisEmitter` and `hub_nats::NatsEmitter`;
/// [`Emitter`] does the rest.
pub trait Emit: Send + Sync + 'static {
    /// The backplane's name ("redis", "nats").
    fn name(&self) -> &'static str;

    /// Publishes `envelope` (an encoded `hub.v1.Envelope`) on `channel`
    /// in the hub `hub` (its full name, e.g. `chat.v1.ChatHub`): one publish,
    /// answered within the backend's timeout. Fails with
    /// [`GroupError::Unavailable`] or [`GroupError::Timeout`] when the backplane is
    /// down or stalled, [`GroupError::TooLarge`] when it does not carry that much.
    fn publish<'a>(
        &'a self,
        hub: &'a str,
        channel: Channel<'a>,
        envelope: Bytes,
    ) -> BoxFuture<'a, Result<(), GroupError>>;

    /// Waits (within the backend's timeout) until what was published has been handed
    /// to the backplane server, for a backend that buffers publishes (NATS). Call it
    /// before a process exits. The default has nothing to wait for.
    fn flush(&self) -> BoxFuture<'_, Result<(), GroupError>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether the [`Emitter`] numbers its pushes to each group (`origin_seq`), so
    /// servers detect one lost on the way. Numbering holds a lock of the group's from
    /// the number to the end of `publish` (the numbers go out in order), so a backend
    /// whose `publish` waits for a broker round trip returns `false`: one emitter's
    /// pushes to the groups of one lock would wait for each other's round trips.
    /// Default: `true`.
    fn numbers_pushes(&self) -> bool {
        true
    }

    /// What this backend connects to, for logs and the fingerprint of a sharded
    /// emitter (`ShardedEmit`, in the `shard` module): the same text as the matching
    /// provider's `GroupProvider::describe`. Default: the name.
    fn describe(&self) -> String {
        self.name().to_owned()
    }
}

/// Pushes and commands to one hub's connections from outside the hub, through an
/// [`Emit`] backend. Cheap to clone.
///
/// Each publish goes out at once and is answered by the backend: fire-and-forget
/// (nothing tells whether anyone received it; delivery is at-most-once), with an
/// error when the backplane is down. Envelopes of one emitter to one group arrive in
/// the order they were published.
#[derive(Clone)]
pub struct Emitter {
    emit: Arc<dyn Emit>,
    hub: Arc<str>,
    writer: EnvelopeWriter,
    /// Pushes to connections go through their `$conn/<id>` groups.
    connection_groups: bool,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("hub", &self.hub)
            .field("backplane", &self.emit.name())
            .field("origin", &self.writer.origin())
            .finish()
    }
}

impl Emitter {
    /// An emitter to the hub `hub` (full name) through `emit`, with the origin
    /// `emitter/<backplane name>/<random>`.
    pub fn new(emit: Arc<dyn Emit>, hub: &str) -> Self {
        let writer = EnvelopeWriter::emitter(emit.name());
        Emitter {
            emit,
            hub: Arc::from(hub),
            writer,
            connection_groups: false,
        }
    }

    /// Sends pushes to connection ids through each connection's own group,
    /// `$conn/<id>`, as the hub's servers do with `SessionConfig::connection_history`
    /// on. With group offsets or history in the backend's options, such a push then
    /// gets the group's offset, and with history a session that moves between servers
    /// gets it replayed if it missed it. Set it to match the hub: a connection of a hub
    /// with it off does not listen to `$conn/<id>` (such a push is lost, unseen); with
    /// it off here and on in the hub, pushes still arrive, without the group's
    /// history. Commands (`disconnect`) still go to the server holding the
    /// connection. Default off.
    pub fn connection_groups(mut self, on: bool) -> Self {
        self.connection_groups = on;
        self
    }

    /// Names this emitter in the origin of its envelopes: `emitter/<name>/<random>`
    /// (logs and debugging only: receivers compare origins, never parse them).
    pub fn named(mut self, name: &str) -> Self {
        self.writer = EnvelopeWriter::emitter(name);
        self
    }

    /// The hub's full name.
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// The origin its envelopes carry.
    pub fn origin(&self) -> &str {
        self.writer.origin()
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Emit> {
        &self.emit
    }

    /// Sends one encoded response frame of the hub (a push: `id` 0, one `on_*` case)
    /// to `dest`: one publish on the group's channel, or one per server holding
    /// some of the connections. An empty list of connections sends nothing.
    ///
    /// A push to a group carries the emitter's next number for the group
    /// (`origin_seq`), so servers detect one lost on the way; pushes of one emitter
    /// to one group are numbered and published one after the other. (Not on a
    /// backend whose publish waits for the broker: [`Emit::numbers_pushes`].)
    pub async fn push(&self, dest: &Destination, frame: Bytes) -> Result<(), GroupError> {
        match dest {
            Destination::Connections(ids) if self.connection_groups => {
                // One push to each connection's group, all at once.
                let groups: Vec<GroupName> =
                    ids.iter().map(|id| GroupName::of_connection(*id)).collect();
                let sends = groups.iter().map(|group| -> BoxFuture<'_, _> {
                    Box::pin(self.push_group(group, &Target::All, &frame))
                });
                join_all(sends).await
            }
            Destination::Group { group, target } => self.push_group(group, target, &frame).await,
            Destination::Connections(_) => {
                self.each(dest, |group, target| {
                    self.writer.frame(group, target, &frame)
                })
                .await
            }
        }
    }

    /// A push to the members of `group` that `target` selects: numbered (see
    /// [`Emitter::push`]) unless the backend says not to.
    async fn push_group(
        &self,
        group: &GroupName,
        target: &Target,
        frame: &Bytes,
    ) -> Result<(), GroupError> {
        if self.emit.numbers_pushes() {
            return self
                .writer
                .numbered(group.as_str(), target, frame, |envelope| {
                    self.emit
                        .publish(&self.hub, Channel::Group(group), envelope)
                })
                .await;
        }
        let envelope = self.writer.frame(group.as_str(), target, frame);
        self.emit
            .publish(&self.hub, Channel::Group(group), envelope)
            .await
    }

    /// Closes the connections of `dest` on every server, as the hub's
    /// `Context::close(code, reason)` does: the client gets what was queued for it,
    /// a goodbye with the code and reason, then the stream ends with that status (a
    /// call running at that moment gets no reply).
    pub async fn disconnect(
        &self,
        dest: &Destination,
        code: tonic::Code,
        reason: &str,
    ) -> Result<(), GroupError> {
        let command = proto::Command {
            kind: Some(proto::command::Kind::Disconnect(proto::Disconnect {
                code: code as i32,
                reason: reason.to_owned(),
            })),
        };
        self.each(dest, |group, target| {
            self.writer.command(group, target, &command)
        })
        .await
    }

    /// Removes the members of `group` that `target` selects (only those acting as
    /// `user`, if given) from it: every server holding one runs the leave path (the
    /// registry, the backplane's presence, then the hub's `on_removed` hook). One
    /// publish on the group's channel.
    pub async fn remove(
        &self,
        group: &GroupName,
        target: &Target,
        user: Option<&str>,
    ) -> Result<(), GroupError> {
        if group.as_str().starts_with('$') {
            // Reserved groups are the runtime's (servers refuse to leave them).
            return Err(crate::InvalidGroupName::Reserved(group.to_string()).into());
        }
        let command = proto::Command {
            kind: Some(proto::command::Kind::Leave(proto::Leave {
                user: user.map(str::to_owned),
            })),
        };
        let envelope = self.writer.command(group.as_str(), target, &command);
        self.emit
            .publish(&self.hub, Channel::Group(group), envelope)
            .await
    }

    /// Closes every connection of the user `user_id`, on every server.
    pub async fn disconnect_user(
        &self,
        user_id: &str,
        code: tonic::Code,
        reason: &str,
    ) -> Result<(), GroupError> {
        self.disconnect(&Destination::user(user_id)?, code, reason)
            .await
    }

    /// Closes one connection, on whichever server holds it.
    pub async fn disconnect_connection(
        &self,
        id: ConnectionId,
        code: tonic::Code,
        reason: &str,
    ) -> Result<(), GroupError> {
        self.disconnect(&Destination::Connections(Arc::from([id])), code, reason)
            .await
    }

    /// Removes every connection of the user `user_id` from `group`, on every server.
    pub async fn remove_user(&self, group: &GroupName, user_id: &str) -> Result<(), GroupError> {
        self.remove(group, &Target::All, Some(user_id)).await
    }

    /// Waits until what was published reached the backplane server ([`Emit::flush`]).
    pub async fn flush(&self) -> Result<(), GroupError> {
        self.emit.flush().await
    }

    /// Publishes the envelope `write(group, target)` makes for `dest`: one on the
    /// group's channel, or one per server on its own channel.
    async fn each(
        &self,
        dest: &Destination,
        write: impl Fn(&str, &Target) -> Bytes,
    ) -> Result<(), GroupError> {
        match dest {
            Destination::Group { group, target } => {
                let envelope = write(group.as_str(), target);
                self.emit
                    .publish(&self.hub, Channel::Group(group), envelope)
                    .await
            }
            Destination::Connections(ids) => {
                let mut by_node: std::collections::BTreeMap<NodeId, Vec<ConnectionId>> =
                    Default::default();
                for id in ids.iter() {
                    by_node.entry(id.node).or_default().push(*id);
                }
                let sends = by_node.into_iter().map(|(node, ids)| {
                    let envelope = write("", &Target::Only(ids.into()));
                    self.emit.publish(&self.hub, Channel::Node(node), envelope)
                });
                join_all(sends).await
            }
        }
    }
}

/// Runs the publishes together; the first error, if any.
async fn join_all(
    sends: impl Iterator<Item = BoxFuture<'_, Result<(), GroupError>>>,
) -> Result<(), GroupError> {
    let mut set: Vec<BoxFuture<'_, Result<(), GroupError>>> = sends.collect();
    // Few servers at most: poll them all until each is done.
    let mut first_error = None;
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(r) => {
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
                false
            }
            std::task::Poll::Pending => true,
        });
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A push from an [`Emitter`] to a selection of connections, before its frame is
/// known: what generated `FooHubEmitterPush` types wrap.
#[derive(Clone, Debug)]
pub struct EmitPush {
    emitter: Emitter,
    dest: Destination,
}

impl EmitPush {
    /// A push of `emitter` to `dest`.
    pub fn new(emitter: Emitter, dest: Destination) -> Self {
        EmitPush { emitter, dest }
    }

    /// Who receives it.
    pub fn destination(&self) -> &Destination {
        &self.dest
    }

    /// Leaves these connections out.
    pub fn except(mut self, ids: impl IntoIterator<Item = ConnectionId>) -> Self {
        let ids: Vec<ConnectionId> = ids.into_iter().collect();
        self.dest = self.dest.except(&ids);
        self
    }

    /// Keeps only these connections.
    pub fn only(mut self, ids: impl IntoIterator<Item = ConnectionId>) -> Self {
        let ids: Vec<ConnectionId> = ids.into_iter().collect();
        self.dest = self.dest.only(&ids);
        self
    }

    /// Sends one encoded push frame ([`Emitter::push`]).
    pub async fn send_frame(&self, frame: Bytes) -> Result<(), GroupError> {
        self.emitter.push(&self.dest, frame).await
    }
}

/// The runtime's callback for commands (see [`BackplaneEvents::with_commands`]).
#[derive(Clone, Default)]
pub(crate) struct CommandHook(Option<Arc<dyn Fn(Commanded) + Send + Sync>>);

impl BackplaneEvents {
    /// These events, with `on_command` called with each command received for local
    /// connections. It must return quickly (the runtime spawns what takes time).
    /// Without it, commands are dropped.
    pub fn with_commands(mut self, on_command: impl Fn(Commanded) + Send + Sync + 'static) -> Self {
        self.commands = CommandHook(Some(Arc::new(on_command)));
        self
    }

    /// Reports a command for local connections.
    pub fn commanded(&self, command: Commanded) {
        if let Some(hook) = &self.commands.0
            && !command.members.is_empty()
        {
            hook(command);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what it would publish.
    #[derive(Default)]
    struct Record(Mutex<Vec<(String, String, proto::Envelope)>>);

    impl Emit for Record {
        fn name(&self) -> &'static str {
            "record"
        }
        fn publish<'a>(
            &'a self,
            hub: &'a str,
            route: Channel<'a>,
            envelope: Bytes,
        ) -> BoxFuture<'a, Result<(), GroupError>> {
            let route = match route {
                Channel::Group(g) => format!("g:{g}"),
                Channel::Node(n) => format!("n:{n}"),
            };
            let env = <proto::Envelope as prost::Message>::decode(envelope).expect("decodes");
            self.0
                .lock()
                .expect("lock")
                .push((hub.to_owned(), route, env));
            Box::pin(async { Ok(()) })
        }
    }

    fn id(node: u64, local: u64) -> ConnectionId {
        ConnectionId {
            node: NodeId(node),
            local,
        }
    }

    #[tokio::test]
    async fn routes_pushes_and_commands() {
        let rec = Arc::new(Record::default());
        let em = Emitter::new(rec.clone(), "t.v1.T").named("loop");
        assert!(em.origin().starts_with("emitter/loop/"));
        let room = GroupName::new("room").expect("valid");
        let f = Bytes::from_static(b"\x08\x00");
        em.push(
            &Destination::group(room.clone()).except(&[id(1, 1)]),
            f.clone(),
        )
        .await
        .expect("push");
        em.push(
            &Destination::Connections(Arc::from([id(2, 1), id(3, 1), id(2, 2)])),
            f.clone(),
        )
        .await
        .expect("push");
        em.disconnect_user("ann", tonic::Code::PermissionDenied, "banned")
            .await
            .expect("disconnect");
        em.remove_user(&room, "ann").await.expect("remove");
        assert!(
            em.remove(
                &GroupName::reserved("user", "ann").expect("valid"),
                &Target::All,
                None
            )
            .await
            .is_err()
        );
        let got = rec.0.lock().expect("lock").clone();
        let routes: Vec<&str> = got.iter().map(|(_, r, _)| r.as_str()).collect();
        assert_eq!(
            routes,
            [
                "g:room",
                "n:0000000000000002",
                "n:0000000000000003",
                "g:$user/ann",
                "g:room"
            ]
        );
        assert!(got.iter().all(|(hub, _, e)| hub == "t.v1.T"
            && e.origin == em.origin()
            && e.version == crate::remote::ENVELOPE_VERSION));
        assert_eq!(
            Target::from_proto(got[0].2.target.as_ref()),
            Target::Except(Arc::from([id(1, 1)]))
        );
        assert_eq!(&got[0].2.frame[..], &f[..]);
        assert_eq!(
            Target::from_proto(got[1].2.target.as_ref()),
            Target::Only(Arc::from([id(2, 1), id(2, 2)]))
        );
        assert_eq!(got[1].2.group, "");
        assert!(matches!(
            &got[3].2.command,
            Some(proto::Command { kind: Some(proto::command::Kind::Disconnect(d)) })
                if d.code == tonic::Code::PermissionDenied as i32 && d.reason == "banned"
        ));
        assert!(matches!(
            &got[4].2.command,
            Some(proto::Command { kind: Some(proto::command::Kind::Leave(l)) })
                if l.user.as_deref() == Some("ann")
        ));
    }
}
