//! The reference chat/lobby hub, used by the `chat-server` and `chat-client`
//! binaries, the tests and the benchmark.

/// Generated code of `proto/chat/v1/chat.proto`: messages, the server and the client.
pub mod chat {
    hub_server::include_proto!("chat.v1");
}

pub mod chat_hub;
pub mod metrics;

/// The encoded descriptors of every proto compiled here, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = hub_server::include_file_descriptor_set!();
