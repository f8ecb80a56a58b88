//! Replication across real processes: follower writes, linearizable reads everywhere,
//! leader failure and catch-up.

mod common;

use bowline::client::Client;
use bowline::proto::v1::Consistency;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn write_through_a_follower_is_readable_linearizably_from_every_node() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.nodes.iter().position(|n| n.id != leader).unwrap();

    // Write through the follower only: it must forward to the leader.
    let revision = register_service(&cluster.client_for(follower), "via-follower")
        .await
        .expect("write through follower");
    assert!(revision > 0);

    // Every node answers a linearizable read with the write, at once (no polling).
    for i in 0..cluster.nodes.len() {
        let found = get_service(
            &cluster.client_for(i),
            "via-follower",
            Consistency::Linearizable,
        )
        .await
        .expect("linearizable read")
        .unwrap_or_else(|| panic!("node {} missed an acknowledged write", cluster.nodes[i].id));
        assert_eq!(found.mod_revision, revision);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_read_reports_the_revision_it_answered_at() {
    let mut cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let revision = register_service(&cluster.client(), "stale").await.unwrap();
    for i in 0..cluster.nodes.len() {
        let client = cluster.client_for(i);
        // A stale read may lag, but its header never claims a revision it has not applied.
        let header = Cluster::eventually("stale read catches up", || {
            let client = client.clone();
            async move {
                let r = client
                    .registry(|mut c| async move {
                        c.get_service(bowline::proto::v1::GetServiceRequest {
                            namespace: String::new(),
                            name: "stale".into(),
                            consistency: Consistency::Stale as i32,
                        })
                        .await
                    })
                    .await
                    .ok()?;
                Some(r.header.unwrap())
            }
        })
        .await;
        assert!(header.revision >= revision);
        assert_eq!(header.node_id, cluster.nodes[i].id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_elects_another_and_the_restarted_node_catches_up() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    register_service(&client, "before-failover").await.unwrap();

    // Phase 1: SIGKILL the leader.
    let old_leader = cluster.wait_for_leader().await;
    let old_index = cluster.index_of(old_leader);
    cluster.kill(old_index);

    // Phase 2: the survivors elect a new leader and accept writes.
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, old_leader);
    let mut revisions = Vec::new();
    for i in 0..20 {
        revisions.push(
            register_service(&client, &format!("after-failover-{i}"))
                .await
                .expect("write after failover"),
        );
    }

    // Phase 3: the old leader restarts from its data directory and catches up.
    cluster.spawn(old_index);
    let restarted = cluster.client_for(old_index);
    let last = *revisions.last().unwrap();
    Cluster::eventually(
        "restarted node applies the writes made while it was down",
        || {
            let restarted = restarted.clone();
            async move {
                let s = get_service(&restarted, "after-failover-19", Consistency::Stale)
                    .await
                    .ok()??;
                (s.mod_revision == last).then_some(())
            }
        },
    )
    .await;
    let names = service_names(&restarted).await;
    assert!(names.contains(&"before-failover".to_string()));
    assert_eq!(names.len(), 21, "{names:?}");
}

/// Linearizable reads on the leader counted as answered under its read lease.
fn lease_reads(cluster: &Cluster, i: usize) -> f64 {
    let (_, metrics) = http_get(&cluster.nodes[i].admin_addr, "/metrics").expect("metrics page");
    metric_sample(&metrics, "bowline_read_lease_reads_total").expect("lease read counter")
}

/// Reads `name` linearizably 20 times in a row; each read must see the write at `revision`.
async fn read_back_linearizably(client: &Client, name: &str, revision: u64) {
    for _ in 0..20 {
        let found = get_service(client, name, Consistency::Linearizable)
            .await
            .expect("linearizable read")
            .expect("the acknowledged write");
        assert_eq!(found.mod_revision, revision);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_reads_on_its_lease_and_stops_once_its_followers_are_gone() {
    let mut cluster = Cluster::start(3).await;
    let leader_id = cluster.wait_for_leader().await;
    let leader = cluster.index_of(leader_id);
    let client = cluster.client_for(leader);
    let revision = register_service(&client, "leased").await.unwrap();
    // The first read takes the lease with a confirmation round; reads right after it are
    // answered under the lease, and still see every acknowledged write.
    read_back_linearizably(&client, "leased", revision).await;
    assert!(
        lease_reads(&cluster, leader) > 0.0,
        "no read was answered under the lease"
    );

    // Without its followers the leader can no longer renew the lease: once it runs out,
    // linearizable reads fail instead of answering from a state that may be stale.
    for i in 0..cluster.nodes.len() {
        if i != leader {
            cluster.kill(i);
        }
    }
    let error = Cluster::eventually("a linearizable read fails without a quorum", || {
        let client = client.clone();
        async move {
            get_service(&client, "leased", Consistency::Linearizable)
                .await
                .err()
        }
    })
    .await;
    // The server answers UNAVAILABLE once its request timeout passes; the test client may
    // give up first.
    assert!(
        matches!(
            error.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        "{error:?}"
    );
    // Stale reads still answer from the node's own state.
    assert!(get_service(&client, "leased", Consistency::Stale)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_lease_off_every_linearizable_read_is_confirmed() {
    let mut cluster = Cluster::start_with(
        3,
        Tuning {
            extra_args: vec!["--read-lease=false".into()],
            ..Tuning::default()
        },
    )
    .await;
    let leader_id = cluster.wait_for_leader().await;
    let leader = cluster.index_of(leader_id);
    let client = cluster.client_for(leader);
    let revision = register_service(&client, "confirmed").await.unwrap();
    read_back_linearizably(&client, "confirmed", revision).await;
    assert_eq!(lease_reads(&cluster, leader), 0.0);
}
