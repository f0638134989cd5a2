//! Generates the chat hub code from `proto/chat/v1/chat.proto` (hub-build) and the
//! development login service from `proto/chat/v1/login.proto` (an ordinary unary gRPC
//! service: tonic-prost-build, fed by protox so no system `protoc` is needed).
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    hub_build::configure().compile_protos(&["../proto/chat/v1/chat.proto"], &["../proto"])?;

    // Same package (`chat.v1`) as the hub, so its code goes in a directory of its own.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("login");
    std::fs::create_dir_all(&out)?;
    let fds = protox::compile(["chat/v1/login.proto"], ["../proto"])?;
    std::fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .out_dir(&out)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=../proto/chat/v1/login.proto");
    Ok(())
}
