//! The reference chat/lobby hub, used by the `chat-server` and `chat-client`
//! binaries, the tests and the benchmark.

use std::time::Duration;

use hub_server::{GroupError, Hubs};

/// Generated code of `proto/chat/v1/chat.proto`: messages, the server and the client.
pub mod chat {
    hub_server::include_proto!("chat.v1");
}

/// Generated code of `proto/chat/v1/login.proto`: the development login service
/// (an ordinary unary gRPC service) and its client.
pub mod login {
    #![allow(missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/login/chat.v1.rs"));
}

pub mod auth;
pub mod chat_hub;
pub mod metrics;

/// The encoded descriptors of the chat hub's protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = hub_server::include_file_descriptor_set!();

/// The encoded descriptor of the login service's proto, for server reflection.
pub const LOGIN_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/login/descriptor.bin"));

/// How long a token from the development login is good for, by default.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The chat hub with `hubs`' defaults, taking each connection's user from its bearer
/// token (signed with `secret`) and refusing `Connect` without a valid one
/// (`UNAUTHENTICATED`).
pub fn chat_service(
    hubs: &Hubs,
    secret: &auth::TokenSecret,
) -> Result<chat::chat_hub_server::ChatHubServer<chat_hub::Chat>, GroupError> {
    chat::chat_hub_server::ChatHubServer::builder(chat_hub::Chat)
        .hubs(hubs)
        .identity(secret.identity_provider())
        .require_identity(true)
        .build()
}

/// The development login service, signing with `secret` tokens good for `ttl`.
pub fn login_service(
    secret: &auth::TokenSecret,
    ttl: Duration,
) -> login::chat_login_server::ChatLoginServer<auth::Login> {
    login::chat_login_server::ChatLoginServer::new(auth::Login::new(secret.clone(), ttl))
}
