//! Compiles the protos with protox (pure Rust; no system `protoc` needed).
//!
//! The API is compiled twice. The first pass is ordinary clients and servers. The second
//! emits only the `Watch` server, with `WatchResponse` mapped to a hand-encoded type, so an
//! event is encoded once and its bytes are shared by every watcher it goes to.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/bowline/v1/bowline.proto",
        "proto/bowline/v1/watch.proto",
        "proto/bowline/v1/proxy.proto",
        "proto/bowline/v1/peer.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let file_descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(file_descriptors.clone())?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?).join("watch_wire");
    std::fs::create_dir_all(&out_dir)?;
    let mut watch_only = file_descriptors;
    watch_only.file.retain(|f| f.package() == "bowline.v1");
    for file in &mut watch_only.file {
        if file.name() != "bowline/v1/watch.proto" {
            file.service.clear();
        }
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .out_dir(&out_dir)
        .extern_path(
            ".bowline.v1.WatchResponse",
            "crate::watch::wire::EncodedWatchResponse",
        )
        .extern_path(".bowline.v1", "crate::proto::v1")
        .compile_fds(watch_only)?;

    // etcd's v3 API subset, client only: `bowline bench` drives etcd with the same loop.
    let etcd_proto = "proto/etcd/etcdserverpb.proto";
    println!("cargo:rerun-if-changed={etcd_proto}");
    let etcd_out = PathBuf::from(std::env::var("OUT_DIR")?).join("etcd");
    std::fs::create_dir_all(&etcd_out)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .out_dir(&etcd_out)
        .compile_fds(protox::compile([etcd_proto], ["proto"])?)?;
    Ok(())
}
