//! Network namespaces for partition scenarios: one namespace per node, each joined by a veth
//! pair to a bridge in a hub namespace, plus one veth from the root namespace into that hub
//! so the chaos runner and Envoy (in the root namespace) reach every node. A partition is a
//! set of iptables DROP rules inside a node's namespace. Every name carries a per-process
//! prefix, and everything is deleted on drop (also when a run fails half-way).
//!
//! The bridge sits in a hub namespace rather than the root one so that the host's own
//! firewall (Docker sets `FORWARD DROP`, and br_netfilter hands bridged frames to it) never
//! sees node-to-node traffic.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

/// Distinguishes several topologies created by one process.
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// Namespaces, veths and the bridge for `n` nodes, removed on drop.
pub struct Netns {
    /// Prefix of every name created here, unique per process and topology.
    prefix: String,
    /// The first three octets of the /24 every interface here lives in.
    subnet: [u8; 3],
    /// Node namespaces, in node order.
    nodes: Vec<String>,
    /// Namespaces created so far (deleted on drop, even if setup failed half-way).
    created: Vec<String>,
}

/// Whether a program is on PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Fails, naming what is missing, unless this process can create namespaces and rules.
pub fn check_available() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        bail!("partition scenarios need root (network namespaces, veths, iptables); running as uid {uid}");
    }
    for (program, package) in [("ip", "iproute2"), ("iptables", "iptables")] {
        if !on_path(program) {
            bail!("partition scenarios need `{program}` ({package}) on PATH; not found");
        }
    }
    Ok(())
}

/// Runs a command, failing with its stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A /24 in 10.0.0.0/8 that no interface or route of this host uses yet, derived from the
/// process id so parallel runs start from different candidates.
fn free_subnet() -> anyhow::Result<[u8; 3]> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .context("run ip addr")?;
    let routes = Command::new("ip")
        .args(["-4", "route"])
        .output()
        .context("run ip route")?;
    let used = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&routes.stdout)
    );
    let seed = std::process::id() + SEQUENCE.load(Ordering::Relaxed) * 7919;
    for attempt in 0..200u32 {
        let v = seed.wrapping_add(attempt.wrapping_mul(104_729));
        let subnet = [10, 200 + (v % 50) as u8, ((v / 50) % 250) as u8];
        let probe = format!(" 10.{}.{}.", subnet[1], subnet[2]);
        // A covering route (10.0.0.0/8, 10.200.0.0/16) would also clash.
        let covered =
            used.contains("10.0.0.0/8") || used.contains(&format!("10.{}.0.0/16", subnet[1]));
        if !covered && !used.contains(&probe) && !used.contains(&probe[1..]) {
            return Ok(subnet);
        }
    }
    bail!("no free /24 in 10.200.0.0/13 for the partition namespaces")
}

impl Netns {
    /// Creates the hub, `n` node namespaces and the root namespace's way in.
    pub fn create(n: usize) -> anyhow::Result<Netns> {
        check_available()?;
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        // Short: the root-side veth name must fit in 15 bytes.
        let prefix = format!("bwc{:x}s{}", std::process::id(), sequence % 100);
        let mut netns = Netns {
            subnet: free_subnet()?,
            nodes: (0..n).map(|i| format!("{prefix}n{}", i + 1)).collect(),
            created: Vec::new(),
            prefix,
        };
        netns.build().context("set up network namespaces")?;
        Ok(netns)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let hub = format!("{}h", self.prefix);
        let root_veth = self.root_veth();
        self.add_namespace(&hub)?;
        run("ip", &["-n", &hub, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        let host_cidr = format!("{}/24", self.host_ip());
        run(
            "ip",
            &[
                "link", "add", &root_veth, "type", "veth", "peer", "name", "host", "netns", &hub,
            ],
        )?;
        run(
            "ip",
            &["-n", &hub, "link", "set", "host", "master", "br0", "up"],
        )?;
        run("ip", &["addr", "add", &host_cidr, "dev", &root_veth])?;
        run("ip", &["link", "set", &root_veth, "up"])?;
        for i in 0..self.nodes.len() {
            let ns = self.nodes[i].clone();
            let port = format!("n{}", i + 1);
            let cidr = format!("{}/24", self.node_ip(i));
            self.add_namespace(&ns)?;
            run(
                "ip",
                &[
                    "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            )?;
            run(
                "ip",
                &["-n", &hub, "link", "set", &port, "master", "br0", "up"],
            )?;
            run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn add_namespace(&mut self, name: &str) -> anyhow::Result<()> {
        // A leftover from a run that was SIGKILLed with this prefix would make `add` fail.
        let _ = run("ip", &["netns", "del", name]);
        run("ip", &["netns", "add", name])?;
        self.created.push(name.to_string());
        Ok(())
    }

    fn root_veth(&self) -> String {
        format!("{}r", self.prefix)
    }

    /// Node `i`'s namespace.
    pub fn namespace(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// Node `i`'s address.
    pub fn node_ip(&self, i: usize) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.{}", i + 1)
    }

    /// The root namespace's address on the nodes' network (where nodes reach the runner).
    pub fn host_ip(&self) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.254")
    }

    /// Drops all traffic between node `i` and each node in `peers`, both ways, inside node
    /// `i`'s namespace; the root namespace (clients, Envoy) still reaches it.
    pub fn cut(&self, i: usize, peers: &[usize]) -> anyhow::Result<()> {
        for &p in peers {
            let ip = self.node_ip(p);
            self.iptables(i, &["-I", "INPUT", "-s", &ip, "-j", "DROP"])?;
            self.iptables(i, &["-I", "OUTPUT", "-d", &ip, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Removes every rule [`cut`](Self::cut) added in node `i`'s namespace.
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        self.iptables(i, &["-F", "INPUT"])?;
        self.iptables(i, &["-F", "OUTPUT"])
    }

    fn iptables(&self, i: usize, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["netns", "exec", &self.nodes[i], "iptables", "-w"];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a veth end deletes its peer; namespaces are destroyed asynchronously, so
        // the root-side end goes first rather than waiting for the hub to take it along.
        let _ = run("ip", &["link", "del", &self.root_veth()]);
        for name in self.created.iter().rev() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}
