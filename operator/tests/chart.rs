//! The Helm chart's checks (charts/test_chart.py: strict lint, renders with several sets of
//! values, strict schema validation of every object, RBAC equal to manifests/operator.yaml,
//! wrong values refused, the CRD's bounds, the values' enums and bounds equal to the CRD's),
//! run as part of `cargo test`. Needs python3 with
//! helm-python-sdk and kubernetes-validate (`.ci/run` installs them).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_helm_chart_lints_renders_and_validates() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/test_chart.py");
    let output = Command::new("python3")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed (install its modules with `pip install helm-python-sdk \
         kubernetes-validate` if they are missing):\n{stdout}{stderr}",
        script.display()
    );
    // Every check ran, not just the first.
    for check in [
        "check_lint",
        "check_defaults",
        "check_rbac_matches_the_manifests",
        "check_operator_only",
        "check_cluster_only",
        "check_cluster_scoped_names_carry_the_namespace",
        "check_variations",
        "check_wrong_values_are_refused",
        "check_the_crd_bounds_the_mqtt5_limits",
        "check_tls_is_off_by_default",
        "check_listeners_and_tls_become_the_cluster_spec",
        "check_cert_manager_certificate",
        "check_the_crd_bounds_the_listeners_and_tls",
        "check_auth_limits_and_coap_are_off_by_default",
        "check_auth_becomes_the_cluster_spec",
        "check_limits_and_coap_become_the_cluster_spec",
        "check_wrong_auth_and_limit_values_are_refused",
        "check_auth_and_limits_values_mirror_the_crd",
        "check_the_crd_bounds_auth_limits_and_coap",
        "check_forwarding_sizes_become_the_cluster_spec",
        "check_wrong_forwarding_values_are_refused",
        "check_forwarding_values_mirror_the_crd",
        "check_drain_and_min_ready_seconds_become_the_cluster_spec",
        "check_wrong_drain_values_are_refused",
        "check_drain_values_mirror_the_crd",
        "check_persistence_becomes_the_cluster_spec",
        "check_wrong_persistence_values_are_refused",
        "check_persistence_values_mirror_the_crd",
    ] {
        assert!(
            stdout.contains(&format!("ok {check}")),
            "{check} did not run:\n{stdout}"
        );
    }
}
