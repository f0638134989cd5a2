//! Generates the chat hub code from `proto/chat/v1/chat.proto`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    hub_build::configure().compile_protos(&["../proto/chat/v1/chat.proto"], &["../proto"])?;
    Ok(())
}
