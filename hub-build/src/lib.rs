//! Codegen for the hub framework, in the manner of `tonic-build`.
//!
//! In `build.rs`:
//!
//! ```no_run
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     hub_build::configure().compile_protos(&["proto/chat/v1/chat.proto"], &["proto"])?;
//!     Ok(())
//! }
//! ```
//!
//! and in the crate: `pub mod chat { hub_server::include_proto!("chat.v1"); }`.
//!
//! Protos are compiled with [protox], so no system `protoc` is needed. The framework
//! proto `hub/v1/hub.proto` is built in: hub protos import it without copying it.
//! Every service in the listed files (not their imports) must be a hub (see
//! "Conventions" below); a proto that breaks a convention fails the build with a
//! message naming the element.
//!
//! For each hub `FooHub` this generates, next to the prost messages:
//!
//! - `foo_hub_server`: a `FooHub` trait (one async method per call, plus
//!   `on_connect`/`on_disconnect`/`on_members_lost`/`on_removed` hooks), `FooHubServer<T>` (a tonic service),
//!   `FooHubPush` (typed pushes: one method per push case), and the aliases
//!   `FooHubContext` and `FooHubHandle`;
//! - `foo_hub_emitter` (with the server side): `FooHubEmitter`, the same typed
//!   pushes (`emitter.group(g)?.except(ids).on_thing(m)`, `.user(id)?`,
//!   `.connection(id)`) and the commands (`disconnect_user`, `disconnect_connection`,
//!   `remove_from_group`) from a process that is not a hub server, through a backplane
//!   emitter (`hub_redis::RedisEmitter`, `hub_nats::NatsEmitter`);
//! - `foo_hub_client`: `FooHubClient` (one async method per call and a
//!   fire-and-forget `send_*` variant) and a `FooHubReceiver` trait (one method
//!   per push case).
//!
//! An encoded `FileDescriptorSet` of everything compiled is written to
//! `$OUT_DIR/hub_descriptor.bin` for gRPC server reflection.
//!
//! # Conventions
//!
//! ```proto
//! service FooHub { rpc Connect(stream FooRequest) returns (stream FooResponse); }
//! message FooRequest {
//!   uint64 id = 1;                       // call id; 0 = fire-and-forget
//!   hub.v1.ClientControl control = 15;
//!   oneof call { BarRequest bar = 16; google.protobuf.Empty baz = 17; }
//!   oneof answer { Verdict confirm = 200; }   // optional: answers to the server's asks
//! }
//! message FooResponse {
//!   uint64 id = 1; uint64 seq = 2; hub.v1.CallError error = 3; hub.v1.ServerControl control = 15;
//!   oneof event {
//!     BarReply bar = 16; google.protobuf.Empty baz = 17;   // a reply per call: same name and number
//!     Thing on_thing = 100;                                // pushes: named on_*
//!     Offer confirm = 200;                                 // asks: same name and number as an answer case
//!   }
//! }
//! ```
//!
//! An **ask** is a response case paired by name and field number with a case of the
//! request's optional `oneof answer`: the server sends `Offer` and waits for the
//! client's `Verdict`. Generated: `ctx.connection(id).confirm(offer)` and the same on
//! users and groups (one `AskReply` per target connection), and a receiver method
//! `async fn confirm(&self, offer) -> Result<Verdict, Status>` on the client. An
//! answer case without its ask case (or with another number) fails the build naming
//! the answer case; ask names follow the call rules (not `on_*`, not reserved).
//!
//! Call and push payloads are messages (`google.protobuf.Empty` becomes `()` and is
//! left out of method signatures). Field numbers below 16 are the framework's.

mod generate;
mod model;

use std::path::{Path, PathBuf};

pub use model::{AskCase, Call, Hub, PushCase};

/// The framework proto, built in so hub protos can `import "hub/v1/hub.proto"`.
///
/// A copy of hub-core's `proto/hub/v1/hub.proto` kept inside this crate, so that it
/// packages on its own; a test checks the two are the same.
pub const HUB_PROTO: &str = include_str!("../proto/hub/v1/hub.proto");

/// Why codegen failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The protos did not compile.
    #[error("hub-build: {0}")]
    Protox(#[from] protox::Error),
    /// A hub breaks a convention; the message names the proto element.
    #[error("hub-build: {element}: {message}")]
    Convention {
        /// The proto element (`chat.v1.ChatRequest.call.join`).
        element: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// Writing the output failed.
    #[error("hub-build: {0}")]
    Io(#[from] std::io::Error),
    /// An environment variable cargo sets for build scripts is missing.
    #[error("hub-build: {0} is not set: run from a build script or set out_dir")]
    Env(&'static str),
}

/// Starts a [`Builder`].
pub fn configure() -> Builder {
    Builder {
        server: true,
        client: true,
        out_dir: None,
        runtime_server: "::hub_server".into(),
        runtime_client: "::hub_client".into(),
    }
}

/// Configures and runs codegen.
#[derive(Debug, Clone)]
pub struct Builder {
    server: bool,
    client: bool,
    out_dir: Option<PathBuf>,
    runtime_server: String,
    runtime_client: String,
}

impl Builder {
    /// Generate the server side (needs the `hub-server` dependency). Default on.
    pub fn build_server(mut self, yes: bool) -> Self {
        self.server = yes;
        self
    }

    /// Generate the client side (needs the `hub-client` dependency). Default on.
    pub fn build_client(mut self, yes: bool) -> Self {
        self.client = yes;
        self
    }

    /// Where to write the code (default `$OUT_DIR`).
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Compiles `protos` (found in `includes`) and writes the code.
    pub fn compile_protos(
        self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<(), Error> {
        let out_dir = match &self.out_dir {
            Some(d) => d.clone(),
            None => PathBuf::from(std::env::var_os("OUT_DIR").ok_or(Error::Env("OUT_DIR"))?),
        };
        for p in protos {
            println!("cargo:rerun-if-changed={}", p.as_ref().display());
        }
        for i in includes {
            println!("cargo:rerun-if-changed={}", i.as_ref().display());
        }
        let (fds, targets) = compile(protos, includes)?;
        let hubs = model::hubs(&fds, &targets)?;

        let descriptor = prost_types_encode(&fds);
        std::fs::write(out_dir.join("hub_descriptor.bin"), descriptor)?;

        let mut config = prost_build::Config::new();
        config.out_dir(&out_dir);
        let rt = if self.server {
            &self.runtime_server
        } else {
            &self.runtime_client
        };
        // Everything generated goes through the runtime's `codegen` re-exports, so a
        // user crate needs no `prost` or `prost-types` dependency of its own.
        config.prost_path(format!("{rt}::codegen::prost"));
        config.prost_types_path(format!("{rt}::codegen::prost_types"));
        config.extern_path(".hub.v1", format!("{rt}::codegen::hub_v1"));
        config.service_generator(Box::new(generate::Generator {
            hubs,
            server: self.server.then(|| self.runtime_server.clone()),
            client: self.client.then(|| self.runtime_client.clone()),
        }));
        config.compile_fds(fds)?;
        Ok(())
    }
}

fn prost_types_encode(fds: &prost_types::FileDescriptorSet) -> Vec<u8> {
    prost::Message::encode_to_vec(fds)
}

/// Compiles protos with the built-in `hub/v1/hub.proto` and Google's well-known types
/// available; returns the descriptor set (imports included) and the names of the
/// listed files.
pub fn compile(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> Result<(prost_types::FileDescriptorSet, Vec<String>), Error> {
    use protox::file::{
        ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
    };

    struct BuiltIn;
    impl FileResolver for BuiltIn {
        fn open_file(&self, name: &str) -> Result<File, protox::Error> {
            if name == "hub/v1/hub.proto" {
                File::from_source(name, HUB_PROTO)
            } else {
                Err(protox::Error::file_not_found(name))
            }
        }
    }

    let mut resolver = ChainFileResolver::new();
    for include in includes {
        resolver.add(IncludeFileResolver::new(include.as_ref().to_path_buf()));
    }
    resolver.add(BuiltIn);
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true).include_source_info(true);
    let mut targets = Vec::new();
    for proto in protos {
        compiler.open_file(proto.as_ref())?;
    }
    for f in compiler.files() {
        if !f.is_import() {
            targets.push(f.name().to_owned());
        }
    }
    Ok((compiler.file_descriptor_set(), targets))
}

/// Generates the hub code (not the prost messages) for every hub in `protos`, as
/// formatted Rust, one `(package, code)` pair per hub. For tests and tools.
pub fn generate_hub_code(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> Result<Vec<(String, String)>, Error> {
    let (fds, targets) = compile(protos, includes)?;
    let hubs = model::hubs(&fds, &targets)?;
    Ok(hubs
        .iter()
        .map(|h| {
            let tokens = generate::hub_tokens(h, Some("::hub_server"), Some("::hub_client"));
            (h.package.clone(), generate::pretty(tokens))
        })
        .collect())
}
