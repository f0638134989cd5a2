//! Snapshot and token tests of the generator on the reference chat hub.
//!
//! The generated code of `proto/chat/v1/chat.proto` is compared with the checked-in
//! `tests/snapshots/chat.v1.rs`. After an intended change of the generator, rewrite
//! it with `UPDATE_SNAPSHOTS=1 cargo test -p hub-build --test snapshot` and review
//! the diff.

// Helpers here are test code too: an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chat_code() -> String {
    let root = root();
    let mut hubs = hub_build::generate_hub_code(
        &[root.join("proto/chat/v1/chat.proto")],
        &[root.join("proto")],
    )
    .expect("the chat proto follows the conventions");
    assert_eq!(hubs.len(), 1);
    let (package, code) = hubs.remove(0);
    assert_eq!(package, "chat.v1");
    code
}

#[test]
fn chat_hub_code_matches_the_snapshot() {
    let code = chat_code();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/chat.v1.rs");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v != "0") {
        std::fs::write(&path, &code).expect("write snapshot");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_SNAPSHOTS=1 to create it",
            path.display()
        )
    });
    if want != code {
        let line = want
            .lines()
            .zip(code.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| want.lines().count().min(code.lines().count()));
        panic!(
            "generated code differs from {} at line {}:\n  snapshot:  {:?}\n  generated: {:?}\n\
             If the change is intended, run with UPDATE_SNAPSHOTS=1 and review the diff.",
            path.display(),
            line + 1,
            want.lines().nth(line),
            code.lines().nth(line),
        );
    }
}

/// The roots of the absolute paths in `code`: `core`, `std`, or a crate and its first
/// module (`hub_server::codegen`).
fn path_roots(code: &str) -> std::collections::BTreeSet<String> {
    let bytes = code.as_bytes();
    let mut roots = std::collections::BTreeSet::new();
    for (i, _) in code.match_indices("::") {
        let before = if i == 0 { b' ' } else { bytes[i - 1] };
        if before.is_ascii_alphanumeric() || before == b'_' || before == b'>' || before == b':' {
            continue; // not the start of a path
        }
        let segments: Vec<String> = code[i + 2..]
            .split("::")
            .take(2)
            .map(|s| {
                s.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect();
        let root = match segments[0].as_str() {
            "core" | "std" => segments[0].clone(),
            _ => segments.join("::"),
        };
        roots.insert(root);
    }
    roots
}

const ALLOWED_ROOTS: [&str; 4] = ["core", "hub_client::codegen", "hub_server::codegen", "std"];

/// Generated code must compile in a crate that depends on the runtime crates only:
/// every absolute path starts at `::hub_server::codegen`, `::hub_client::codegen`,
/// `::core` or `::std`.
#[test]
fn generated_code_names_only_the_runtime_codegen_modules() {
    let roots = path_roots(&chat_code());
    assert!(
        roots.iter().all(|r| ALLOWED_ROOTS.contains(&r.as_str())),
        "{roots:?}"
    );
    assert!(
        roots.contains("hub_server::codegen") && roots.contains("hub_client::codegen"),
        "{roots:?}"
    );
}

/// The prost messages too: no `::prost` or `::prost_types`, so users need neither.
#[test]
fn generated_messages_name_prost_through_the_runtime() {
    let root = root();
    for server in [true, false] {
        let out = tempfile::tempdir().expect("tempdir");
        hub_build::configure()
            .build_server(server)
            .out_dir(out.path())
            .compile_protos(
                &[root.join("proto/chat/v1/chat.proto")],
                &[root.join("proto")],
            )
            .expect("compile");
        let module = std::fs::read_to_string(out.path().join("chat.v1.rs")).expect("chat.v1.rs");
        let roots = path_roots(&module);
        assert!(
            roots.iter().all(|r| ALLOWED_ROOTS.contains(&r.as_str())),
            "server {server}: {roots:?}"
        );
        let rt = if server { "hub_server" } else { "hub_client" };
        assert!(
            module.contains(&format!("::{rt}::codegen::prost::Message")),
            "server {server}"
        );
    }
}

/// Doc lines made from names show the names.
#[test]
fn docs_name_the_generated_types() {
    let code = chat_code();
    assert!(
        code.contains("/// Builds a [`ChatHubServer`]."),
        "builder doc"
    );
    assert!(
        !code.contains("[`#"),
        "an uninterpolated name in a doc line"
    );
}

/// The framework proto built into hub-build is hub-core's.
#[test]
fn the_built_in_hub_proto_is_hub_cores() {
    let core = std::fs::read_to_string(root().join("hub-core/proto/hub/v1/hub.proto"))
        .expect("hub-core's hub.proto");
    assert!(
        core == hub_build::HUB_PROTO,
        "hub-build/proto/hub/v1/hub.proto differs from hub-core's: cp hub-core/proto/hub/v1/hub.proto hub-build/proto/hub/v1/"
    );
}

#[test]
fn proto_comments_become_docs_and_names_follow_the_proto() {
    let code = chat_code();
    for expected in [
        // Service, call and push comments.
        "/// A chat lobby: join a room, talk to everyone in it, whisper to one user.",
        "/// Join a room (as the user of the connection's token); replies with the room's",
        "/// Push: a message said in the room.",
        // The one gRPC method.
        "\"/chat.v1.ChatHub/Connect\"",
        "const SERVICE: &'static str = \"chat.v1.ChatHub\";",
        // Server trait, typed pushes, client, receiver.
        "pub trait ChatHub: Send + Sync + 'static",
        "pub struct ChatHubPush(",
        "pub async fn on_message(",
        "pub struct ChatHubClient",
        "pub async fn send_say(",
        "pub trait ChatHubReceiver: Send + Sync + 'static",
    ] {
        assert!(code.contains(expected), "missing {expected:?}");
    }
    // `google.protobuf.Empty` arguments are left out of signatures (compared without
    // whitespace: the code is pretty-printed).
    let squashed: String = code.split_whitespace().collect();
    for signature in [
        "fn leave(&self, ctx: &ChatHubContext,)",
        "pub async fn leave(&self,) -> ::core::result::Result<(), ::hub_client::codegen::ClientError>",
        "fn say(&self, ctx: &ChatHubContext, request: super::SayRequest,)",
    ] {
        let s: String = signature.split_whitespace().collect();
        assert!(squashed.contains(&s), "missing {signature:?}");
    }
}

#[test]
fn compile_protos_writes_the_module_and_the_descriptor_set() {
    let root = root();
    let out = tempfile::tempdir().expect("tempdir");
    hub_build::configure()
        .out_dir(out.path())
        .compile_protos(
            &[root.join("proto/chat/v1/chat.proto")],
            &[root.join("proto")],
        )
        .expect("compile");
    let module = std::fs::read_to_string(out.path().join("chat.v1.rs")).expect("chat.v1.rs");
    assert!(
        module.contains("pub struct ChatRequest"),
        "prost messages are there"
    );
    assert!(module.contains("pub mod chat_hub_server"));
    assert!(module.contains("pub mod chat_hub_client"));
    // The framework types come from the runtime crate, not from a copy.
    assert!(module.contains("::hub_server::codegen::hub_v1::ClientControl"));
    assert!(!out.path().join("hub.v1.rs").exists());
    let fds = std::fs::read(out.path().join("hub_descriptor.bin")).expect("descriptor set");
    let fds = <prost_types::FileDescriptorSet as prost::Message>::decode(fds.as_slice())
        .expect("decodes");
    let names: Vec<&str> = fds.file.iter().map(|f| f.name()).collect();
    assert!(
        names.contains(&"chat/v1/chat.proto") && names.contains(&"hub/v1/hub.proto"),
        "{names:?}"
    );

    // Client only: no server module, and the framework types from the client crate.
    let out = tempfile::tempdir().expect("tempdir");
    hub_build::configure()
        .build_server(false)
        .out_dir(out.path())
        .compile_protos(
            &[root.join("proto/chat/v1/chat.proto")],
            &[root.join("proto")],
        )
        .expect("compile");
    let module = std::fs::read_to_string(out.path().join("chat.v1.rs")).expect("chat.v1.rs");
    assert!(!module.contains("chat_hub_server"));
    assert!(module.contains("pub mod chat_hub_client"));
    assert!(module.contains("::hub_client::codegen::hub_v1::ClientControl"));
}
