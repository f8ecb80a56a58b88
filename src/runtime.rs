//! Runtimes of their own for the Raft path and for client connections.
//!
//! The Raft runtime runs openraft's core, replication and state-machine tasks, the peer
//! server and the peer channels' connections. With 10,000 watchers, one committed revision
//! wakes thousands of watch streams on the client runtime. Sharing that runtime, a
//! follower's append-entries handler and its apply waited behind every woken stream:
//! followers' watchers saw events 175 ms (p50) to 1 s (p99) late and writes waited for the
//! followers' acknowledgements. On its own thread the Raft path is scheduled by the kernel
//! beside the watch fan-out instead of queued behind it.
//!
//! The client runtime serves the client port with as many workers as `--client-threads`
//! asks (one per CPU unless set), like Envoy's `--concurrency`, so that a node sharing its
//! machine can be held to a part of it. In the benchmarks' three nodes on two CPUs, one
//! worker each once cost a follower a third less CPU per linearizable read, but gave no
//! more reads a second beside etcd and cost the leader's own reads about a sixth, so the
//! default stays one per CPU. Most of that gap came from two workers splitting each batch
//! of woken reads; a connection's requests now run in its own task
//! ([`crate::api::server`]), which leaves 10–13 % (see `docs/benchmarks.md`).

use std::future::Future;

use anyhow::Context;
use tokio::runtime::{Handle, Runtime};

/// Worker threads of the Raft runtime: Raft's work per entry is small and mostly waits on
/// the network and the log's fsync thread.
pub const RAFT_WORKER_THREADS: usize = 1;

/// Owns a runtime; dropping it (also from async code) stops it without blocking.
pub struct DedicatedRuntime {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl DedicatedRuntime {
    /// Starts a runtime of `threads` workers named `name`.
    pub fn start(name: &str, threads: usize) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(name)
            .enable_all()
            .build()
            .with_context(|| format!("start the {name} runtime"))?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
        })
    }

    /// A handle for spawning onto the runtime.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `future` on this runtime and waits for it from any runtime.
    pub async fn run<F>(&self, future: F) -> anyhow::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(future)
            .await
            .context("dedicated runtime task failed")
    }
}

impl Drop for DedicatedRuntime {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's worker would panic; its tasks are done or
        // abandoned by now (the servers were stopped first).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Client threads when none are configured: one per CPU this process may use.
pub fn default_client_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_named_threads_and_the_runtime_drops_inside_async_code() {
        let runtime = DedicatedRuntime::start("raft", RAFT_WORKER_THREADS).unwrap();
        let name = runtime
            .run(async { std::thread::current().name().map(str::to_string) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("raft"));
        drop(runtime);
    }
}
