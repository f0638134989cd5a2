//! Generates the probe hub (`proto/test/v1/probe.proto`), which doubles as the
//! compile test of `hub-build`'s output.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    hub_build::configure().compile_protos(&["proto/test/v1/probe.proto"], &["proto"])?;
    Ok(())
}
