//! The configuration shipped for Docker users parses, and docker/ stays in step with the
//! scripts CI runs (same Kafka version, same topics, same broker settings).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use banter::Config;
use banter_testkit::repo_root;

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap()
}

#[test]
fn docker_config_parses_and_matches_the_defaults() {
    // The file takes its password from $CLICKHOUSE_PASSWORD, which compose sets; here the
    // secret is pointed at a file instead, leaving every other key as shipped.
    let dir = std::env::temp_dir().join(format!("banter-docker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pw"), "banter\n").unwrap();
    let text = read("docker/banter.toml").replace(
        r#"{ env = "CLICKHOUSE_PASSWORD" }"#,
        &format!("{{ file = {:?} }}", dir.join("pw")),
    );
    assert_ne!(text, read("docker/banter.toml"));
    std::fs::write(dir.join("banter.toml"), text).unwrap();
    let cfg = Config::load(Some(&dir.join("banter.toml")), Vec::new()).unwrap();
    let defaults = Config::default();
    assert_eq!(cfg.kafka.topics.events, defaults.kafka.topics.events);
    assert_eq!(cfg.kafka.topics.rollups, defaults.kafka.topics.rollups);
    assert_eq!(cfg.kafka.topics.alerts, defaults.kafka.topics.alerts);
    assert_eq!(cfg.kafka.topics.dlq, defaults.kafka.topics.dlq);
    assert_eq!(
        cfg.kafka.topics.provisional_topic(),
        defaults.kafka.topics.provisional_topic()
    );
    assert_eq!(
        cfg.kafka.topics.partitions,
        defaults.kafka.topics.partitions
    );
    assert_eq!(cfg.clickhouse.password.expose(), "banter");
    assert_eq!(cfg.clickhouse.url, "http://clickhouse:8123");
}

#[test]
fn compose_publishes_only_ingest_beyond_this_host() {
    // Kafka, ClickHouse, Prometheus, Alertmanager and Grafana are for this host; only the
    // ingest API (webhooks, keyed first-party events) is for the outside.
    let compose = read("docker/compose.yml");
    let published: Vec<&str> = compose
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("- \"") && l.ends_with('"') && l.matches(':').count() >= 1)
        .filter(|l| l[3..].chars().next().is_some_and(|c| c.is_ascii_digit()))
        .collect();
    assert!(published.len() >= 6, "{published:?}");
    for p in published {
        assert!(
            p.starts_with("- \"127.0.0.1:") || p == "- \"8080:8080\"",
            "{p} is published on every interface"
        );
    }
}

#[test]
fn compose_and_stack_script_agree() {
    let compose = read("docker/compose.yml");
    let stack = read("scripts/stack.sh");
    let version = stack
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION=\"${BANTER_KAFKA_VERSION:-"))
        .and_then(|l| l.strip_suffix("}\""))
        .expect("KAFKA_VERSION default in scripts/stack.sh");
    assert!(
        compose.contains(&format!("image: apache/kafka:{version}")),
        "compose uses Kafka {version}"
    );
    for (script_key, compose_key) in [
        (
            "group.initial.rebalance.delay.ms=0",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS: 0",
        ),
        (
            "auto.create.topics.enable=false",
            "KAFKA_AUTO_CREATE_TOPICS_ENABLE: \"false\"",
        ),
        (
            "offsets.topic.num.partitions=6",
            "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS: 6",
        ),
        (
            "transaction.state.log.num.partitions=6",
            "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS: 6",
        ),
        ("log.retention.hours=168", "KAFKA_LOG_RETENTION_HOURS: 168"),
    ] {
        assert!(
            stack.contains(script_key),
            "scripts/stack.sh sets {script_key}"
        );
        assert!(
            compose.contains(compose_key),
            "docker/compose.yml sets {compose_key}"
        );
    }
    let am_docker = read("docker/alertmanager/alertmanager.yml");
    for line in [
        "group_by: [alertname, account]",
        "group_wait: 5s",
        "repeat_interval: 1h",
    ] {
        assert!(
            am_docker.contains(line) && stack.contains(line),
            "alertmanager {line}"
        );
    }
}

/// Every TOML example of the README's "Production: secured clusters" section loads and passes
/// `config check` (its `{ env = … }` secrets given, its `/etc/banter/` files standing for
/// the local stack's certificates).
#[test]
fn the_readmes_production_examples_are_valid_configurations() {
    let readme = read("README.md");
    let section = readme
        .split("### Production: secured clusters")
        .nth(1)
        .expect("the README has a production section");
    let section = section.split("\n## ").next().unwrap();
    let dir = std::env::temp_dir().join(format!("banter-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, from) in [
        ("ca.pem", "ca.pem"),
        ("service.cert", "client.pem"),
        ("service.key", "client.key"),
    ] {
        std::fs::copy(banter_testkit::tls_file(from), dir.join(name)).unwrap();
    }
    let blocks: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 5, "{} examples", blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        let text = block.replace("/etc/banter/", &format!("{}/", dir.display()));
        // The secrets it names, set.
        let vars: Vec<(String, String)> = text
            .split("{ env = \"")
            .skip(1)
            .map(|rest| {
                (
                    rest.split('"').next().unwrap().to_owned(),
                    "s3cret".to_owned(),
                )
            })
            .collect();
        for (k, v) in &vars {
            std::env::set_var(k, v);
        }
        let file = dir.join(format!("example-{i}.toml"));
        std::fs::write(&file, &text).unwrap();
        Config::load(Some(&file), Vec::new())
            .unwrap_or_else(|e| panic!("README example {i} is not valid: {e}\n{text}"));
    }
}
