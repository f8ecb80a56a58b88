//! Compiles the protos with protox (pure Rust; no system `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/bowline/v1/bowline.proto",
        "proto/bowline/v1/peer.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let file_descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(file_descriptors)?;
    Ok(())
}
