//! The `bowline` binary: see `bowline --help`.

// Every request allocates (HTTP/2 frames, protobuf, entries, events) across worker threads;
// under `bench put` glibc's malloc and free took a quarter of the leader's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    bowline::cli::main()
}
