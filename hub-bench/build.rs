//! Generates the bench hub code from `proto/bench/v1/bench.proto`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    hub_build::configure().compile_protos(&["proto/bench/v1/bench.proto"], &["proto"])?;
    Ok(())
}
