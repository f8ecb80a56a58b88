//! The `bowline` command line against a real cluster: apply/get/delete, output formats,
//! clear errors with non-zero exits, and `--help` everywhere.

mod common;

use common::*;

const MESH: &str = include_str!("../examples/mesh.yaml");

/// Runs a command that must fail with exit status 1; returns what it wrote to stderr.
fn cli_error(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> String {
    let (code, _, err) = cli(cluster, args, stdin);
    assert_eq!(code, 1, "{args:?}: {err}");
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_get_and_delete_round_trip_in_every_output_format() {
    let cluster = Cluster::start(3).await;

    let (code, out, err) = cli(&cluster, &["apply", "-f", "-"], Some(MESH));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("service/web configured"), "{out}");
    assert!(out.contains("healthcheck/web configured"), "{out}");

    // Table output for people.
    let (code, out, _) = cli(&cluster, &["get", "services"], None);
    assert_eq!(code, 0);
    assert!(
        out.lines().next().unwrap().starts_with("NAMESPACE"),
        "{out}"
    );
    assert!(out.contains("web") && out.contains("2/2"), "{out}");

    // JSON for scripts: the resource shape plus status.
    let (code, out, _) = cli(
        &cluster,
        &["get", "endpoints", "-s", "web", "-o", "json"],
        None,
    );
    assert_eq!(code, 0);
    let docs: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    let docs = docs.as_array().unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["kind"], "Endpoint");
    assert!(docs[0]["status"]["modRevision"].as_u64().unwrap() > 0);

    // YAML output can be applied again unchanged.
    let (code, yaml, _) = cli(
        &cluster,
        &["get", "destinationpolicy", "web", "-o", "yaml"],
        None,
    );
    assert_eq!(code, 0);
    assert!(yaml.contains("ring_hash"), "{yaml}");
    let (code, _, err) = cli(&cluster, &["apply", "-f", "-"], Some(&yaml));
    assert_eq!(code, 0, "re-applying get output failed: {err}");

    // Stale reads work from the command line too.
    let (code, out, _) = cli(
        &cluster,
        &[
            "get",
            "trafficpolicies",
            "--consistency",
            "stale",
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(code, 0);
    assert!(out.contains("\"subset\": \"v2\""), "{out}");

    // Delete with a stale revision fails; without a condition it succeeds.
    let err = cli_error(
        &cluster,
        &["delete", "healthcheck", "web", "--if-revision", "1"],
        None,
    );
    assert!(
        err.contains("FailedPrecondition") && err.contains("current revision"),
        "{err}"
    );
    let (code, out, _) = cli(&cluster, &["delete", "healthcheck", "web"], None);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = cli(&cluster, &["get", "healthchecks", "-o", "json"], None);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "[]");

    // Deleting a service removes its endpoints.
    let (code, out, _) = cli(&cluster, &["delete", "service", "web"], None);
    assert_eq!(code, 0);
    assert!(out.contains("2 endpoints removed"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_files_and_commands_fail_with_one_line_and_write_nothing() {
    let cluster = Cluster::start(1).await;

    // An unknown field anywhere in a file: the field is named and nothing is applied,
    // not even the valid documents before it.
    let file = format!("{MESH}\n---\napiVersion: bowline/v1\nkind: Service\nmetadata: {{name: extra}}\nspec: {{ports: [], colour: blue}}\n");
    let err = cli_error(&cluster, &["apply", "-f", "-"], Some(&file));
    assert!(err.contains("colour"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (_, out, _) = cli(&cluster, &["get", "services", "-o", "json"], None);
    assert_eq!(out.trim(), "[]", "a rejected file wrote something");

    // A validation error names the field and the rule.
    let bad = "apiVersion: bowline/v1\nkind: Endpoint\nmetadata: {name: e1, service: web}\nspec: {address: 127.0.0.1, port: 70000}\n";
    let err = cli_error(&cluster, &["apply", "-f", "-"], Some(bad));
    assert!(err.contains("spec.port") && err.contains("65535"), "{err}");

    // Unknown kinds, missing files, and invalid flags.
    let (code, _, err) = cli(&cluster, &["get", "widgets"], None);
    assert_ne!(code, 0);
    assert!(err.contains("unknown kind `widgets`"), "{err}");
    let err = cli_error(&cluster, &["apply", "-f", "/nonexistent/mesh.yaml"], None);
    assert!(err.contains("/nonexistent/mesh.yaml"), "{err}");
    let err = cli_error(&cluster, &["serve", "--id", "0"], None);
    assert!(err.contains("--id must be a positive integer"), "{err}");
    let err = cli_error(
        &cluster,
        &["serve", "--id", "1", "--client-threads", "0"],
        None,
    );
    assert!(
        err.contains("--client-threads must be between 1 and 1024"),
        "{err}"
    );
    let err = cli_error(
        &cluster,
        &[
            "endpoint",
            "register",
            "x",
            "-s",
            "web",
            "--address",
            "1.2.3.4",
            "--port",
            "80",
            "--weight",
            "0",
        ],
        None,
    );
    assert!(
        err.contains("endpoint.weight: must be between 1 and 128"),
        "{err}"
    );

    // Unreachable endpoints give a clear error, not a hang.
    let err = cli_error(
        &cluster,
        &[
            "--endpoints",
            "127.0.0.1:1",
            "--timeout",
            "2",
            "get",
            "services",
        ],
        None,
    );
    assert!(err.contains("Unavailable"), "{err}");
}

#[test]
fn every_command_has_help() {
    let commands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["dev"],
        &["apply"],
        &["get"],
        &["delete"],
        &["endpoint"],
        &["endpoint", "register"],
        &["endpoint", "deregister"],
        &["cluster"],
        &["cluster", "status"],
        &["cluster", "add"],
        &["cluster", "promote"],
        &["cluster", "remove"],
    ];
    for command in commands {
        let out = std::process::Command::new(bowline_bin())
            .args(*command)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{command:?} --help failed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:"), "{command:?} --help: {text}");
    }
}
