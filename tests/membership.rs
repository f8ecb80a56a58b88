//! Membership changes: a node joins as a learner after the log was purged (so it must catch
//! up by snapshot), is promoted, serves reads; then a node is removed.

mod common;

use bowline::proto::v1 as pb;
use bowline::proto::v1::Consistency;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_learner_catches_up_by_snapshot_is_promoted_and_a_member_is_removed() {
    let mut cluster = Cluster::start_with(
        3,
        Tuning {
            snapshot_every: 50,
            logs_to_keep: 0,
            ..Tuning::default()
        },
    )
    .await;
    let client = cluster.client();

    // Phase 1: enough writes that the leader snapshots and purges its log.
    for i in 0..150 {
        register_service(&client, &format!("svc-{i}"))
            .await
            .unwrap();
    }
    let leader = cluster.wait_for_leader().await;
    let leader_index = cluster.index_of(leader);
    Cluster::eventually("leader purged its log", || {
        let status = cluster.status(leader_index);
        async move { status.await.filter(|s| s.purged_index > 0).map(|_| ()) }
    })
    .await;

    // Phase 2: start node 4 empty and add it as a learner.
    let joiner = cluster.add_joining_node(4);
    let request = pb::AddLearnerRequest {
        id: 4,
        peer_addr: cluster.nodes[joiner].peer_addr.clone(),
        client_addr: cluster.nodes[joiner].client_addr.clone(),
        admin_addr: cluster.nodes[joiner].admin_addr.clone(),
    };
    client
        .cluster_write(|mut c| {
            let request = request.clone();
            async move { c.add_learner(request).await }
        })
        .await
        .expect("add learner");

    // It could only have caught up through InstallSnapshot: the entries it needed are gone.
    let status = cluster
        .status(joiner)
        .await
        .expect("status from the learner");
    assert!(
        status.snapshot_index > 0,
        "learner has no snapshot: {status:?}"
    );
    assert_eq!(status.role, "learner");

    // Phase 3: promote it; it becomes a voter and serves linearizable reads.
    let promoted = client
        .cluster_write(|mut c| async move { c.promote(pb::PromoteRequest { id: 4 }).await })
        .await
        .expect("promote");
    let status = cluster.status(leader_index).await.unwrap();
    // The header carries the store revision (150 registrations, nothing since), and the
    // change's own log entry is named separately.
    let store_revision = status.header.as_ref().unwrap().revision;
    assert_eq!(
        promoted.header.as_ref().unwrap().revision,
        store_revision,
        "{promoted:?}"
    );
    assert!(promoted.log_index > store_revision, "{promoted:?}");
    let voters: Vec<u64> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    assert_eq!(voters, vec![1, 2, 3, 4]);
    let names = service_names(&cluster.client_for(joiner)).await;
    assert_eq!(names.len(), 150);
    let found = get_service(
        &cluster.client_for(joiner),
        "svc-149",
        Consistency::Linearizable,
    )
    .await
    .unwrap();
    assert!(found.is_some());

    // Phase 4: remove a follower (not the new node), stop it; the cluster keeps working.
    let leader = cluster.wait_for_leader().await;
    let removed = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader && n.id != 4)
        .map(|n| n.id)
        .unwrap();
    client
        .cluster_write(|mut c| async move {
            c.remove_member(pb::RemoveMemberRequest { id: removed })
                .await
        })
        .await
        .expect("remove member");
    let removed_index = cluster.index_of(removed);
    cluster.kill(removed_index);
    let status = cluster.status(cluster.index_of(leader)).await.unwrap();
    let members: Vec<u64> = status.members.iter().map(|m| m.id).collect();
    assert!(!members.contains(&removed), "{members:?}");
    assert_eq!(members.len(), 3);

    let revision = register_service(&client, "after-removal")
        .await
        .expect("write after removal");
    for i in 0..cluster.nodes.len() {
        if i == removed_index {
            continue;
        }
        let s = get_service(
            &cluster.client_for(i),
            "after-removal",
            Consistency::Linearizable,
        )
        .await
        .unwrap()
        .expect("present on every remaining member");
        assert_eq!(s.mod_revision, revision);
    }

    // Removing a node that is not a member is refused with a clear reason.
    let err = client
        .cluster_write(
            |mut c| async move { c.remove_member(pb::RemoveMemberRequest { id: 42 }).await },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("not a member"), "{}", err.message());
}
