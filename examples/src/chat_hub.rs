//! The chat hub's implementation.
//!
//! State lives in the groups alone: the room is the connection's one group, the user
//! name is the connection's authenticated user (`Context::user_id`, from the bearer
//! token of its `Connect` request, see [`crate::auth`]), so it works the same with the
//! in-memory, Redis and NATS providers, across servers. No call names a user for
//! itself: whoever a connection is, its says, whispers and leaves are from that user.

use hub_server::quote::quote;
use hub_server::{DisconnectReason, MembersLost, MembersRemoved};
use tonic::Status;

use crate::chat::chat_hub_server::{ChatHub, ChatHubContext, ChatHubHandle};
use crate::chat::{
    ChatMessage, CheckReadyRequest, JoinRequest, MemberReady, MembersReply, ReadyCheck,
    ReadyReport, ReadyState, SayRequest, UserEvent, WhisperRequest,
};
use hub_server::AskOutcome;

/// The chat hub.
#[derive(Debug, Default, Clone)]
pub struct Chat;

fn room_of(ctx: &ChatHubContext) -> Option<String> {
    ctx.groups()
        .into_iter()
        .find(|g| !g.as_str().starts_with('$'))
        .map(|g| g.to_string())
}

fn require_room(ctx: &ChatHubContext) -> Result<String, Status> {
    room_of(ctx).ok_or_else(|| Status::failed_precondition("not in a room: call join first"))
}

fn user_of(ctx: &ChatHubContext) -> String {
    ctx.user_id().map(|u| u.to_string()).unwrap_or_default()
}

async fn members_reply(ctx: &ChatHubContext, room: &str) -> Result<MembersReply, Status> {
    let members = ctx.members(room).await?;
    let count = members.len() as u64;
    let mut names: Vec<String> = members.into_iter().filter_map(|m| m.user).collect();
    names.sort();
    Ok(MembersReply {
        room: room.to_owned(),
        members: names,
        count,
    })
}

async fn leave_room(ctx: &ChatHubContext, room: &str) -> Result<(), Status> {
    ctx.leave(room).await?;
    ctx.group(room)?
        .on_leave(UserEvent {
            room: room.to_owned(),
            user: user_of(ctx),
        })
        .await?;
    Ok(())
}

impl ChatHub for Chat {
    async fn join(&self, ctx: &ChatHubContext, req: JoinRequest) -> Result<MembersReply, Status> {
        // The hub is served with `require_identity`: every connection has a user.
        let user = ctx
            .user_id()
            .ok_or_else(|| Status::unauthenticated("connect with a bearer token to join"))?;
        // Validate the room before changing anything.
        hub_server::GroupName::new(&req.room)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(old) = room_of(ctx) {
            if old == req.room {
                return members_reply(ctx, &old).await;
            }
            leave_room(ctx, &old).await?;
        }
        ctx.join(&req.room).await?;
        ctx.group(&req.room)?
            .except([ctx.connection_id()])
            .on_join(UserEvent {
                room: req.room.clone(),
                user: user.to_string(),
            })
            .await?;
        members_reply(ctx, &req.room).await
    }

    async fn leave(&self, ctx: &ChatHubContext) -> Result<(), Status> {
        let room = require_room(ctx)?;
        leave_room(ctx, &room).await
    }

    async fn say(&self, ctx: &ChatHubContext, req: SayRequest) -> Result<(), Status> {
        let room = require_room(ctx)?;
        ctx.group(&room)?
            .except([ctx.connection_id()])
            .on_message(ChatMessage {
                room,
                from: user_of(ctx),
                text: req.text,
            })
            .await?;
        Ok(())
    }

    async fn whisper(&self, ctx: &ChatHubContext, req: WhisperRequest) -> Result<(), Status> {
        let room = require_room(ctx)?;
        let target = ctx.user(&req.user).map_err(|_| {
            Status::invalid_argument(format!("not a user name: {}", quote(&req.user)))
        })?;
        if ctx.hub().user_connections(&req.user).await? == 0 {
            return Err(Status::not_found(format!(
                "no user named {} is connected",
                quote(&req.user)
            )));
        }
        target
            .on_whisper(ChatMessage {
                room,
                from: user_of(ctx),
                text: req.text,
            })
            .await?;
        Ok(())
    }

    async fn members(&self, ctx: &ChatHubContext) -> Result<MembersReply, Status> {
        let room = require_room(ctx)?;
        members_reply(ctx, &room).await
    }

    async fn check_ready(
        &self,
        ctx: &ChatHubContext,
        req: CheckReadyRequest,
    ) -> Result<ReadyReport, Status> {
        let room = require_room(ctx)?;
        let mut group = ctx.group(&room)?;
        if req.timeout_ms > 0 {
            group = group.ask_timeout(std::time::Duration::from_millis(req.timeout_ms.min(60_000)));
        }
        // Every member of the room, on every server, the asker included: its own
        // answer is read by its connection's reader while this call waits.
        let replies = group
            .ready_check(ReadyCheck {
                room: room.clone(),
                from: user_of(ctx),
            })
            .await?;
        let members = replies
            .into_iter()
            .map(|r| {
                let (state, detail) = match r.outcome {
                    AskOutcome::Answered(a) if a.ready => (ReadyState::Ready, String::new()),
                    AskOutcome::Answered(_) => (ReadyState::NotReady, String::new()),
                    AskOutcome::Failed(s) => (
                        ReadyState::Failed,
                        format!("{:?}: {}", s.code(), s.message()),
                    ),
                    AskOutcome::TimedOut => (ReadyState::TimedOut, String::new()),
                    AskOutcome::Disconnected(why) => (ReadyState::Disconnected, why),
                    AskOutcome::Unreachable(why) => (ReadyState::Unreachable, why),
                };
                MemberReady {
                    user: r.user.unwrap_or_default(),
                    connection: r.connection.to_string(),
                    state: state as i32,
                    detail,
                }
            })
            .collect();
        Ok(ReadyReport { room, members })
    }

    async fn on_members_lost(&self, hub: &ChatHubHandle, lost: &MembersLost) {
        // Members of a server that died: no `on_disconnect` ran for them, so each
        // surviving server tells its own members of the room (`local`).
        if lost.group.as_str().starts_with('$') {
            return;
        }
        let Ok(push) = hub.group(lost.group.as_str()) else {
            return;
        };
        for member in &lost.members {
            let left = UserEvent {
                room: lost.group.to_string(),
                user: member.user.clone().unwrap_or_default(),
            };
            if let Err(e) = push.clone().local().on_leave(left).await {
                tracing::warn!(error = %e, "could not tell the room about a lost member");
            }
        }
    }

    async fn on_removed(&self, hub: &ChatHubHandle, removed: &MembersRemoved) {
        // Removed from the room by a command from outside the hub (a game loop's
        // `ChatHubEmitter::remove_from_group`): tell the room, as `leave` does.
        let Ok(push) = hub.group(removed.group.as_str()) else {
            return;
        };
        for member in &removed.members {
            let left = UserEvent {
                room: removed.group.to_string(),
                user: member.user.clone().unwrap_or_default(),
            };
            if let Err(e) = push.clone().on_leave(left).await {
                tracing::warn!(error = %e, "could not tell the room about a removed member");
            }
        }
    }

    async fn on_disconnect(&self, ctx: &ChatHubContext, _reason: &DisconnectReason) {
        if let Some(room) = room_of(ctx)
            && let Ok(push) = ctx.group(&room)
        {
            let left = UserEvent {
                room,
                user: user_of(ctx),
            };
            if let Err(e) = push.except([ctx.connection_id()]).on_leave(left).await {
                tracing::warn!(error = %e, "could not tell the room about a disconnect");
            }
        }
    }
}
