//! Compiles the framework proto (`proto/hub/v1/hub.proto`) with protox, so no system `protoc` is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let file = proto_dir.join("hub/v1/hub.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&proto_dir])?;
    let mut config = prost_build::Config::new();
    config.bytes([
        ".hub.v1.Envelope.frame",
        ".hub.v1.Ask.frame",
        ".hub.v1.Answer.frame",
    ]);
    config.compile_fds(fds)?;
    Ok(())
}
