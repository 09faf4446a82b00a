//! The Helm chart (helm/fjord) without a Kubernetes cluster: linted and schema-checked with
//! Helm's own SDK for several values files, every manifest validated against the Kubernetes
//! schemas, and the command lines and config the rendered StatefulSet gives each pod run as
//! three real `fjord` processes that must form a cluster and serve a produce and a consume
//! (compat-tests/clients/python/helm_chart.py says how).

use std::time::Duration;

use fjord_compat_tests::{broker_bin, client, clients_dir, python, repo_root, run_client};

#[test]
fn the_chart_renders_valid_manifests_and_boots_a_cluster() {
    let out = run_client(
        client(python())
            .arg(clients_dir().join("python").join("helm_chart.py"))
            .arg(repo_root().join("helm").join("fjord"))
            .arg(broker_bin()),
        Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("checks passed"), "{stdout}");
}
