//! Generated protobuf and gRPC code (see `proto/`).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The public API, `bowline.v1`.
pub mod v1 {
    tonic::include_proto!("bowline.v1");
}

/// The internal peer protocol, `bowline.peer.v1`.
pub mod peer {
    tonic::include_proto!("bowline.peer.v1");
}

/// The subset of etcd's v3 API that `bowline bench` drives (client only).
pub mod etcd {
    include!(concat!(env!("OUT_DIR"), "/etcd/etcdserverpb.rs"));
}

/// The `Watch` server with pre-encoded responses (see `build.rs`).
pub mod watch_wire {
    include!(concat!(env!("OUT_DIR"), "/watch_wire/bowline.v1.rs"));
}
