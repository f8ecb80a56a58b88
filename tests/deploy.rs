//! The deployment files agree with the binary: every manifest parses, and every flag they
//! pass to `bowline` is one `bowline serve` (or the global options) accepts. There is no
//! Kubernetes cluster here, so this checks shape and flags, not scheduling.

mod common;

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn help(args: &[&str]) -> String {
    let out = Command::new(common::bowline_bin())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every `--flag` in `args` must appear in the help of the command it belongs to.
fn assert_flags_known(args: &[String], source: &str) {
    let global = help(&[]);
    let mut command_help = global.clone();
    for arg in args {
        if !arg.starts_with("--") {
            if ["serve", "apply", "echo", "ready"].contains(&arg.as_str()) {
                command_help = help(&[arg]);
            }
            continue;
        }
        let flag = arg.split('=').next().unwrap();
        assert!(
            command_help.contains(flag) || global.contains(flag),
            "{source}: bowline does not accept {flag}"
        );
    }
}

fn yaml_docs(path: &Path) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

#[test]
fn kubernetes_manifests_parse_and_use_real_flags() {
    let dir = root().join("deploy/kubernetes");
    let kustomization = &yaml_docs(&dir.join("kustomization.yaml"))[0];
    let mut kinds = Vec::new();
    for file in kustomization["resources"].as_sequence().unwrap() {
        for doc in yaml_docs(&dir.join(file.as_str().unwrap())) {
            kinds.push(doc["kind"].as_str().unwrap().to_string());
            if doc["kind"] == "StatefulSet" {
                assert_eq!(doc["spec"]["replicas"].as_u64(), Some(3));
                assert!(doc["spec"]["volumeClaimTemplates"]
                    .as_sequence()
                    .is_some_and(|v| !v.is_empty()));
                let container = &doc["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
                let args: Vec<String> = container["args"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect();
                assert_flags_known(&args, "statefulset.yaml");
            }
            if doc["kind"] == "PodDisruptionBudget" {
                assert_eq!(doc["spec"]["minAvailable"].as_u64(), Some(2));
            }
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        ["PodDisruptionBudget", "Service", "Service", "StatefulSet"]
    );
}

#[test]
fn compose_file_parses_and_uses_real_flags() {
    let compose = &yaml_docs(&root().join("deploy/docker/compose.yaml"))[0];
    let services = compose["services"].as_mapping().unwrap();
    for name in ["bowline-1", "bowline-2", "bowline-3"] {
        let service = &compose["services"][name];
        assert!(
            service["healthcheck"]["test"].as_sequence().is_some(),
            "{name} has no healthcheck"
        );
        let args: Vec<String> = service["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_flags_known(&args, name);
    }
    assert!(services.len() >= 6);
    for file in [
        "deploy/docker/demo-mesh.yaml",
        "deploy/docker/demo-endpoints.yaml",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        bowline::model::parse_documents(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

#[test]
fn systemd_unit_uses_real_flags() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/bowline.service")).unwrap();
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    let args: Vec<String> = exec.split_whitespace().skip(1).map(String::from).collect();
    assert_flags_known(&args, "bowline.service");
    assert!(unit.contains("NoNewPrivileges=yes") && unit.contains("ProtectSystem=strict"));
}
