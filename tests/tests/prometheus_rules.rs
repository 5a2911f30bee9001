//! The pipeline's Prometheus alerting rules: valid (`promtool check rules`), each one fires on
//! the input that should fire it and stays quiet on healthy input (`promtool test rules`), and
//! the local Prometheus started by `scripts/stack.sh` loads them.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;
use std::time::Duration;

use banter_testkit::*;
use serde_json::Value;

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): scripts/install-deps.sh installs Debian's prometheus package")
        });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn rules_are_valid_and_their_tests_pass() {
    let out = promtool(&["check", "rules", "docker/prometheus/rules/banter.yml"]);
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    let out = promtool(&["test", "rules", "docker/prometheus/tests/banter.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[tokio::test]
async fn the_local_prometheus_loads_the_rules() {
    let port = std::env::var("BANTER_PROMETHEUS_PORT").unwrap_or_else(|_| "9090".into());
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // Rules added since Prometheus started are picked up by a reload (--web.enable-lifecycle).
    http.post(format!("{base}/-/reload"))
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!("Prometheus is not up at {base} ({e}): scripts/stack.sh up prometheus")
        });
    let names = wait_for(
        "the banter rules in Prometheus",
        Duration::from_secs(30),
        || {
            let http = http.clone();
            let url = format!("{base}/api/v1/rules");
            async move {
                let r: Value = http.get(url).send().await.ok()?.json().await.ok()?;
                let names: Vec<String> = r["data"]["groups"]
                    .as_array()?
                    .iter()
                    .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                    .filter_map(|r| r["name"].as_str().map(str::to_owned))
                    .collect();
                (names.len() >= 10).then_some(names)
            }
        },
    )
    .await;
    for rule in [
        "BanterRoleDown",
        "BanterNotScraped",
        "BanterSinkLagGrowing",
        "BanterStreamConsumerLagGrowing",
        "BanterWatermarkBehind",
        "BanterDeadLetterRate",
        "BanterSinkInsertFailures",
        "BanterSinkRejectedRows",
        "BanterIngest5xxRate",
        "BanterAlertDeliveryFailing",
    ] {
        assert!(
            names.iter().any(|n| n == rule),
            "{rule} not loaded: {names:?}"
        );
    }
}
