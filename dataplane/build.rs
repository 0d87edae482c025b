//! Compiles proto/cni.proto without a system protoc: protox builds the descriptor set in pure Rust.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cni.proto");
    let fds = protox::compile(["proto/cni.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
