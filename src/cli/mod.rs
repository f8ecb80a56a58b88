//! The `bowline` command line: a resource-oriented CLI in the style of kubectl and etcdctl.

mod cluster;
mod dev;
mod endpoint;
pub mod output;
mod proxy;
mod resources;
mod serve;
mod tools;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client::{Client, ClientOptions};
use crate::telemetry::{init_logging, LogFormat};
pub use dev::http_get;
pub use output::OutputFormat;

/// Default client endpoints: the nodes `bowline dev` starts.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

/// Bowline: a highly available service mesh control plane.
#[derive(Debug, Parser)]
#[command(name = "bowline", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Client addresses of cluster nodes (any node will do; the client fails over).
    #[arg(long, global = true, env = "BOWLINE_ENDPOINTS", default_value = DEFAULT_ENDPOINTS, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(
        short,
        long,
        global = true,
        value_enum,
        default_value = "table",
        env = "BOWLINE_OUTPUT"
    )]
    pub output: OutputFormat,
    /// Read consistency: linearizable (default) or stale (answer from the contacted node at once).
    #[arg(long, global = true, value_enum, default_value = "linearizable")]
    pub consistency: ConsistencyArg,
    /// Give up on a request after this many seconds (across retries).
    #[arg(long, global = true, default_value_t = 15)]
    pub timeout: u64,
    /// Log format for `serve` and `dev`.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "BOWLINE_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Read consistency on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsistencyArg {
    /// Reflects every write acknowledged before the read began.
    Linearizable,
    /// Served from the contacted node's state at once.
    Stale,
}

impl ConsistencyArg {
    fn to_proto(self) -> i32 {
        match self {
            ConsistencyArg::Linearizable => crate::proto::v1::Consistency::Linearizable as i32,
            ConsistencyArg::Stale => crate::proto::v1::Consistency::Stale as i32,
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node.
    Serve(Box<serve::ServeArgs>),
    /// Run a local cluster of nodes as child processes (data in a local folder).
    Dev(dev::DevArgs),
    /// Create or update resources from a file (YAML or JSON, multi-document).
    Apply(resources::ApplyArgs),
    /// Show resources.
    Get(resources::GetArgs),
    /// Delete a resource.
    Delete(resources::DeleteArgs),
    /// Register, deregister endpoints.
    #[command(subcommand)]
    Endpoint(endpoint::EndpointCommand),
    /// Cluster membership and status.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Follow changes, one line per event (JSON lines with -o json); resumes across node failures.
    Watch(watch::WatchArgs),
    /// Envoy and proxyless gRPC: bootstrap files and connection status.
    #[command(subcommand)]
    Proxy(proxy::ProxyCommand),
    /// Fault scenarios against a local three-node cluster, with writers and watchers checked.
    Chaos(crate::bench::chaos::ChaosArgs),
    /// Linearizability test: clients read and write registers while nodes are killed,
    /// paused or cut off; every register's history is checked (exit 1 if one is not).
    Jepsen(crate::jepsen::JepsenArgs),
    /// Exit 0 when a node's admin port says it is ready (a healthcheck for containers).
    Ready(tools::ReadyArgs),
    /// A demo HTTP backend that answers with its name and version.
    // Its own `--version` (the version it answers with) replaces the generated flag.
    #[command(disable_version_flag = true)]
    Echo(tools::EchoArgs),
    /// Benchmarks (start a local cluster unless given --bench-endpoints).
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
}

/// What a command needs to talk to the cluster.
pub struct Ctx {
    /// Client with failover.
    pub client: Client,
    /// Output format.
    pub output: OutputFormat,
    /// Read consistency for gets.
    pub consistency: i32,
}

fn client(cli: &Cli) -> anyhow::Result<Ctx> {
    let options = ClientOptions {
        total_timeout: Duration::from_secs(cli.timeout.max(1)),
        ..ClientOptions::default()
    };
    let client = Client::new(&cli.endpoints, options).map_err(anyhow::Error::msg)?;
    Ok(Ctx {
        client,
        output: cli.output,
        consistency: cli.consistency.to_proto(),
    })
}

/// Formats a gRPC status as one line: `CODE: message`.
pub fn status_line(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(ref args) => {
            init_logging(cli.log_format, "info");
            serve::run(args).await
        }
        Command::Dev(ref args) => {
            init_logging(cli.log_format, "info");
            dev::run(args, cli.log_format).await
        }
        Command::Apply(ref args) => resources::apply(&client(&cli)?, args).await,
        Command::Get(ref args) => resources::get(&client(&cli)?, args).await,
        Command::Delete(ref args) => resources::delete(&client(&cli)?, args).await,
        Command::Endpoint(ref cmd) => endpoint::run(&client(&cli)?, cmd).await,
        Command::Cluster(ref cmd) => cluster::run(&client(&cli)?, cmd).await,
        Command::Watch(ref args) => watch::run(&client(&cli)?, args).await,
        Command::Bench(ref cmd) => crate::bench::run(cmd).await,
        Command::Proxy(ref cmd) => proxy::run(&client(&cli)?, cmd).await,
        Command::Ready(ref args) => tools::ready(args).await,
        Command::Chaos(ref args) => {
            init_logging(cli.log_format, "warn");
            crate::bench::chaos::run(args).await
        }
        Command::Jepsen(ref args) => {
            init_logging(cli.log_format, "warn");
            let consistency = match cli.consistency {
                ConsistencyArg::Linearizable => crate::proto::v1::Consistency::Linearizable,
                ConsistencyArg::Stale => crate::proto::v1::Consistency::Stale,
            };
            crate::jepsen::run(args, consistency, cli.output).await
        }
        Command::Echo(ref args) => tools::echo(args).await,
    }
}

/// Keeps this process off transparent huge pages, as Redis and most databases advise.
/// mimalloc asks the kernel for huge pages on its arenas, so the first touch of each 2 MiB
/// region made the kernel zero all of it at once: while the registry grew under `bench put`
/// at concurrency 64, zeroing pages took 15 % of the machine's CPU, and puts ran at 19,000
/// instead of 25,000 ops/s with a p99 of 12 instead of 5 ms. The bench's own client lost
/// 3.5 % of the machine the same way. The flag applies to this process only: children that
/// are other programs (etcd, Envoy) get it cleared before they start (see
/// `bench::cluster::DieWithParent`), and the machine's setting is untouched.
fn keep_off_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and only sets a flag on this
    // process; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not turn transparent huge pages off for this process"
        );
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    quiet_on_closed_stdout();
    keep_off_transparent_huge_pages();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, most specific cause last, like `error: apply web.yaml: document 2: …`.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A command piped into `head` should end quietly, as Unix tools do, instead of panicking
/// on a closed stdout. SIGPIPE stays ignored (Rust's default): restoring its default action
/// also applied to sockets, and a client writing to a node that had just been killed (a
/// failover bench, `bowline watch` following a failure) died silently on that signal.
fn quiet_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `prctl(PR_GET_THP_DISABLE)` says in a child started as the benchmarks start
    /// etcd and Envoy.
    fn child_thp_disabled() -> String {
        use crate::bench::cluster::DieWithParent;
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import ctypes; print(ctypes.CDLL(None).prctl(42, 0, 0, 0, 0))",
            ])
            .die_with_parent()
            .output()
            .expect("run python3");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn bowline_runs_without_transparent_huge_pages_and_other_programs_get_them_back() {
        keep_off_transparent_huge_pages();
        // SAFETY: PR_GET_THP_DISABLE reads a flag of this process; no memory is passed.
        let here = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(here, 1, "this process still allows transparent huge pages");
        assert_eq!(
            child_thp_disabled(),
            "0",
            "a child that is another program inherited the flag"
        );
    }
}
