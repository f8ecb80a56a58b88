//! `bowline cluster status|add|promote|remove`.

use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{print_documents, print_table, OutputFormat};
use super::{status_line, Ctx};
use crate::proto::v1 as pb;

/// Cluster subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, members with their role and progress.
    Status,
    /// Add a node as a learner (start it first with `--initial-cluster-state existing`);
    /// waits until it has caught up.
    Add(AddArgs),
    /// Make a learner a voter.
    Promote(IdArg),
    /// Remove a member (voter or learner).
    Remove(IdArg),
}

/// Flags of `bowline cluster add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Node id of the new member.
    pub id: u64,
    /// Its peer address (host:port).
    #[arg(long)]
    pub peer_addr: String,
    /// Its client address (host:port), shown in status.
    #[arg(long, default_value = "")]
    pub client_addr: String,
}

/// A node id argument.
#[derive(Debug, Args)]
pub struct IdArg {
    /// Node id.
    pub id: u64,
}

fn member_json(m: &pb::Member) -> serde_json::Value {
    json!({
        "id": m.id, "role": m.role, "voter": m.voter, "peerAddr": m.peer_addr,
        "clientAddr": m.client_addr, "adminAddr": m.admin_addr,
        "matchedIndex": m.matched_index, "reachable": m.reachable,
    })
}

fn print_members(members: &[pb::Member]) {
    let rows = members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.role.clone(),
                m.peer_addr.clone(),
                if m.client_addr.is_empty() {
                    "-".into()
                } else {
                    m.client_addr.clone()
                },
                if m.matched_index > 0 {
                    m.matched_index.to_string()
                } else {
                    "-".into()
                },
                if m.reachable {
                    "yes".into()
                } else {
                    "NO".into()
                },
            ]
        })
        .collect::<Vec<_>>();
    print_table(
        &["ID", "ROLE", "PEER", "CLIENT", "MATCHED", "REACHABLE"],
        &rows,
    );
}

/// Runs `bowline cluster …`.
pub async fn run(ctx: &Ctx, cmd: &ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status => {
            let mut status = ctx
                .client
                .cluster(|mut c| async move { c.status(pb::StatusRequest {}).await })
                .await
                .map_err(|s| anyhow::anyhow!("cluster status: {}", status_line(&s)))?;
            // Ask the leader itself when we can: only it knows replication progress.
            if status.leader_id != 0 && status.node_id != status.leader_id {
                if let Some(addr) = status
                    .members
                    .iter()
                    .find(|m| m.id == status.leader_id && !m.client_addr.is_empty())
                    .map(|m| m.client_addr.clone())
                {
                    if let Ok(client) = crate::client::Client::new(&[addr], Default::default()) {
                        if let Ok(from_leader) = client
                            .cluster(|mut c| async move { c.status(pb::StatusRequest {}).await })
                            .await
                        {
                            status = from_leader;
                        }
                    }
                }
            }
            match ctx.output {
                OutputFormat::Table => {
                    println!(
                        "leader {}  term {}  last log {}  applied {}  snapshot {}  purged {}  (answered by node {})\n",
                        if status.leader_id == 0 { "none".to_string() } else { status.leader_id.to_string() },
                        status.term,
                        status.last_log_index,
                        status.applied_index,
                        status.snapshot_index,
                        status.purged_index,
                        status.node_id,
                    );
                    print_members(&status.members);
                }
                format => print_documents(
                    format,
                    &[json!({
                        "leaderId": status.leader_id, "term": status.term, "nodeId": status.node_id,
                        "role": status.role, "lastLogIndex": status.last_log_index,
                        "appliedIndex": status.applied_index, "snapshotIndex": status.snapshot_index,
                        "purgedIndex": status.purged_index,
                        "members": status.members.iter().map(member_json).collect::<Vec<_>>(),
                    })],
                    true,
                )?,
            }
        }
        ClusterCommand::Add(a) => {
            eprintln!(
                "adding node {} as a learner and waiting for it to catch up …",
                a.id
            );
            let request = pb::AddLearnerRequest {
                id: a.id,
                peer_addr: a.peer_addr.clone(),
                client_addr: a.client_addr.clone(),
                admin_addr: String::new(),
            };
            // The server waits up to a minute for the learner to catch up (a snapshot may
            // have to travel); a shorter client timeout would misreport that as a failure.
            let patient = crate::client::Client::new(
                ctx.client.endpoints(),
                crate::client::ClientOptions {
                    total_timeout: std::time::Duration::from_secs(90),
                    attempt_timeout: std::time::Duration::from_secs(75),
                    ..Default::default()
                },
            )
            .map_err(anyhow::Error::msg)?;
            let r = patient
                .cluster_write(|mut c| {
                    let request = request.clone();
                    async move { c.add_learner(request).await }
                })
                .await
                .map_err(|s| anyhow::anyhow!("cluster add: {}", status_line(&s)))?;
            report(ctx, &format!("node {} added as a learner", a.id), &r)?;
        }
        ClusterCommand::Promote(a) => {
            let id = a.id;
            let r = ctx
                .client
                .cluster_write(|mut c| async move { c.promote(pb::PromoteRequest { id }).await })
                .await
                .map_err(|s| anyhow::anyhow!("cluster promote: {}", status_line(&s)))?;
            report(ctx, &format!("node {id} promoted to voter"), &r)?;
        }
        ClusterCommand::Remove(a) => {
            let id = a.id;
            let r = ctx
                .client
                .cluster(
                    |mut c| async move { c.remove_member(pb::RemoveMemberRequest { id }).await },
                )
                .await
                .map_err(|s| anyhow::anyhow!("cluster remove: {}", status_line(&s)))?;
            report(ctx, &format!("node {id} removed"), &r)?;
        }
    }
    Ok(())
}

fn report(ctx: &Ctx, what: &str, r: &pb::MembershipResponse) -> anyhow::Result<()> {
    match ctx.output {
        OutputFormat::Table => {
            println!("{what} (log index {})\n", r.log_index);
            print_members(&r.members);
        }
        format => print_documents(
            format,
            &[
                json!({"result": what, "logIndex": r.log_index, "members": r.members.iter().map(member_json).collect::<Vec<_>>()}),
            ],
            true,
        )?,
    }
    Ok(())
}
