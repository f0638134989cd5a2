//! Emits the server and client code of a hub.

use heck::ToSnakeCase;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::model::Hub;

pub(crate) struct Generator {
    pub(crate) hubs: Vec<Hub>,
    pub(crate) server: Option<String>,
    pub(crate) client: Option<String>,
}

impl prost_build::ServiceGenerator for Generator {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        let Some(hub) = self
            .hubs
            .iter()
            .find(|h| h.package == service.package && h.name == service.proto_name)
        else {
            return;
        };
        let tokens = hub_tokens(hub, self.server.as_deref(), self.client.as_deref());
        buf.push_str(&pretty(tokens));
    }
}

pub(crate) fn pretty(tokens: TokenStream) -> String {
    match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(_) => tokens.to_string(),
    }
}

fn path(s: &str) -> TokenStream {
    s.parse().expect("generated paths are valid Rust")
}

fn docs(lines: &[String]) -> TokenStream {
    let lines = lines.iter().map(|l| format!(" {l}"));
    quote! { #(#[doc = #lines])* }
}

fn ty(p: &Option<String>) -> TokenStream {
    match p {
        Some(p) => path(p),
        None => quote!(()),
    }
}

/// The server and client modules of one hub.
pub(crate) fn hub_tokens(hub: &Hub, server: Option<&str>, client: Option<&str>) -> TokenStream {
    let emitter = server.map(|rt| emitter_tokens(hub, &path(rt)));
    let server = server.map(|rt| server_tokens(hub, &path(rt)));
    let client = client.map(|rt| client_tokens(hub, &path(rt)));
    quote! { #server #emitter #client }
}

fn server_tokens(hub: &Hub, rt: &TokenStream) -> TokenStream {
    let snake = hub.name.to_snake_case();
    let module = format_ident!("{}_server", snake);
    let trait_name = format_ident!("{}", hub.name);
    let server = format_ident!("{}Server", hub.name);
    let builder = format_ident!("{}ServerBuilder", hub.name);
    let push = format_ident!("{}Push", hub.name);
    let context = format_ident!("{}Context", hub.name);
    let handle = format_ident!("{}Handle", hub.name);
    let full = hub.full_name();
    let path_str = format!("/{full}/Connect");
    let request = path(&hub.request);
    let response = path(&hub.response);
    let call_enum = path(&hub.call_enum);
    let event_enum = path(&hub.event_enum);
    let hub_doc = docs(&hub.doc);
    let module_doc = format!(" Server side of the `{full}` hub.");
    let trait_doc = format!(" The `{full}` hub: implement it, then serve it with [`{server}`].");
    let builder_doc = format!(" Builds a [`{server}`].");

    let methods = hub.calls.iter().map(|c| {
        let name = format_ident!("{}", c.name);
        let doc = docs(&c.doc);
        let reply = ty(&c.reply);
        let arg = c.request.as_ref().map(|r| {
            let r = path(r);
            quote!(, request: #r)
        });
        quote! {
            #doc
            fn #name(&self, ctx: &#context #arg)
                -> impl ::core::future::Future<Output = ::core::result::Result<#reply, #rt::codegen::tonic::Status>> + Send;
        }
    });
    let call_names = hub.calls.iter().map(|c| {
        let v = format_ident!("{}", c.variant);
        let n = &c.name;
        quote!(#call_enum::#v(_) => #n,)
    });
    let dispatch_arms = hub.calls.iter().map(|c| {
        let v = format_ident!("{}", c.variant);
        let name = format_ident!("{}", c.name);
        let (pat, call) = match c.request {
            Some(_) => (quote!(request), quote!(hub.#name(&ctx, request).await?)),
            None => (quote!(_), quote!(hub.#name(&ctx).await?)),
        };
        quote! {
            #call_enum::#v(#pat) => {
                ::std::boxed::Box::pin(async move {
                    let reply = #call;
                    Ok(#rt::codegen::encode(&#response {
                        id,
                        event: Some(#event_enum::#v(reply)),
                        ..::core::default::Default::default()
                    }))
                })
            }
        }
    });
    let push_methods = hub.pushes.iter().map(|p| {
        let v = format_ident!("{}", p.variant);
        let name = format_ident!("{}", p.name);
        let doc = docs(&p.doc);
        let (arg, val) = match &p.message {
            Some(m) => {
                let m = path(m);
                (quote!(message: #m), quote!(message))
            }
            None => (quote!(), quote!(())),
        };
        quote! {
            #doc
            ///
            /// Encodes the push once and sends it to every selected connection.
            pub async fn #name(&self, #arg) -> ::core::result::Result<#rt::codegen::Delivery, #rt::codegen::PushError> {
                let frame = #rt::codegen::encode(&#response {
                    event: Some(#event_enum::#v(#val)),
                    ..::core::default::Default::default()
                });
                self.0.send_frame(frame).await
            }
        }
    });

    let ask_methods = hub.asks.iter().map(|a| {
        let v = format_ident!("{}", a.variant);
        let name = format_ident!("{}", a.name);
        let doc = docs(&a.doc);
        let answer = ty(&a.answer);
        let n = &a.name;
        let answer_enum = path(hub.answer_enum.as_deref().expect("a hub with asks has an answer oneof"));
        let (arg, val) = match &a.message {
            Some(m) => {
                let m = path(m);
                (quote!(message: #m), quote!(message))
            }
            None => (quote!(), quote!(())),
        };
        let wrong = format!("the answer is not a `{n}` answer");
        quote! {
            #doc
            ///
            /// An ask: sends it to every selected connection (on any server) and waits
            /// for each one's answer, up to the ask's timeout. One reply per target.
            pub async fn #name(&self, #arg) -> ::core::result::Result<::std::vec::Vec<#rt::codegen::AskReply<#answer>>, #rt::codegen::GroupError> {
                let frame = #rt::codegen::encode(&#response {
                    event: Some(#event_enum::#v(#val)),
                    ..::core::default::Default::default()
                });
                let replies = self.0.ask_frame(frame).await?;
                Ok(#rt::codegen::decode_answers(replies, |bytes| {
                    match <#request as #rt::codegen::prost::Message>::decode(bytes) {
                        Ok(#request { answer: Some(#answer_enum::#v(a)), .. }) => Ok(a),
                        Ok(_) => Err(#rt::codegen::tonic::Status::invalid_argument(#wrong)),
                        Err(e) => Err(#rt::codegen::tonic::Status::invalid_argument(e.to_string())),
                    }
                }))
            }
        }
    });
    let ask_timeout = (!hub.asks.is_empty()).then(|| {
        quote! {
            /// How long the asks of this selection wait for each answer (default
            /// `HubConfig::ask_timeout`, 5 s).
            pub fn ask_timeout(self, timeout: ::std::time::Duration) -> Self {
                #push(self.0.ask_timeout(timeout))
            }
        }
    });

    quote! {
        #[doc = #module_doc]
        pub mod #module {
            #![allow(unused_variables, dead_code, missing_docs, clippy::let_unit_value, clippy::unit_arg, clippy::single_match, clippy::match_single_binding)]

            /// The per-call context of this hub: connection id, metadata, groups, typed pushes.
            pub type #context = #rt::codegen::Context<#push>;
            /// A handle on this hub for pushes from outside calls, counts, metrics and shutdown.
            pub type #handle = #rt::codegen::HubHandle<#push>;

            #[doc = #trait_doc]
            #hub_doc
            ///
            /// Calls from one connection run one at a time, in order.
            pub trait #trait_name: Send + Sync + 'static {
                #(#methods)*

                /// Called when a client connects, before any call. An error refuses the
                /// connection with that status (e.g. `unauthenticated`).
                fn on_connect(&self, ctx: &#context)
                    -> impl ::core::future::Future<Output = ::core::result::Result<(), #rt::codegen::tonic::Status>> + Send {
                    async { Ok(()) }
                }

                /// Called when a connection ends, once it has left its groups
                /// (`ctx.groups()` still lists them).
                fn on_disconnect(&self, ctx: &#context, reason: &#rt::codegen::DisconnectReason)
                    -> impl ::core::future::Future<Output = ()> + Send {
                    async {}
                }

                /// On a hub with sessions (`HubConfig::sessions`): called when the
                /// connection's stream broke and its session waits for a resume (it is
                /// still a member of its groups). `on_disconnect` runs later if no resume
                /// comes within the grace period.
                fn on_transport_lost(&self, ctx: &#context, reason: &#rt::codegen::DisconnectReason)
                    -> impl ::core::future::Future<Output = ()> + Send {
                    async {}
                }

                /// On a hub with sessions: called when a new stream resumed the
                /// connection's session (same connection id, groups kept).
                fn on_resumed(&self, ctx: &#context) -> impl ::core::future::Future<Output = ()> + Send {
                    async {}
                }

                /// Called on every server with local members of `lost.group` when members
                /// on another server are gone because that server died (no
                /// `on_disconnect` ran for them). Pushes with `.local()` reach this
                /// server's members only, so each server tells its own.
                fn on_members_lost(&self, hub: &#handle, lost: &#rt::codegen::MembersLost)
                    -> impl ::core::future::Future<Output = ()> + Send {
                    async {}
                }

                /// Called on each server whose connections were removed from
                /// `removed.group` by a command from outside the hub (an emitter's
                /// `remove_from_group`), once they have left it, as after a leave on
                /// the server: tell the group here (the chat hub pushes `on_leave`).
                fn on_removed(&self, hub: &#handle, removed: &#rt::codegen::MembersRemoved)
                    -> impl ::core::future::Future<Output = ()> + Send {
                    async {}
                }
            }

            /// Typed pushes of this hub to a selection of connections.
            #[derive(Clone, Debug)]
            pub struct #push(#rt::codegen::Push);

            impl ::core::convert::From<#rt::codegen::Push> for #push {
                fn from(p: #rt::codegen::Push) -> Self {
                    #push(p)
                }
            }

            impl #push {
                /// Leaves these connections out (typically the caller).
                pub fn except(self, ids: impl IntoIterator<Item = #rt::codegen::ConnectionId>) -> Self {
                    #push(self.0.except(ids))
                }

                /// Keeps only these connections.
                pub fn only(self, ids: impl IntoIterator<Item = #rt::codegen::ConnectionId>) -> Self {
                    #push(self.0.only(ids))
                }

                /// Delivers to this server's connections only (nothing crosses servers).
                pub fn local(self) -> Self {
                    #push(self.0.local())
                }

                #ask_timeout

                #(#push_methods)*

                #(#ask_methods)*
            }

            /// The hub as a tonic service.
            pub struct #server<T> {
                inner: #rt::codegen::HubService<Adapter<T>>,
            }

            impl<T: #trait_name> #server<T> {
                /// Serves `hub` with in-memory groups and the default config.
                pub fn new(hub: T) -> Self {
                    Self::from_arc(::std::sync::Arc::new(hub))
                }

                /// Serves a shared `hub`.
                pub fn from_arc(hub: ::std::sync::Arc<T>) -> Self {
                    #server { inner: #rt::codegen::HubService::new(Adapter(hub)) }
                }

                /// Starts a builder (group provider, config, server-wide defaults).
                pub fn builder(hub: T) -> #builder<T> {
                    #builder { inner: #rt::codegen::HubService::builder(Adapter(::std::sync::Arc::new(hub))) }
                }

                /// A handle for pushes from outside calls, counts, metrics and shutdown.
                pub fn handle(&self) -> #handle {
                    self.inner.handle()
                }
            }

            #[doc = #builder_doc]
            pub struct #builder<T> {
                inner: #rt::codegen::HubServiceBuilder<Adapter<T>>,
            }

            impl<T: #trait_name> #builder<T> {
                /// Takes the server-wide defaults from `hubs`.
                pub fn hubs(self, hubs: &#rt::codegen::Hubs) -> Self {
                    #builder { inner: self.inner.hubs(hubs) }
                }

                /// This hub's group provider.
                pub fn groups(self, provider: impl #rt::codegen::GroupProvider) -> Self {
                    #builder { inner: self.inner.groups(provider) }
                }

                /// This hub's group provider, shared.
                pub fn groups_arc(self, provider: ::std::sync::Arc<dyn #rt::codegen::GroupProvider>) -> Self {
                    #builder { inner: self.inner.groups_arc(provider) }
                }

                /// This hub's config.
                pub fn config(self, config: #rt::codegen::HubConfig) -> Self {
                    #builder { inner: self.inner.config(config) }
                }

                /// How this hub learns who a connection is (see `hub_server::identity`).
                pub fn identity(self, provider: impl #rt::codegen::IdentityProvider) -> Self {
                    #builder { inner: self.inner.identity(provider) }
                }

                /// Whether this hub refuses `Connect` without an identity (`UNAUTHENTICATED`).
                pub fn require_identity(self, required: bool) -> Self {
                    #builder { inner: self.inner.require_identity(required) }
                }

                /// Binds the hub to its group provider.
                pub fn build(self) -> ::core::result::Result<#server<T>, #rt::codegen::GroupError> {
                    Ok(#server { inner: self.inner.build()? })
                }
            }

            impl<T> ::core::clone::Clone for #server<T> {
                fn clone(&self) -> Self {
                    #server { inner: self.inner.clone() }
                }
            }

            impl<T> ::core::fmt::Debug for #server<T> {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.write_str(#full)
                }
            }

            impl<T: #trait_name> #rt::codegen::tonic::server::NamedService for #server<T> {
                const NAME: &'static str = #full;
            }

            impl<T, B> #rt::codegen::tonic::codegen::Service<#rt::codegen::tonic::codegen::http::Request<B>> for #server<T>
            where
                T: #trait_name,
                B: #rt::codegen::tonic::codegen::Body + Send + 'static,
                B::Error: Into<#rt::codegen::tonic::codegen::StdError> + Send + 'static,
            {
                type Response = #rt::codegen::tonic::codegen::http::Response<#rt::codegen::tonic::body::Body>;
                type Error = ::core::convert::Infallible;
                type Future = #rt::codegen::tonic::codegen::BoxFuture<Self::Response, Self::Error>;

                fn poll_ready(&mut self, cx: &mut ::core::task::Context<'_>) -> ::core::task::Poll<::core::result::Result<(), Self::Error>> {
                    #rt::codegen::tonic::codegen::Service::<#rt::codegen::tonic::codegen::http::Request<B>>::poll_ready(&mut self.inner, cx)
                }

                fn call(&mut self, req: #rt::codegen::tonic::codegen::http::Request<B>) -> Self::Future {
                    self.inner.call(req)
                }
            }

            #[doc(hidden)]
            pub struct Adapter<T>(::std::sync::Arc<T>);

            impl<T: #trait_name> #rt::codegen::Dispatch for Adapter<T> {
                type Request = #request;
                type Call = #call_enum;
                type Push = #push;
                const SERVICE: &'static str = #full;
                const PATH: &'static str = #path_str;

                fn split(request: #request) -> #rt::codegen::Inbound<#call_enum> {
                    #rt::codegen::Inbound { id: request.id, control: request.control, call: request.call }
                }

                fn call_name(call: &#call_enum) -> &'static str {
                    match call {
                        #(#call_names)*
                    }
                }

                fn dispatch(
                    &self,
                    ctx: #context,
                    id: u64,
                    call: #call_enum,
                ) -> #rt::codegen::BoxFuture<'static, ::core::result::Result<#rt::codegen::Bytes, #rt::codegen::tonic::Status>> {
                    let hub = self.0.clone();
                    match call {
                        #(#dispatch_arms)*
                    }
                }

                fn on_connect(&self, ctx: #context) -> #rt::codegen::BoxFuture<'static, ::core::result::Result<(), #rt::codegen::tonic::Status>> {
                    let hub = self.0.clone();
                    ::std::boxed::Box::pin(async move { hub.on_connect(&ctx).await })
                }

                fn on_disconnect(&self, ctx: #context, reason: #rt::codegen::DisconnectReason) -> #rt::codegen::BoxFuture<'static, ()> {
                    let hub = self.0.clone();
                    ::std::boxed::Box::pin(async move { hub.on_disconnect(&ctx, &reason).await })
                }

                fn on_transport_lost(&self, ctx: #context, reason: #rt::codegen::DisconnectReason) -> #rt::codegen::BoxFuture<'static, ()> {
                    let hub = self.0.clone();
                    ::std::boxed::Box::pin(async move { hub.on_transport_lost(&ctx, &reason).await })
                }

                fn on_resumed(&self, ctx: #context) -> #rt::codegen::BoxFuture<'static, ()> {
                    let hub = self.0.clone();
                    ::std::boxed::Box::pin(async move { hub.on_resumed(&ctx).await })
                }

                fn on_members_lost(&self, handle: #handle, lost: #rt::codegen::MembersLost) -> #rt::codegen::BoxFuture<'static, ()> {
                    let hub = self.0.clone();
                    ::std::boxed::Box::pin(async move { hub.on_members_lost(&handle, &lost).await })
                }

                fn on_removed(&self, handle: #handle, removed: #rt::codegen::MembersRemoved) -> #rt::codegen::BoxFuture<'static, ()> {
                    let hub = self.0.clone();
                    ::std::boxed::Box::pin(async move { hub.on_removed(&handle, &removed).await })
                }
            }
        }
    }
}

/// The emitter of a hub: its typed pushes and the commands, from a process that is
/// not a hub server, through a backplane (`hub_core::emit`).
fn emitter_tokens(hub: &Hub, rt: &TokenStream) -> TokenStream {
    let snake = hub.name.to_snake_case();
    let module = format_ident!("{}_emitter", snake);
    let emitter = format_ident!("{}Emitter", hub.name);
    let push = format_ident!("{}EmitterPush", hub.name);
    let full = hub.full_name();
    let response = path(&hub.response);
    let event_enum = path(&hub.event_enum);
    let module_doc = format!(
        " Pushes to the connections of the `{full}` hub from outside the hub (a game loop, a worker), through the backplane its servers share."
    );
    let emitter_doc = format!(
        " Pushes and commands to the `{full}` hub's connections on every server, from a process that is not a hub server: wrap a backplane emitter (`hub_redis::RedisEmitter`, `hub_nats::NatsEmitter`) in it."
    );
    let push_methods = hub.pushes.iter().map(|p| {
        let v = format_ident!("{}", p.variant);
        let name = format_ident!("{}", p.name);
        let doc = docs(&p.doc);
        let (arg, val) = match &p.message {
            Some(m) => {
                let m = path(m);
                (quote!(message: #m), quote!(message))
            }
            None => (quote!(), quote!(())),
        };
        quote! {
            #doc
            ///
            /// Encodes the push once and publishes it (one publish per group, or per
            /// server for connections by id); at-most-once.
            pub async fn #name(&self, #arg) -> ::core::result::Result<(), #rt::codegen::GroupError> {
                let frame = #rt::codegen::encode(&#response {
                    event: Some(#event_enum::#v(#val)),
                    ..::core::default::Default::default()
                });
                self.0.send_frame(frame).await
            }
        }
    });

    quote! {
        #[doc = #module_doc]
        pub mod #module {
            #![allow(unused_variables, dead_code, missing_docs, clippy::let_unit_value, clippy::unit_arg)]

            /// The hub's full name: what the emitter's channels are named after.
            pub const HUB: &str = #full;

            #[doc = #emitter_doc]
            ///
            /// Every publish is fire-and-forget (nothing says who received it) and
            /// fails when the backplane is down, within the backend's timeout. Pushes
            /// of one emitter to one group arrive in order. Cheap to clone.
            #[derive(Clone, Debug)]
            pub struct #emitter(#rt::codegen::Emitter);

            impl #emitter {
                /// An emitter publishing through `backplane`.
                pub fn new(backplane: impl #rt::codegen::Emit) -> Self {
                    Self::from_arc(::std::sync::Arc::new(backplane))
                }

                /// An emitter publishing through a shared backplane.
                pub fn from_arc(backplane: ::std::sync::Arc<dyn #rt::codegen::Emit>) -> Self {
                    #emitter(#rt::codegen::Emitter::new(backplane, HUB))
                }

                /// Names the emitter in its envelopes' origin (`emitter/<name>/<random>`).
                pub fn named(self, name: &str) -> Self {
                    #emitter(self.0.named(name))
                }

                /// Sends pushes to connection ids through each connection's own group,
                /// as the hub does with `SessionConfig::connection_history`: set it to
                /// match the hub (`Emitter::connection_groups`).
                pub fn connection_groups(self, on: bool) -> Self {
                    #emitter(self.0.connection_groups(on))
                }

                /// The untyped emitter underneath (raw frames, any destination, flush).
                pub fn raw(&self) -> &#rt::codegen::Emitter {
                    &self.0
                }

                /// Pushes to the members of a group (refine with `.except(..)` / `.only(..)`).
                pub fn group(&self, group: impl AsRef<str>) -> ::core::result::Result<#push, #rt::codegen::GroupError> {
                    let group = #rt::codegen::GroupName::new(group.as_ref()).map_err(#rt::codegen::GroupError::from)?;
                    Ok(#push(#rt::codegen::EmitPush::new(self.0.clone(), #rt::codegen::Destination::group(group))))
                }

                /// Pushes to every connection of the user `user_id`, on every server.
                pub fn user(&self, user_id: &str) -> ::core::result::Result<#push, #rt::codegen::GroupError> {
                    Ok(#push(#rt::codegen::EmitPush::new(self.0.clone(), #rt::codegen::Destination::user(user_id)?)))
                }

                /// Pushes to one connection, on whichever server holds it.
                pub fn connection(&self, id: #rt::codegen::ConnectionId) -> #push {
                    self.connections([id])
                }

                /// Pushes to these connections, on whichever servers hold them.
                pub fn connections(&self, ids: impl IntoIterator<Item = #rt::codegen::ConnectionId>) -> #push {
                    let ids: ::std::sync::Arc<[#rt::codegen::ConnectionId]> = ids.into_iter().collect();
                    #push(#rt::codegen::EmitPush::new(self.0.clone(), #rt::codegen::Destination::Connections(ids)))
                }

                /// Closes every connection of the user `user_id`, on every server: each
                /// gets a goodbye with `code` and `reason`, then its stream ends with
                /// that status.
                pub async fn disconnect_user(&self, user_id: &str, code: #rt::codegen::tonic::Code, reason: &str) -> ::core::result::Result<(), #rt::codegen::GroupError> {
                    self.0.disconnect_user(user_id, code, reason).await
                }

                /// Closes one connection, on whichever server holds it, as
                /// [`disconnect_user`](Self::disconnect_user) does.
                pub async fn disconnect_connection(&self, id: #rt::codegen::ConnectionId, code: #rt::codegen::tonic::Code, reason: &str) -> ::core::result::Result<(), #rt::codegen::GroupError> {
                    self.0.disconnect_connection(id, code, reason).await
                }

                /// Removes every connection of the user `user_id` from `group`: each
                /// server holding one runs the leave path and the hub's `on_removed` hook.
                pub async fn remove_from_group(&self, group: impl AsRef<str>, user_id: &str) -> ::core::result::Result<(), #rt::codegen::GroupError> {
                    let group = #rt::codegen::GroupName::new(group.as_ref()).map_err(#rt::codegen::GroupError::from)?;
                    self.0.remove_user(&group, user_id).await
                }

                /// Waits until what was published reached the backplane server (call
                /// it before the process exits).
                pub async fn flush(&self) -> ::core::result::Result<(), #rt::codegen::GroupError> {
                    self.0.flush().await
                }
            }

            /// Typed pushes of an emitter to a selection of connections.
            #[derive(Clone, Debug)]
            pub struct #push(#rt::codegen::EmitPush);

            impl #push {
                /// Leaves these connections out.
                pub fn except(self, ids: impl IntoIterator<Item = #rt::codegen::ConnectionId>) -> Self {
                    #push(self.0.except(ids))
                }

                /// Keeps only these connections.
                pub fn only(self, ids: impl IntoIterator<Item = #rt::codegen::ConnectionId>) -> Self {
                    #push(self.0.only(ids))
                }

                #(#push_methods)*
            }
        }
    }
}

fn client_tokens(hub: &Hub, rt: &TokenStream) -> TokenStream {
    let snake = hub.name.to_snake_case();
    let module = format_ident!("{}_client", snake);
    let client = format_ident!("{}Client", hub.name);
    let receiver = format_ident!("{}Receiver", hub.name);
    let full = hub.full_name();
    let path_str = format!("/{full}/Connect");
    let request = path(&hub.request);
    let response = path(&hub.response);
    let call_enum = path(&hub.call_enum);
    let event_enum = path(&hub.event_enum);
    let module_doc = format!(" Client side of the `{full}` hub.");
    let client_doc =
        format!(" A typed client of the `{full}` hub: one stream, calls multiplexed by id.");
    let hub_doc = docs(&hub.doc);

    let call_methods = hub.calls.iter().map(|c| {
        let v = format_ident!("{}", c.variant);
        let name = format_ident!("{}", c.name);
        let send_name = format_ident!("send_{}", c.name);
        let doc = docs(&c.doc);
        let reply = ty(&c.reply);
        let n = &c.name;
        let (arg, val) = match &c.request {
            Some(r) => {
                let r = path(r);
                (quote!(request: #r), quote!(request))
            }
            None => (quote!(), quote!(())),
        };
        let send_doc = format!(" Sends `{n}` without waiting for a reply (fire-and-forget, call id 0). A failure comes back to the receiver's `on_error`.");
        quote! {
            #doc
            pub async fn #name(&self, #arg) -> ::core::result::Result<#reply, #rt::codegen::ClientError> {
                match self.inner.call(#call_enum::#v(#val)).await? {
                    #event_enum::#v(reply) => Ok(reply),
                    _ => Err(#rt::codegen::ClientError::UnexpectedReply(#n)),
                }
            }

            #[doc = #send_doc]
            pub async fn #send_name(&self, #arg) -> ::core::result::Result<(), #rt::codegen::ClientError> {
                self.inner.send(#call_enum::#v(#val)).await
            }
        }
    });
    let receiver_methods = hub.pushes.iter().map(|p| {
        let name = format_ident!("{}", p.name);
        let doc = docs(&p.doc);
        let message = ty(&p.message);
        let arg = quote!(message: #message);
        quote! {
            #doc
            fn #name(&self, #arg) {}
        }
    });
    let arc_methods = hub.pushes.iter().map(|p| {
        let name = format_ident!("{}", p.name);
        let message = ty(&p.message);
        let arg = quote!(message: #message);
        quote! {
            fn #name(&self, #arg) {
                (**self).#name(message)
            }
        }
    });
    let push_arms = hub.pushes.iter().map(|p| {
        let v = format_ident!("{}", p.variant);
        let name = format_ident!("{}", p.name);
        quote!(#event_enum::#v(m) => self.0.#name(m),)
    });
    let answer_ty = match &hub.answer_enum {
        Some(a) => path(a),
        None => quote!(()),
    };
    let ask_receiver_methods = hub.asks.iter().map(|a| {
        let name = format_ident!("{}", a.name);
        let doc = docs(&a.doc);
        let message = ty(&a.message);
        let answer = ty(&a.answer);
        let n = &a.name;
        let unimplemented = format!("this client does not answer `{n}`");
        quote! {
            #doc
            ///
            /// An ask from the server: return the answer (or a status). Runs on a task
            /// of its own; it may make calls on the client meanwhile. The default
            /// answers `UNIMPLEMENTED`.
            fn #name(&self, message: #message) -> impl ::core::future::Future<Output = ::core::result::Result<#answer, #rt::codegen::tonic::Status>> + Send {
                async move { Err(#rt::codegen::tonic::Status::unimplemented(#unimplemented)) }
            }
        }
    });
    let ask_arc_methods = hub.asks.iter().map(|a| {
        let name = format_ident!("{}", a.name);
        let message = ty(&a.message);
        let answer = ty(&a.answer);
        quote! {
            fn #name(&self, message: #message) -> impl ::core::future::Future<Output = ::core::result::Result<#answer, #rt::codegen::tonic::Status>> + Send {
                (**self).#name(message)
            }
        }
    });
    let ask_arms = hub.asks.iter().map(|a| {
        let v = format_ident!("{}", a.variant);
        let name = format_ident!("{}", a.name);
        let answer_enum = path(
            hub.answer_enum
                .as_deref()
                .expect("asks have an answer oneof"),
        );
        quote! {
            #event_enum::#v(m) => Ok(::std::boxed::Box::pin(async move {
                self.0.#name(m).await.map(#answer_enum::#v)
            })),
        }
    });
    let on_ask = (!hub.asks.is_empty()).then(|| quote! {
        fn on_ask(self: ::std::sync::Arc<Self>, event: #event_enum) -> ::core::result::Result<#rt::codegen::BoxFuture<'static, ::core::result::Result<#answer_ty, #rt::codegen::tonic::Status>>, #event_enum> {
            match event {
                #(#ask_arms)*
                other => Err(other),
            }
        }
    });
    let (answer_field, answer_none) = if hub.answer_enum.is_some() {
        (quote!(answer), quote!(answer: None,))
    } else {
        (quote!(), quote!())
    };
    let answer_body = if hub.answer_enum.is_some() {
        quote! {
            let (answer, error) = match answer {
                Ok(a) => (Some(a), None),
                Err(s) => (None, Some(#rt::codegen::hub_v1::CallError { code: s.code() as i32, message: s.message().to_owned(), ..::core::default::Default::default() })),
            };
            #request {
                id: 0,
                call: None,
                control: Some(#rt::codegen::hub_v1::ClientControl {
                    kind: Some(#rt::codegen::hub_v1::client_control::Kind::Answer(#rt::codegen::hub_v1::AnswerInfo { id, error })),
                }),
                #answer_field
            }
        }
    } else {
        quote! {
            let error = answer.err().map(|s| #rt::codegen::hub_v1::CallError { code: s.code() as i32, message: s.message().to_owned(), ..::core::default::Default::default() });
            #request {
                id: 0,
                call: None,
                control: Some(#rt::codegen::hub_v1::ClientControl {
                    kind: Some(#rt::codegen::hub_v1::client_control::Kind::Answer(#rt::codegen::hub_v1::AnswerInfo { id, error })),
                }),
            }
        }
    };

    quote! {
        #[doc = #module_doc]
        pub mod #module {
            #![allow(unused_variables, dead_code, missing_docs, clippy::let_unit_value, clippy::unit_arg, clippy::single_match, clippy::match_single_binding)]

            /// Receives this hub's pushes. Methods are called in order on the client's
            /// reader task: keep them quick, or forward to a channel. Every method has
            /// an empty default.
            pub trait #receiver: Send + Sync + 'static {
                #(#receiver_methods)*

                #(#ask_receiver_methods)*

                /// Called with the sequence number of each push, before its method.
                /// A gap means pushes were dropped for this connection.
                fn on_seq(&self, seq: u64) {}

                /// An error frame not tied to a call (failed fire-and-forget call, bad frame).
                fn on_error(&self, code: #rt::codegen::tonic::Code, message: &str) {}

                /// The connection's state changed: reconnecting, resumed, resync needed
                /// (join again), closed. Called in order with the pushes.
                fn on_connection_state(&self, state: &#rt::codegen::ConnectionState) {}

                /// Pushes to `group` this connection should have had were lost and could
                /// not be recovered (`missed` 0: how many is unknown): resync what the
                /// group's pushes carry. Called in order with the pushes (the client
                /// logs it too, as a warning).
                fn on_pushes_lost(&self, group: &str, missed: u64, reason: &str) {}
            }

            /// A receiver that ignores every push.
            impl #receiver for () {}

            /// A shared receiver.
            impl<R: #receiver + ?Sized> #receiver for ::std::sync::Arc<R> {
                #(#arc_methods)*

                #(#ask_arc_methods)*

                fn on_seq(&self, seq: u64) {
                    (**self).on_seq(seq)
                }

                fn on_error(&self, code: #rt::codegen::tonic::Code, message: &str) {
                    (**self).on_error(code, message)
                }

                fn on_connection_state(&self, state: &#rt::codegen::ConnectionState) {
                    (**self).on_connection_state(state)
                }

                fn on_pushes_lost(&self, group: &str, missed: u64, reason: &str) {
                    (**self).on_pushes_lost(group, missed, reason)
                }
            }

            #[doc = #client_doc]
            #hub_doc
            #[derive(Clone, Debug)]
            pub struct #client {
                inner: #rt::codegen::HubClient<Spec>,
            }

            impl #client {
                /// Connects over `channel` with the default options.
                pub async fn connect(
                    channel: #rt::codegen::tonic::transport::Channel,
                    receiver: impl #receiver,
                ) -> ::core::result::Result<Self, #rt::codegen::ClientError> {
                    Self::connect_with(channel, #rt::codegen::ConnectOptions::default(), receiver).await
                }

                /// Connects over any tonic transport (e.g. a `Channel` wrapped in an
                /// interceptor) with `options` (metadata, timeouts, reconnection; a
                /// reconnect opens a new stream on the same transport).
                pub async fn connect_with<T>(
                    service: T,
                    options: #rt::codegen::ConnectOptions,
                    receiver: impl #receiver,
                ) -> ::core::result::Result<Self, #rt::codegen::ClientError>
                where
                    T: #rt::codegen::tonic::client::GrpcService<#rt::codegen::tonic::body::Body> + Send + 'static,
                    T::Future: Send,
                    T::Error: Into<#rt::codegen::tonic::codegen::StdError>,
                    T::ResponseBody: #rt::codegen::tonic::codegen::Body<Data = #rt::codegen::tonic::codegen::Bytes> + Send + 'static,
                    <T::ResponseBody as #rt::codegen::tonic::codegen::Body>::Error: Into<#rt::codegen::tonic::codegen::StdError> + Send,
                {
                    let handler = ::std::sync::Arc::new(Handler(receiver));
                    let inner = #rt::codegen::HubClient::connect(service, options, handler).await?;
                    Ok(#client { inner })
                }

                /// The untyped client underneath (connection info and state, latency, closed, custom timeouts).
                pub fn raw(&self) -> &#rt::codegen::HubClient<Spec> {
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
                pub async fn closed(&self) -> #rt::codegen::CloseStatus {
                    self.inner.closed().await
                }

                #(#call_methods)*
            }

            #[doc(hidden)]
            #[derive(Debug)]
            pub struct Spec;

            impl #rt::codegen::ClientSpec for Spec {
                type Request = #request;
                type Response = #response;
                type Call = #call_enum;
                type Event = #event_enum;
                type Answer = #answer_ty;
                const PATH: &'static str = #path_str;

                fn request(id: u64, call: Option<#call_enum>, control: Option<#rt::codegen::hub_v1::ClientControl>) -> #request {
                    #request { id, call, control, #answer_none }
                }

                fn answer(id: u64, answer: ::core::result::Result<#answer_ty, #rt::codegen::tonic::Status>) -> #request {
                    #answer_body
                }

                fn split(r: #response) -> #rt::codegen::ResponseParts<#event_enum> {
                    #rt::codegen::ResponseParts { id: r.id, seq: r.seq, error: r.error, control: r.control, event: r.event }
                }
            }

            struct Handler<R>(R);

            impl<R: #receiver> #rt::codegen::PushHandler<#event_enum, #answer_ty> for Handler<R> {
                fn on_push(&self, seq: u64, event: #event_enum) {
                    self.0.on_seq(seq);
                    match event {
                        #(#push_arms)*
                        _ => {}
                    }
                }

                fn on_error(&self, code: #rt::codegen::tonic::Code, message: &str) {
                    self.0.on_error(code, message)
                }

                fn on_state(&self, state: &#rt::codegen::ConnectionState) {
                    self.0.on_connection_state(state)
                }

                fn on_pushes_lost(&self, group: &str, missed: u64, reason: &str) {
                    self.0.on_pushes_lost(group, missed, reason)
                }

                #on_ask
            }
        }
    }
}
