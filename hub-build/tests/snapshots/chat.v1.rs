/// Server side of the `chat.v1.ChatHub` hub.
pub mod chat_hub_server {
    #![allow(
        unused_variables,
        dead_code,
        missing_docs,
        clippy::let_unit_value,
        clippy::unit_arg,
        clippy::single_match,
        clippy::match_single_binding
    )]
    /// The per-call context of this hub: connection id, metadata, groups, typed pushes.
    pub type ChatHubContext = ::hub_server::codegen::Context<ChatHubPush>;
    /// A handle on this hub for pushes from outside calls, counts, metrics and shutdown.
    pub type ChatHubHandle = ::hub_server::codegen::HubHandle<ChatHubPush>;
    /// The `chat.v1.ChatHub` hub: implement it, then serve it with [`ChatHubServer`].
    /// A chat lobby: join a room, talk to everyone in it, whisper to one user.
    ///
    /// `Connect` needs `authorization: Bearer <token>` metadata (a token from
    /// `chat.v1.ChatLogin/Login`, or from the identity provider in front of the server);
    /// without a valid one the stream is refused with UNAUTHENTICATED.
    ///
    /// Calls from one connection run one at a time, in order.
    pub trait ChatHub: Send + Sync + 'static {
        /// Join a room (as the user of the connection's token); replies with the room's
        /// members.
        fn join(
            &self,
            ctx: &ChatHubContext,
            request: super::JoinRequest,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<
                super::MembersReply,
                ::hub_server::codegen::tonic::Status,
            >,
        > + Send;
        /// Leave the current room.
        fn leave(
            &self,
            ctx: &ChatHubContext,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<(), ::hub_server::codegen::tonic::Status>,
        > + Send;
        /// Say something to every other member of the room.
        fn say(
            &self,
            ctx: &ChatHubContext,
            request: super::SayRequest,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<(), ::hub_server::codegen::tonic::Status>,
        > + Send;
        /// Say something to one user's connections only.
        fn whisper(
            &self,
            ctx: &ChatHubContext,
            request: super::WhisperRequest,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<(), ::hub_server::codegen::tonic::Status>,
        > + Send;
        /// List the room's members.
        fn members(
            &self,
            ctx: &ChatHubContext,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<
                super::MembersReply,
                ::hub_server::codegen::tonic::Status,
            >,
        > + Send;
        /// A ready check: asks every member of the room (on every server) whether they
        /// are ready, and replies with each member's outcome.
        fn check_ready(
            &self,
            ctx: &ChatHubContext,
            request: super::CheckReadyRequest,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<
                super::ReadyReport,
                ::hub_server::codegen::tonic::Status,
            >,
        > + Send;
        /// Called when a client connects, before any call. An error refuses the
        /// connection with that status (e.g. `unauthenticated`).
        fn on_connect(
            &self,
            ctx: &ChatHubContext,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<(), ::hub_server::codegen::tonic::Status>,
        > + Send {
            async { Ok(()) }
        }
        /// Called when a connection ends, once it has left its groups
        /// (`ctx.groups()` still lists them).
        fn on_disconnect(
            &self,
            ctx: &ChatHubContext,
            reason: &::hub_server::codegen::DisconnectReason,
        ) -> impl ::core::future::Future<Output = ()> + Send {
            async {}
        }
        /// On a hub with sessions (`HubConfig::sessions`): called when the
        /// connection's stream broke and its session waits for a resume (it is
        /// still a member of its groups). `on_disconnect` runs later if no resume
        /// comes within the grace period.
        fn on_transport_lost(
            &self,
            ctx: &ChatHubContext,
            reason: &::hub_server::codegen::DisconnectReason,
        ) -> impl ::core::future::Future<Output = ()> + Send {
            async {}
        }
        /// On a hub with sessions: called when a new stream resumed the
        /// connection's session (same connection id, groups kept).
        fn on_resumed(
            &self,
            ctx: &ChatHubContext,
        ) -> impl ::core::future::Future<Output = ()> + Send {
            async {}
        }
        /// Called on every server with local members of `lost.group` when members
        /// on another server are gone because that server died (no
        /// `on_disconnect` ran for them). Pushes with `.local()` reach this
        /// server's members only, so each server tells its own.
        fn on_members_lost(
            &self,
            hub: &ChatHubHandle,
            lost: &::hub_server::codegen::MembersLost,
        ) -> impl ::core::future::Future<Output = ()> + Send {
            async {}
        }
        /// Called on each server whose connections were removed from
        /// `removed.group` by a command from outside the hub (an emitter's
        /// `remove_from_group`), once they have left it, as after a leave on
        /// the server: tell the group here (the chat hub pushes `on_leave`).
        fn on_removed(
            &self,
            hub: &ChatHubHandle,
            removed: &::hub_server::codegen::MembersRemoved,
        ) -> impl ::core::future::Future<Output = ()> + Send {
            async {}
        }
    }
    /// Typed pushes of this hub to a selection of connections.
    #[derive(Clone, Debug)]
    pub struct ChatHubPush(::hub_server::codegen::Push);
    impl ::core::convert::From<::hub_server::codegen::Push> for ChatHubPush {
        fn from(p: ::hub_server::codegen::Push) -> Self {
            ChatHubPush(p)
        }
    }
    impl ChatHubPush {
        /// Leaves these connections out (typically the caller).
        pub fn except(
            self,
            ids: impl IntoIterator<Item = ::hub_server::codegen::ConnectionId>,
        ) -> Self {
            ChatHubPush(self.0.except(ids))
        }
        /// Keeps only these connections.
        pub fn only(
            self,
            ids: impl IntoIterator<Item = ::hub_server::codegen::ConnectionId>,
        ) -> Self {
            ChatHubPush(self.0.only(ids))
        }
        /// Delivers to this server's connections only (nothing crosses servers).
        pub fn local(self) -> Self {
            ChatHubPush(self.0.local())
        }
        /// How long the asks of this selection wait for each answer (default
        /// `HubConfig::ask_timeout`, 5 s).
        pub fn ask_timeout(self, timeout: ::std::time::Duration) -> Self {
            ChatHubPush(self.0.ask_timeout(timeout))
        }
        /// Push: someone joined the room.
        ///
        /// Encodes the push once and sends it to every selected connection.
        pub async fn on_join(
            &self,
            message: super::UserEvent,
        ) -> ::core::result::Result<
            ::hub_server::codegen::Delivery,
            ::hub_server::codegen::PushError,
        > {
            let frame = ::hub_server::codegen::encode(
                &super::ChatResponse {
                    event: Some(super::chat_response::Event::OnJoin(message)),
                    ..::core::default::Default::default()
                },
            );
            self.0.send_frame(frame).await
        }
        /// Push: someone left the room.
        ///
        /// Encodes the push once and sends it to every selected connection.
        pub async fn on_leave(
            &self,
            message: super::UserEvent,
        ) -> ::core::result::Result<
            ::hub_server::codegen::Delivery,
            ::hub_server::codegen::PushError,
        > {
            let frame = ::hub_server::codegen::encode(
                &super::ChatResponse {
                    event: Some(super::chat_response::Event::OnLeave(message)),
                    ..::core::default::Default::default()
                },
            );
            self.0.send_frame(frame).await
        }
        /// Push: a message said in the room.
        ///
        /// Encodes the push once and sends it to every selected connection.
        pub async fn on_message(
            &self,
            message: super::ChatMessage,
        ) -> ::core::result::Result<
            ::hub_server::codegen::Delivery,
            ::hub_server::codegen::PushError,
        > {
            let frame = ::hub_server::codegen::encode(
                &super::ChatResponse {
                    event: Some(super::chat_response::Event::OnMessage(message)),
                    ..::core::default::Default::default()
                },
            );
            self.0.send_frame(frame).await
        }
        /// Push: a message whispered to this user.
        ///
        /// Encodes the push once and sends it to every selected connection.
        pub async fn on_whisper(
            &self,
            message: super::ChatMessage,
        ) -> ::core::result::Result<
            ::hub_server::codegen::Delivery,
            ::hub_server::codegen::PushError,
        > {
            let frame = ::hub_server::codegen::encode(
                &super::ChatResponse {
                    event: Some(super::chat_response::Event::OnWhisper(message)),
                    ..::core::default::Default::default()
                },
            );
            self.0.send_frame(frame).await
        }
        /// Ask: a member of the room asks whether this member is ready; answer with
        /// `ChatRequest.ready_check` (and `control.answer` carrying this frame's
        /// `control.ask.id`).
        ///
        /// An ask: sends it to every selected connection (on any server) and waits
        /// for each one's answer, up to the ask's timeout. One reply per target.
        pub async fn ready_check(
            &self,
            message: super::ReadyCheck,
        ) -> ::core::result::Result<
            ::std::vec::Vec<::hub_server::codegen::AskReply<super::ReadyAnswer>>,
            ::hub_server::codegen::GroupError,
        > {
            let frame = ::hub_server::codegen::encode(
                &super::ChatResponse {
                    event: Some(super::chat_response::Event::ReadyCheck(message)),
                    ..::core::default::Default::default()
                },
            );
            let replies = self.0.ask_frame(frame).await?;
            Ok(
                ::hub_server::codegen::decode_answers(
                    replies,
                    |bytes| {
                        match <super::ChatRequest as ::hub_server::codegen::prost::Message>::decode(
                            bytes,
                        ) {
                            Ok(
                                super::ChatRequest {
                                    answer: Some(super::chat_request::Answer::ReadyCheck(a)),
                                    ..
                                },
                            ) => Ok(a),
                            Ok(_) => {
                                Err(
                                    ::hub_server::codegen::tonic::Status::invalid_argument(
                                        "the answer is not a `ready_check` answer",
                                    ),
                                )
                            }
                            Err(e) => {
                                Err(
                                    ::hub_server::codegen::tonic::Status::invalid_argument(
                                        e.to_string(),
                                    ),
                                )
                            }
                        }
                    },
                ),
            )
        }
    }
    /// The hub as a tonic service.
    pub struct ChatHubServer<T> {
        inner: ::hub_server::codegen::HubService<Adapter<T>>,
    }
    impl<T: ChatHub> ChatHubServer<T> {
        /// Serves `hub` with in-memory groups and the default config.
        pub fn new(hub: T) -> Self {
            Self::from_arc(::std::sync::Arc::new(hub))
        }
        /// Serves a shared `hub`.
        pub fn from_arc(hub: ::std::sync::Arc<T>) -> Self {
            ChatHubServer {
                inner: ::hub_server::codegen::HubService::new(Adapter(hub)),
            }
        }
        /// Starts a builder (group provider, config, server-wide defaults).
        pub fn builder(hub: T) -> ChatHubServerBuilder<T> {
            ChatHubServerBuilder {
                inner: ::hub_server::codegen::HubService::builder(
                    Adapter(::std::sync::Arc::new(hub)),
                ),
            }
        }
        /// A handle for pushes from outside calls, counts, metrics and shutdown.
        pub fn handle(&self) -> ChatHubHandle {
            self.inner.handle()
        }
    }
    /// Builds a [`ChatHubServer`].
    pub struct ChatHubServerBuilder<T> {
        inner: ::hub_server::codegen::HubServiceBuilder<Adapter<T>>,
    }
    impl<T: ChatHub> ChatHubServerBuilder<T> {
        /// Takes the server-wide defaults from `hubs`.
        pub fn hubs(self, hubs: &::hub_server::codegen::Hubs) -> Self {
            ChatHubServerBuilder {
                inner: self.inner.hubs(hubs),
            }
        }
        /// This hub's group provider.
        pub fn groups(
            self,
            provider: impl ::hub_server::codegen::GroupProvider,
        ) -> Self {
            ChatHubServerBuilder {
                inner: self.inner.groups(provider),
            }
        }
        /// This hub's group provider, shared.
        pub fn groups_arc(
            self,
            provider: ::std::sync::Arc<dyn ::hub_server::codegen::GroupProvider>,
        ) -> Self {
            ChatHubServerBuilder {
                inner: self.inner.groups_arc(provider),
            }
        }
        /// This hub's config.
        pub fn config(self, config: ::hub_server::codegen::HubConfig) -> Self {
            ChatHubServerBuilder {
                inner: self.inner.config(config),
            }
        }
        /// How this hub learns who a connection is (see `hub_server::identity`).
        pub fn identity(
            self,
            provider: impl ::hub_server::codegen::IdentityProvider,
        ) -> Self {
            ChatHubServerBuilder {
                inner: self.inner.identity(provider),
            }
        }
        /// Whether this hub refuses `Connect` without an identity (`UNAUTHENTICATED`).
        pub fn require_identity(self, required: bool) -> Self {
            ChatHubServerBuilder {
                inner: self.inner.require_identity(required),
            }
        }
        /// Binds the hub to its group provider.
        pub fn build(
            self,
        ) -> ::core::result::Result<
            ChatHubServer<T>,
            ::hub_server::codegen::GroupError,
        > {
            Ok(ChatHubServer {
                inner: self.inner.build()?,
            })
        }
    }
    impl<T> ::core::clone::Clone for ChatHubServer<T> {
        fn clone(&self) -> Self {
            ChatHubServer {
                inner: self.inner.clone(),
            }
        }
    }
    impl<T> ::core::fmt::Debug for ChatHubServer<T> {
        fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
            f.write_str("chat.v1.ChatHub")
        }
    }
    impl<T: ChatHub> ::hub_server::codegen::tonic::server::NamedService
    for ChatHubServer<T> {
        const NAME: &'static str = "chat.v1.ChatHub";
    }
    impl<
        T,
        B,
    > ::hub_server::codegen::tonic::codegen::Service<
        ::hub_server::codegen::tonic::codegen::http::Request<B>,
    > for ChatHubServer<T>
    where
        T: ChatHub,
        B: ::hub_server::codegen::tonic::codegen::Body + Send + 'static,
        B::Error: Into<::hub_server::codegen::tonic::codegen::StdError> + Send + 'static,
    {
        type Response = ::hub_server::codegen::tonic::codegen::http::Response<
            ::hub_server::codegen::tonic::body::Body,
        >;
        type Error = ::core::convert::Infallible;
        type Future = ::hub_server::codegen::tonic::codegen::BoxFuture<
            Self::Response,
            Self::Error,
        >;
        fn poll_ready(
            &mut self,
            cx: &mut ::core::task::Context<'_>,
        ) -> ::core::task::Poll<::core::result::Result<(), Self::Error>> {
            ::hub_server::codegen::tonic::codegen::Service::<
                ::hub_server::codegen::tonic::codegen::http::Request<B>,
            >::poll_ready(&mut self.inner, cx)
        }
        fn call(
            &mut self,
            req: ::hub_server::codegen::tonic::codegen::http::Request<B>,
        ) -> Self::Future {
            self.inner.call(req)
        }
    }
    #[doc(hidden)]
    pub struct Adapter<T>(::std::sync::Arc<T>);
    impl<T: ChatHub> ::hub_server::codegen::Dispatch for Adapter<T> {
        type Request = super::ChatRequest;
        type Call = super::chat_request::Call;
        type Push = ChatHubPush;
        const SERVICE: &'static str = "chat.v1.ChatHub";
        const PATH: &'static str = "/chat.v1.ChatHub/Connect";
        fn split(
            request: super::ChatRequest,
        ) -> ::hub_server::codegen::Inbound<super::chat_request::Call> {
            ::hub_server::codegen::Inbound {
                id: request.id,
                control: request.control,
                call: request.call,
            }
        }
        fn call_name(call: &super::chat_request::Call) -> &'static str {
            match call {
                super::chat_request::Call::Join(_) => "join",
                super::chat_request::Call::Leave(_) => "leave",
                super::chat_request::Call::Say(_) => "say",
                super::chat_request::Call::Whisper(_) => "whisper",
                super::chat_request::Call::Members(_) => "members",
                super::chat_request::Call::CheckReady(_) => "check_ready",
            }
        }
        fn dispatch(
            &self,
            ctx: ChatHubContext,
            id: u64,
            call: super::chat_request::Call,
        ) -> ::hub_server::codegen::BoxFuture<
            'static,
            ::core::result::Result<
                ::hub_server::codegen::Bytes,
                ::hub_server::codegen::tonic::Status,
            >,
        > {
            let hub = self.0.clone();
            match call {
                super::chat_request::Call::Join(request) => {
                    ::std::boxed::Box::pin(async move {
                        let reply = hub.join(&ctx, request).await?;
                        Ok(
                            ::hub_server::codegen::encode(
                                &super::ChatResponse {
                                    id,
                                    event: Some(super::chat_response::Event::Join(reply)),
                                    ..::core::default::Default::default()
                                },
                            ),
                        )
                    })
                }
                super::chat_request::Call::Leave(_) => {
                    ::std::boxed::Box::pin(async move {
                        let reply = hub.leave(&ctx).await?;
                        Ok(
                            ::hub_server::codegen::encode(
                                &super::ChatResponse {
                                    id,
                                    event: Some(super::chat_response::Event::Leave(reply)),
                                    ..::core::default::Default::default()
                                },
                            ),
                        )
                    })
                }
                super::chat_request::Call::Say(request) => {
                    ::std::boxed::Box::pin(async move {
                        let reply = hub.say(&ctx, request).await?;
                        Ok(
                            ::hub_server::codegen::encode(
                                &super::ChatResponse {
                                    id,
                                    event: Some(super::chat_response::Event::Say(reply)),
                                    ..::core::default::Default::default()
                                },
                            ),
                        )
                    })
                }
                super::chat_request::Call::Whisper(request) => {
                    ::std::boxed::Box::pin(async move {
                        let reply = hub.whisper(&ctx, request).await?;
                        Ok(
                            ::hub_server::codegen::encode(
                                &super::ChatResponse {
                                    id,
                                    event: Some(super::chat_response::Event::Whisper(reply)),
                                    ..::core::default::Default::default()
                                },
                            ),
                        )
                    })
                }
                super::chat_request::Call::Members(_) => {
                    ::std::boxed::Box::pin(async move {
                        let reply = hub.members(&ctx).await?;
                        Ok(
                            ::hub_server::codegen::encode(
                                &super::ChatResponse {
                                    id,
                                    event: Some(super::chat_response::Event::Members(reply)),
                                    ..::core::default::Default::default()
                                },
                            ),
                        )
                    })
                }
                super::chat_request::Call::CheckReady(request) => {
                    ::std::boxed::Box::pin(async move {
                        let reply = hub.check_ready(&ctx, request).await?;
                        Ok(
                            ::hub_server::codegen::encode(
                                &super::ChatResponse {
                                    id,
                                    event: Some(super::chat_response::Event::CheckReady(reply)),
                                    ..::core::default::Default::default()
                                },
                            ),
                        )
                    })
                }
            }
        }
        fn on_connect(
            &self,
            ctx: ChatHubContext,
        ) -> ::hub_server::codegen::BoxFuture<
            'static,
            ::core::result::Result<(), ::hub_server::codegen::tonic::Status>,
        > {
            let hub = self.0.clone();
            ::std::boxed::Box::pin(async move { hub.on_connect(&ctx).await })
        }
        fn on_disconnect(
            &self,
            ctx: ChatHubContext,
            reason: ::hub_server::codegen::DisconnectReason,
        ) -> ::hub_server::codegen::BoxFuture<'static, ()> {
            let hub = self.0.clone();
            ::std::boxed::Box::pin(async move { hub.on_disconnect(&ctx, &reason).await })
        }
        fn on_transport_lost(
            &self,
            ctx: ChatHubContext,
            reason: ::hub_server::codegen::DisconnectReason,
        ) -> ::hub_server::codegen::BoxFuture<'static, ()> {
            let hub = self.0.clone();
            ::std::boxed::Box::pin(async move {
                hub.on_transport_lost(&ctx, &reason).await
            })
        }
        fn on_resumed(
            &self,
            ctx: ChatHubContext,
        ) -> ::hub_server::codegen::BoxFuture<'static, ()> {
            let hub = self.0.clone();
            ::std::boxed::Box::pin(async move { hub.on_resumed(&ctx).await })
        }
        fn on_members_lost(
            &self,
            handle: ChatHubHandle,
            lost: ::hub_server::codegen::MembersLost,
        ) -> ::hub_server::codegen::BoxFuture<'static, ()> {
            let hub = self.0.clone();
            ::std::boxed::Box::pin(async move {
                hub.on_members_lost(&handle, &lost).await
            })
        }
        fn on_removed(
            &self,
            handle: ChatHubHandle,
            removed: ::hub_server::codegen::MembersRemoved,
        ) -> ::hub_server::codegen::BoxFuture<'static, ()> {
            let hub = self.0.clone();
            ::std::boxed::Box::pin(async move {
                hub.on_removed(&handle, &removed).await
            })
        }
    }
}
/// Pushes to the connections of the `chat.v1.ChatHub` hub from outside the hub (a game loop, a worker), through the backplane its servers share.
pub mod chat_hub_emitter {
    #![allow(
        unused_variables,
        dead_code,
        missing_docs,
        clippy::let_unit_value,
        clippy::unit_arg
    )]
    /// The hub's full name: what the emitter's channels are named after.
    pub const HUB: &str = "chat.v1.ChatHub";
    /// Pushes and commands to the `chat.v1.ChatHub` hub's connections on every server, from a process that is not a hub server: wrap a backplane emitter (`hub_redis::RedisEmitter`, `hub_nats::NatsEmitter`) in it.
    ///
    /// Every publish is fire-and-forget (nothing says who received it) and
    /// fails when the backplane is down, within the backend's timeout. Pushes
    /// of one emitter to one group arrive in order. Cheap to clone.
    #[derive(Clone, Debug)]
    pub struct ChatHubEmitter(::hub_server::codegen::Emitter);
    impl ChatHubEmitter {
        /// An emitter publishing through `backplane`.
        pub fn new(backplane: impl ::hub_server::codegen::Emit) -> Self {
            Self::from_arc(::std::sync::Arc::new(backplane))
        }
        /// An emitter publishing through a shared backplane.
        pub fn from_arc(
            backplane: ::std::sync::Arc<dyn ::hub_server::codegen::Emit>,
        ) -> Self {
            ChatHubEmitter(::hub_server::codegen::Emitter::new(backplane, HUB))
        }
        /// Names the emitter in its envelopes' origin (`emitter/<name>/<random>`).
        pub fn named(self, name: &str) -> Self {
            ChatHubEmitter(self.0.named(name))
        }
        /// Sends pushes to connection ids through each connection's own group,
        /// as the hub does with `SessionConfig::connection_history`: set it to
        /// match the hub (`Emitter::connection_groups`).
        pub fn connection_groups(self, on: bool) -> Self {
            ChatHubEmitter(self.0.connection_groups(on))
        }
        /// The untyped emitter underneath (raw frames, any destination, flush).
        pub fn raw(&self) -> &::hub_server::codegen::Emitter {
            &self.0
        }
        /// Pushes to the members of a group (refine with `.except(..)` / `.only(..)`).
        pub fn group(
            &self,
            group: impl AsRef<str>,
        ) -> ::core::result::Result<
            ChatHubEmitterPush,
            ::hub_server::codegen::GroupError,
        > {
            let group = ::hub_server::codegen::GroupName::new(group.as_ref())
                .map_err(::hub_server::codegen::GroupError::from)?;
            Ok(
                ChatHubEmitterPush(
                    ::hub_server::codegen::EmitPush::new(
                        self.0.clone(),
                        ::hub_server::codegen::Destination::group(group),
                    ),
                ),
            )
        }
        /// Pushes to every connection of the user `user_id`, on every server.
        pub fn user(
            &self,
            user_id: &str,
        ) -> ::core::result::Result<
            ChatHubEmitterPush,
            ::hub_server::codegen::GroupError,
        > {
            Ok(
                ChatHubEmitterPush(
                    ::hub_server::codegen::EmitPush::new(
                        self.0.clone(),
                        ::hub_server::codegen::Destination::user(user_id)?,
                    ),
                ),
            )
        }
        /// Pushes to one connection, on whichever server holds it.
        pub fn connection(
            &self,
            id: ::hub_server::codegen::ConnectionId,
        ) -> ChatHubEmitterPush {
            self.connections([id])
        }
        /// Pushes to these connections, on whichever servers hold them.
        pub fn connections(
            &self,
            ids: impl IntoIterator<Item = ::hub_server::codegen::ConnectionId>,
        ) -> ChatHubEmitterPush {
            let ids: ::std::sync::Arc<[::hub_server::codegen::ConnectionId]> = ids
                .into_iter()
                .collect();
            ChatHubEmitterPush(
                ::hub_server::codegen::EmitPush::new(
                    self.0.clone(),
                    ::hub_server::codegen::Destination::Connections(ids),
                ),
            )
        }
        /// Closes every connection of the user `user_id`, on every server: each
        /// gets a goodbye with `code` and `reason`, then its stream ends with
        /// that status.
        pub async fn disconnect_user(
            &self,
            user_id: &str,
            code: ::hub_server::codegen::tonic::Code,
            reason: &str,
        ) -> ::core::result::Result<(), ::hub_server::codegen::GroupError> {
            self.0.disconnect_user(user_id, code, reason).await
        }
        /// Closes one connection, on whichever server holds it, as
        /// [`disconnect_user`](Self::disconnect_user) does.
        pub async fn disconnect_connection(
            &self,
            id: ::hub_server::codegen::ConnectionId,
            code: ::hub_server::codegen::tonic::Code,
            reason: &str,
        ) -> ::core::result::Result<(), ::hub_server::codegen::GroupError> {
            self.0.disconnect_connection(id, code, reason).await
        }
        /// Removes every connection of the user `user_id` from `group`: each
        /// server holding one runs the leave path and the hub's `on_removed` hook.
        pub async fn remove_from_group(
            &self,
            group: impl AsRef<str>,
            user_id: &str,
        ) -> ::core::result::Result<(), ::hub_server::codegen::GroupError> {
            let group = ::hub_server::codegen::GroupName::new(group.as_ref())
                .map_err(::hub_server::codegen::GroupError::from)?;
            self.0.remove_user(&group, user_id).await
        }
        /// Waits until what was published reached the backplane server (call
        /// it before the process exits).
        pub async fn flush(
            &self,
        ) -> ::core::result::Result<(), ::hub_server::codegen::GroupError> {
            self.0.flush().await
        }
    }
    /// Typed pushes of an emitter to a selection of connections.
    #[derive(Clone, Debug)]
    pub struct ChatHubEmitterPush(::hub_server::codegen::EmitPush);
    impl ChatHubEmitterPush {
        /// Leaves these connections out.
        pub fn except(
            self,
            ids: impl IntoIterator<Item = ::hub_server::codegen::ConnectionId>,
        ) -> Self {
            ChatHubEmitterPush(self.0.except(ids))
        }
        /// Keeps only these connections.
        pub fn only(
            self,
            ids: impl IntoIterator<Item = ::hub_server::codegen::ConnectionId>,
        ) -> Self {
            ChatHubEmitterPush(self.0.only(ids))
        }
        /// Push: someone joined the room.
        ///
        /// Encodes the push once and publishes it (one publish per group, or per
        /// server for connections by id); at-most-once.
        pub async fn on_join(
            &self,
            message: super::UserEvent,
        ) -> ::core::result::Result<(), ::hub_server::codegen::GroupError> {
            let frame = ::hub_server::codegen::encode(
                &super::ChatResponse {
                    event: Some(super::chat_response::Event::OnJoin(message)),
                    ..::core::default::Default::default()
                },
            );
            self.0.send_frame(frame).await
        }
        /// Push: someone left the room.
        ///
        /// Encodes the push once and publishes it (one publish per group, or per
        /// server for connections by id); at-most-once.
        pub async fn on_leave(
            &self,
            message: super::UserEvent,
        ) -> ::core::result::Result<(), ::hub_server::codegen::GroupError> {
            let frame = ::hub_server::codegen::encode(
                &super::ChatResponse {
                    event: Some(super::chat_response::Event::OnLeave(message)),
                    ..::core::default::Default::default()
                },
            );
            self.0.send_frame(frame).await
        }
        /// Push: a message said in the room.
        ///
        /// Encodes the push once and publishes it (one publish per group, or per
        /// server for connections by id); at-most-once.
        pub async fn on_message(
            &self,
            message: super::ChatMessage,
        ) -> ::core::result::Result<(), ::hub_server::codegen::GroupError> {
            let frame = ::hub_server::codegen::encode(
                &super::ChatResponse {
                    event: Some(super::chat_response::Event::OnMessage(message)),
                    ..::core::default::Default::default()
                },
            );
            self.0.send_frame(frame).await
        }
        /// Push: a message whispered to this user.
        ///
        /// Encodes the push once and publishes it (one publish per group, or per
        /// server for connections by id); at-most-once.
        pub async fn on_whisper(
            &self,
            message: super::ChatMessage,
        ) -> ::core::result::Result<(), ::hub_server::codegen::GroupError> {
            let frame = ::hub_server::codegen::encode(
                &super::ChatResponse {
                    event: Some(super::chat_response::Event::OnWhisper(message)),
                    ..::core::default::Default::default()
                },
            );
            self.0.send_frame(frame).await
        }
    }
}
/// Client side of the `chat.v1.ChatHub` hub.
pub mod chat_hub_client {
    #![allow(
        unused_variables,
        dead_code,
        missing_docs,
        clippy::let_unit_value,
        clippy::unit_arg,
        clippy::single_match,
        clippy::match_single_binding
    )]
    /// Receives this hub's pushes. Methods are called in order on the client's
    /// reader task: keep them quick, or forward to a channel. Every method has
    /// an empty default.
    pub trait ChatHubReceiver: Send + Sync + 'static {
        /// Push: someone joined the room.
        fn on_join(&self, message: super::UserEvent) {}
        /// Push: someone left the room.
        fn on_leave(&self, message: super::UserEvent) {}
        /// Push: a message said in the room.
        fn on_message(&self, message: super::ChatMessage) {}
        /// Push: a message whispered to this user.
        fn on_whisper(&self, message: super::ChatMessage) {}
        /// Ask: a member of the room asks whether this member is ready; answer with
        /// `ChatRequest.ready_check` (and `control.answer` carrying this frame's
        /// `control.ask.id`).
        ///
        /// An ask from the server: return the answer (or a status). Runs on a task
        /// of its own; it may make calls on the client meanwhile. The default
        /// answers `UNIMPLEMENTED`.
        fn ready_check(
            &self,
            message: super::ReadyCheck,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<
                super::ReadyAnswer,
                ::hub_client::codegen::tonic::Status,
            >,
        > + Send {
            async move {
                Err(
                    ::hub_client::codegen::tonic::Status::unimplemented(
                        "this client does not answer `ready_check`",
                    ),
                )
            }
        }
        /// Called with the sequence number of each push, before its method.
        /// A gap means pushes were dropped for this connection.
        fn on_seq(&self, seq: u64) {}
        /// An error frame not tied to a call (failed fire-and-forget call, bad frame).
        fn on_error(&self, code: ::hub_client::codegen::tonic::Code, message: &str) {}
        /// The connection's state changed: reconnecting, resumed, resync needed
        /// (join again), closed. Called in order with the pushes.
        fn on_connection_state(&self, state: &::hub_client::codegen::ConnectionState) {}
        /// Pushes to `group` this connection should have had were lost and could
        /// not be recovered (`missed` 0: how many is unknown): resync what the
        /// group's pushes carry. Called in order with the pushes (the client
        /// logs it too, as a warning).
        fn on_pushes_lost(&self, group: &str, missed: u64, reason: &str) {}
    }
    /// A receiver that ignores every push.
    impl ChatHubReceiver for () {}
    /// A shared receiver.
    impl<R: ChatHubReceiver + ?Sized> ChatHubReceiver for ::std::sync::Arc<R> {
        fn on_join(&self, message: super::UserEvent) {
            (**self).on_join(message)
        }
        fn on_leave(&self, message: super::UserEvent) {
            (**self).on_leave(message)
        }
        fn on_message(&self, message: super::ChatMessage) {
            (**self).on_message(message)
        }
        fn on_whisper(&self, message: super::ChatMessage) {
            (**self).on_whisper(message)
        }
        fn ready_check(
            &self,
            message: super::ReadyCheck,
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<
                super::ReadyAnswer,
                ::hub_client::codegen::tonic::Status,
            >,
        > + Send {
            (**self).ready_check(message)
        }
        fn on_seq(&self, seq: u64) {
            (**self).on_seq(seq)
        }
        fn on_error(&self, code: ::hub_client::codegen::tonic::Code, message: &str) {
            (**self).on_error(code, message)
        }
        fn on_connection_state(&self, state: &::hub_client::codegen::ConnectionState) {
            (**self).on_connection_state(state)
        }
        fn on_pushes_lost(&self, group: &str, missed: u64, reason: &str) {
            (**self).on_pushes_lost(group, missed, reason)
        }
    }
    /// A typed client of the `chat.v1.ChatHub` hub: one stream, calls multiplexed by id.
    /// A chat lobby: join a room, talk to everyone in it, whisper to one user.
    ///
    /// `Connect` needs `authorization: Bearer <token>` metadata (a token from
    /// `chat.v1.ChatLogin/Login`, or from the identity provider in front of the server);
    /// without a valid one the stream is refused with UNAUTHENTICATED.
    #[derive(Clone, Debug)]
    pub struct ChatHubClient {
        inner: ::hub_client::codegen::HubClient<Spec>,
    }
    impl ChatHubClient {
        /// Connects over `channel` with the default options.
        pub async fn connect(
            channel: ::hub_client::codegen::tonic::transport::Channel,
            receiver: impl ChatHubReceiver,
        ) -> ::core::result::Result<Self, ::hub_client::codegen::ClientError> {
            Self::connect_with(
                    channel,
                    ::hub_client::codegen::ConnectOptions::default(),
                    receiver,
                )
                .await
        }
        /// Connects over any tonic transport (e.g. a `Channel` wrapped in an
        /// interceptor) with `options` (metadata, timeouts, reconnection; a
        /// reconnect opens a new stream on the same transport).
        pub async fn connect_with<T>(
            service: T,
            options: ::hub_client::codegen::ConnectOptions,
            receiver: impl ChatHubReceiver,
        ) -> ::core::result::Result<Self, ::hub_client::codegen::ClientError>
        where
            T: ::hub_client::codegen::tonic::client::GrpcService<
                    ::hub_client::codegen::tonic::body::Body,
                > + Send + 'static,
            T::Future: Send,
            T::Error: Into<::hub_client::codegen::tonic::codegen::StdError>,
            T::ResponseBody: ::hub_client::codegen::tonic::codegen::Body<
                    Data = ::hub_client::codegen::tonic::codegen::Bytes,
                > + Send + 'static,
            <T::ResponseBody as ::hub_client::codegen::tonic::codegen::Body>::Error: Into<
                    ::hub_client::codegen::tonic::codegen::StdError,
                > + Send,
        {
            let handler = ::std::sync::Arc::new(Handler(receiver));
            let inner = ::hub_client::codegen::HubClient::connect(
                    service,
                    options,
                    handler,
                )
                .await?;
            Ok(ChatHubClient { inner })
        }
        /// The untyped client underneath (connection info and state, latency, closed, custom timeouts).
        pub fn raw(&self) -> &::hub_client::codegen::HubClient<Spec> {
            &self.inner
        }
        /// This connection's id on the server (a new one after a reconnect that
        /// could not resume).
        pub fn connection_id(&self) -> ::std::string::String {
            self.inner.connection_id()
        }
        /// The last measured round trip to the server.
        pub fn latency(&self) -> Option<::std::time::Duration> {
            self.inner.latency()
        }
        /// Waits for the connection to end for good and tells why.
        pub async fn closed(&self) -> ::hub_client::codegen::CloseStatus {
            self.inner.closed().await
        }
        /// Join a room (as the user of the connection's token); replies with the room's
        /// members.
        pub async fn join(
            &self,
            request: super::JoinRequest,
        ) -> ::core::result::Result<
            super::MembersReply,
            ::hub_client::codegen::ClientError,
        > {
            match self.inner.call(super::chat_request::Call::Join(request)).await? {
                super::chat_response::Event::Join(reply) => Ok(reply),
                _ => Err(::hub_client::codegen::ClientError::UnexpectedReply("join")),
            }
        }
        /// Sends `join` without waiting for a reply (fire-and-forget, call id 0). A failure comes back to the receiver's `on_error`.
        pub async fn send_join(
            &self,
            request: super::JoinRequest,
        ) -> ::core::result::Result<(), ::hub_client::codegen::ClientError> {
            self.inner.send(super::chat_request::Call::Join(request)).await
        }
        /// Leave the current room.
        pub async fn leave(
            &self,
        ) -> ::core::result::Result<(), ::hub_client::codegen::ClientError> {
            match self.inner.call(super::chat_request::Call::Leave(())).await? {
                super::chat_response::Event::Leave(reply) => Ok(reply),
                _ => Err(::hub_client::codegen::ClientError::UnexpectedReply("leave")),
            }
        }
        /// Sends `leave` without waiting for a reply (fire-and-forget, call id 0). A failure comes back to the receiver's `on_error`.
        pub async fn send_leave(
            &self,
        ) -> ::core::result::Result<(), ::hub_client::codegen::ClientError> {
            self.inner.send(super::chat_request::Call::Leave(())).await
        }
        /// Say something to every other member of the room.
        pub async fn say(
            &self,
            request: super::SayRequest,
        ) -> ::core::result::Result<(), ::hub_client::codegen::ClientError> {
            match self.inner.call(super::chat_request::Call::Say(request)).await? {
                super::chat_response::Event::Say(reply) => Ok(reply),
                _ => Err(::hub_client::codegen::ClientError::UnexpectedReply("say")),
            }
        }
        /// Sends `say` without waiting for a reply (fire-and-forget, call id 0). A failure comes back to the receiver's `on_error`.
        pub async fn send_say(
            &self,
            request: super::SayRequest,
        ) -> ::core::result::Result<(), ::hub_client::codegen::ClientError> {
            self.inner.send(super::chat_request::Call::Say(request)).await
        }
        /// Say something to one user's connections only.
        pub async fn whisper(
            &self,
            request: super::WhisperRequest,
        ) -> ::core::result::Result<(), ::hub_client::codegen::ClientError> {
            match self.inner.call(super::chat_request::Call::Whisper(request)).await? {
                super::chat_response::Event::Whisper(reply) => Ok(reply),
                _ => Err(::hub_client::codegen::ClientError::UnexpectedReply("whisper")),
            }
        }
        /// Sends `whisper` without waiting for a reply (fire-and-forget, call id 0). A failure comes back to the receiver's `on_error`.
        pub async fn send_whisper(
            &self,
            request: super::WhisperRequest,
        ) -> ::core::result::Result<(), ::hub_client::codegen::ClientError> {
            self.inner.send(super::chat_request::Call::Whisper(request)).await
        }
        /// List the room's members.
        pub async fn members(
            &self,
        ) -> ::core::result::Result<
            super::MembersReply,
            ::hub_client::codegen::ClientError,
        > {
            match self.inner.call(super::chat_request::Call::Members(())).await? {
                super::chat_response::Event::Members(reply) => Ok(reply),
                _ => Err(::hub_client::codegen::ClientError::UnexpectedReply("members")),
            }
        }
        /// Sends `members` without waiting for a reply (fire-and-forget, call id 0). A failure comes back to the receiver's `on_error`.
        pub async fn send_members(
            &self,
        ) -> ::core::result::Result<(), ::hub_client::codegen::ClientError> {
            self.inner.send(super::chat_request::Call::Members(())).await
        }
        /// A ready check: asks every member of the room (on every server) whether they
        /// are ready, and replies with each member's outcome.
        pub async fn check_ready(
            &self,
            request: super::CheckReadyRequest,
        ) -> ::core::result::Result<
            super::ReadyReport,
            ::hub_client::codegen::ClientError,
        > {
            match self.inner.call(super::chat_request::Call::CheckReady(request)).await?
            {
                super::chat_response::Event::CheckReady(reply) => Ok(reply),
                _ => {
                    Err(
                        ::hub_client::codegen::ClientError::UnexpectedReply(
                            "check_ready",
                        ),
                    )
                }
            }
        }
        /// Sends `check_ready` without waiting for a reply (fire-and-forget, call id 0). A failure comes back to the receiver's `on_error`.
        pub async fn send_check_ready(
            &self,
            request: super::CheckReadyRequest,
        ) -> ::core::result::Result<(), ::hub_client::codegen::ClientError> {
            self.inner.send(super::chat_request::Call::CheckReady(request)).await
        }
    }
    #[doc(hidden)]
    #[derive(Debug)]
    pub struct Spec;
    impl ::hub_client::codegen::ClientSpec for Spec {
        type Request = super::ChatRequest;
        type Response = super::ChatResponse;
        type Call = super::chat_request::Call;
        type Event = super::chat_response::Event;
        type Answer = super::chat_request::Answer;
        const PATH: &'static str = "/chat.v1.ChatHub/Connect";
        fn request(
            id: u64,
            call: Option<super::chat_request::Call>,
            control: Option<::hub_client::codegen::hub_v1::ClientControl>,
        ) -> super::ChatRequest {
            super::ChatRequest {
                id,
                call,
                control,
                answer: None,
            }
        }
        fn answer(
            id: u64,
            answer: ::core::result::Result<
                super::chat_request::Answer,
                ::hub_client::codegen::tonic::Status,
            >,
        ) -> super::ChatRequest {
            let (answer, error) = match answer {
                Ok(a) => (Some(a), None),
                Err(s) => {
                    (
                        None,
                        Some(::hub_client::codegen::hub_v1::CallError {
                            code: s.code() as i32,
                            message: s.message().to_owned(),
                            ..::core::default::Default::default()
                        }),
                    )
                }
            };
            super::ChatRequest {
                id: 0,
                call: None,
                control: Some(::hub_client::codegen::hub_v1::ClientControl {
                    kind: Some(
                        ::hub_client::codegen::hub_v1::client_control::Kind::Answer(::hub_client::codegen::hub_v1::AnswerInfo {
                            id,
                            error,
                        }),
                    ),
                }),
                answer,
            }
        }
        fn split(
            r: super::ChatResponse,
        ) -> ::hub_client::codegen::ResponseParts<super::chat_response::Event> {
            ::hub_client::codegen::ResponseParts {
                id: r.id,
                seq: r.seq,
                error: r.error,
                control: r.control,
                event: r.event,
            }
        }
    }
    struct Handler<R>(R);
    impl<
        R: ChatHubReceiver,
    > ::hub_client::codegen::PushHandler<
        super::chat_response::Event,
        super::chat_request::Answer,
    > for Handler<R> {
        fn on_push(&self, seq: u64, event: super::chat_response::Event) {
            self.0.on_seq(seq);
            match event {
                super::chat_response::Event::OnJoin(m) => self.0.on_join(m),
                super::chat_response::Event::OnLeave(m) => self.0.on_leave(m),
                super::chat_response::Event::OnMessage(m) => self.0.on_message(m),
                super::chat_response::Event::OnWhisper(m) => self.0.on_whisper(m),
                _ => {}
            }
        }
        fn on_error(&self, code: ::hub_client::codegen::tonic::Code, message: &str) {
            self.0.on_error(code, message)
        }
        fn on_state(&self, state: &::hub_client::codegen::ConnectionState) {
            self.0.on_connection_state(state)
        }
        fn on_pushes_lost(&self, group: &str, missed: u64, reason: &str) {
            self.0.on_pushes_lost(group, missed, reason)
        }
        fn on_ask(
            self: ::std::sync::Arc<Self>,
            event: super::chat_response::Event,
        ) -> ::core::result::Result<
            ::hub_client::codegen::BoxFuture<
                'static,
                ::core::result::Result<
                    super::chat_request::Answer,
                    ::hub_client::codegen::tonic::Status,
                >,
            >,
            super::chat_response::Event,
        > {
            match event {
                super::chat_response::Event::ReadyCheck(m) => {
                    Ok(
                        ::std::boxed::Box::pin(async move {
                            self.0
                                .ready_check(m)
                                .await
                                .map(super::chat_request::Answer::ReadyCheck)
                        }),
                    )
                }
                other => Err(other),
            }
        }
    }
}
