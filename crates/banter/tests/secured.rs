//! banter against secured endpoints, as production runs them (the local stack has them:
//! `scripts/stack.sh` makes a CA and certificates, and starts the broker with an SSL listener
//! that requires client certificates and a SASL_SSL listener with SCRAM users, ClickHouse with
//! its HTTPS port and a password user, and a second Alertmanager on HTTPS with basic auth).
//!
//! * the whole pipeline through SASL_SSL (SCRAM-SHA-512) and HTTPS ClickHouse, alerts to an
//!   HTTPS Alertmanager with basic auth and a plain one, equal to the generator's truth;
//! * the roles as separate processes through the SSL listener with a client certificate;
//! * a wrong password, a CA that did not sign the server's certificate or no client
//!   certificate fail at once with a message naming the setting, for Kafka, ClickHouse and
//!   Alertmanager, in `config check --connect` and when a role starts.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Stdio;
use std::time::{Duration, Instant};

use banter_testkit::*;

fn am_tls_url() -> String {
    format!(
        "https://localhost:{}",
        std::env::var("BANTER_ALERTMANAGER_TLS_PORT").unwrap_or_else(|_| "9097".into())
    )
}

fn am_plain_url() -> String {
    format!(
        "http://127.0.0.1:{}",
        std::env::var("BANTER_ALERTMANAGER_PORT").unwrap_or_else(|_| "9093".into())
    )
}

/// `alertmanager_alerts_received_total` of the HTTPS Alertmanager (basic auth), all labels.
async fn alerts_received_tls() -> f64 {
    let pem = std::fs::read(tls_file("ca.pem")).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let text = http
        .get(format!("{}/metrics", am_tls_url()))
        .basic_auth("banter", Some("banter-am-secret"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("the HTTPS Alertmanager is not up: {e} (scripts/stack.sh up)"))
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("alertmanager_alerts_received_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_through_sasl_ssl_and_https_with_alerts_to_a_secured_alertmanager() {
    let mut cfg = fresh_pipeline_config("sasl").await;
    secured_sasl(&mut cfg);
    require_kafka(&cfg).await;
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    cfg.ingest.listen = format!("127.0.0.1:{port}");
    let dir = test_dir("banter-sasl");
    write_campaigns(&cfg, &dir);
    let received_before = alerts_received_tls().await;
    let run = {
        let log = std::fs::File::create(dir.join("run.log")).unwrap();
        let child = banter_cmd(&cfg)
            .arg("run")
            .env("BANTER_CTA__CAMPAIGNS_FILE", dir.join("campaigns.toml"))
            .env("BANTER_CTA__RELOAD_INTERVAL_MS", "500")
            .env("BANTER_INGEST__LISTEN", &cfg.ingest.listen)
            .env(
                "BANTER_ALERTING__ALERTMANAGER_URLS",
                format!("[\"{}\", \"{}\"]", am_tls_url(), am_plain_url()),
            )
            .env("BANTER_ALERTING__USERNAME", "banter")
            .env("BANTER_ALERTING__PASSWORD", "banter-am-secret")
            .env("BANTER_ALERTING__CA_FILE", tls_file("ca.pem"))
            .stderr(log)
            .spawn()
            .unwrap();
        Proc::from_child(child)
    };
    wait_for(
        "banter run's ingest to listen",
        Duration::from_secs(120),
        || {
            std::future::ready(
                std::net::TcpStream::connect(&cfg.ingest.listen)
                    .is_ok()
                    .then_some(()),
            )
        },
    )
    .await;
    finish(
        generate_to(&cfg, &dir, 0, "http"),
        "banter generate --to http",
    );
    // Every metric, spike alerts included, read back over HTTPS as user `banter`.
    let observed = clickhouse_match(&db.ch, &dir, Duration::from_secs(120)).await;
    assert!(!observed.alerts.is_empty(), "the workload has spikes");
    // The HTTPS Alertmanager (basic auth) got them.
    wait_for(
        "the HTTPS Alertmanager to receive the spike alerts",
        Duration::from_secs(30),
        || async move { (alerts_received_tls().await > received_before).then_some(()) },
    )
    .await;
    stop(run);
    let log = std::fs::read_to_string(dir.join("run.log")).unwrap();
    assert!(log.contains("alert delivery started"), "{log}");
    assert!(
        !log.contains("did not take the alerts"),
        "an Alertmanager refused alerts:\n{log}"
    );
    db.drop_now(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roles_run_through_the_ssl_listener_with_a_client_certificate() {
    let mut cfg = fresh_pipeline_config("mtls").await;
    secured_mtls(&mut cfg);
    require_kafka(&cfg).await;
    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let dir = test_dir("banter-mtls");
    migrate(&cfg);
    // Published through the SSL listener by the generator, read and written by the roles.
    finish(generate(&cfg, &dir, 0), "banter generate");
    let stream = start_role(&cfg, "stream", "stream", &dir);
    let sink = start_role(&cfg, "sink", "sink", &dir);
    clickhouse_match(&db.ch, &dir, Duration::from_secs(120)).await;
    stop(sink);
    stop(stream);
    db.drop_now(&cfg).await;
}

/// `banter config check --connect --role ROLE` with `cfg` and extra variables: its exit
/// status and its output.
fn connect_check(cfg: &banter::Config, role: &str, vars: &[(&str, String)]) -> (bool, String) {
    let mut c = banter_cmd(cfg);
    c.args(["config", "check", "--connect", "--role", role]);
    for (k, v) in vars {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Amazon MSK's IAM authentication, through the local stack's listener that validates tokens
/// as MSK does (the SigV4 signature recomputed with the access key's secret): the generator,
/// the stream and the sink sign their own tokens from the AWS credentials in their
/// environment and the whole pipeline runs; a wrong secret or no credentials are refused at
/// once, naming what to look at; topics cannot be created over it: `banter topics` checks
/// they exist and names the missing ones; alert delivery starts over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msk_iam_tokens_carry_the_pipeline_and_a_wrong_secret_is_refused() {
    let mut cfg = fresh_pipeline_config("mskiam").await;
    secured_msk_iam(&mut cfg);
    let (ok, out) = connect_check(&cfg, "stream", &[]);
    assert!(ok, "the stack's AWS credentials connect:\n{out}");
    for (what, vars) in [
        (
            "a wrong secret access key",
            vec![("AWS_SECRET_ACCESS_KEY", "not-the-secret".to_owned())],
        ),
        (
            "an unknown access key",
            vec![("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN000000000".to_owned())],
        ),
        (
            "no credentials at all",
            vec![
                ("AWS_ACCESS_KEY_ID", String::new()),
                ("AWS_SECRET_ACCESS_KEY", String::new()),
                (
                    "AWS_SHARED_CREDENTIALS_FILE",
                    "/nonexistent/credentials".to_owned(),
                ),
            ],
        ),
    ] {
        let t0 = Instant::now();
        let (ok, out) = connect_check(&cfg, "stream", &vars);
        assert!(!ok, "{what}: config check --connect passed:\n{out}");
        assert!(
            out.contains("FAILED") && out.contains("AWS_SECRET_ACCESS_KEY"),
            "{what}: the AWS credentials are not named in:\n{out}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(12),
            "{what}: took {:?}",
            t0.elapsed()
        );
    }
    let out = banter_cmd(&cfg).arg("topics").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("exists"),
        "banter topics over IAM with every topic there: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = unique("mskiam.missing");
    let out = banter_cmd(&cfg)
        .arg("topics")
        .env("BANTER_KAFKA__TOPICS__ALERTS", &missing)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("AWS_MSK_IAM") && text.contains(&missing),
        "banter topics over IAM with a topic missing: {text}"
    );

    let db = fresh_database(&cfg).await;
    cfg.clickhouse.database = db.name.clone();
    let dir = test_dir("banter-msk-iam");
    migrate(&cfg);
    finish(generate(&cfg, &dir, 0), "banter generate");
    let stream = start_role(&cfg, "stream", "stream", &dir);
    let sink = start_role(&cfg, "sink", "sink", &dir);
    let alert = start_role_with(
        &cfg,
        "alert",
        "alert",
        &dir,
        &[("BANTER_ALERTING__ALERTMANAGER_URL", &am_plain_url())],
    );
    clickhouse_match(&db.ch, &dir, Duration::from_secs(120)).await;
    let log = dir.join("alert.log");
    wait_for(
        "alert delivery to start over IAM",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            std::future::ready(text.contains("alert delivery started").then_some(()))
        },
    )
    .await;
    stop(alert);
    stop(sink);
    stop(stream);
    db.drop_now(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_an_untrusted_certificate_fails_at_once_naming_the_setting() {
    let mut cfg = config();
    secured_sasl(&mut cfg);
    let (ok, out) = connect_check(&cfg, "sink", &[]);
    assert!(ok, "the right settings connect:\n{out}");
    assert!(
        out.contains("ok      kafka") && out.contains("ok      clickhouse"),
        "{out}"
    );

    let rogue = tls_file("rogue-ca.pem");
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "wrong Kafka password",
            vec![("BANTER_KAFKA__SASL__PASSWORD", "not-the-password".into())],
            "kafka.sasl.password",
        ),
        (
            "Kafka's certificate signed by another CA",
            vec![("BANTER_KAFKA__SSL__CA_FILE", rogue.clone())],
            "kafka.ssl.ca_file",
        ),
        (
            "wrong ClickHouse password",
            vec![("BANTER_CLICKHOUSE__PASSWORD", "not-the-password".into())],
            "clickhouse.password",
        ),
        (
            "ClickHouse's certificate signed by another CA",
            vec![("BANTER_CLICKHOUSE__CA_FILE", rogue.clone())],
            "clickhouse.ca_file",
        ),
    ];
    for (what, vars, key) in &cases {
        let t0 = Instant::now();
        let (ok, out) = connect_check(&cfg, "sink", vars);
        assert!(!ok, "{what}: config check --connect passed:\n{out}");
        assert!(
            out.contains("FAILED") && out.contains(key),
            "{what}: no `{key}` in:\n{out}"
        );
        // Refused, not waited for: well under the 15 s a silent broker gets.
        assert!(
            t0.elapsed() < Duration::from_secs(12),
            "{what}: took {:?}",
            t0.elapsed()
        );
    }

    // The SSL listener wants a client certificate.
    let mut mtls = config();
    secured_mtls(&mut mtls);
    let (ok, out) = connect_check(&mtls, "stream", &[]);
    assert!(ok, "with the client certificate:\n{out}");
    let (ok, out) = connect_check(
        &mtls,
        "stream",
        &[
            ("BANTER_KAFKA__SSL__CERT_FILE", String::new()),
            ("BANTER_KAFKA__SSL__KEY_FILE", String::new()),
        ],
    );
    assert!(
        !ok && out.contains("kafka.ssl.cert_file"),
        "without:\n{out}"
    );

    // Alertmanager: basic auth and its CA.
    let am = |extra: &[(&str, String)]| {
        let mut vars = vec![
            ("BANTER_ALERTING__ALERTMANAGER_URL", am_tls_url()),
            ("BANTER_ALERTING__USERNAME", "banter".to_owned()),
            ("BANTER_ALERTING__PASSWORD", "banter-am-secret".to_owned()),
            ("BANTER_ALERTING__CA_FILE", tls_file("ca.pem")),
        ];
        vars.extend(extra.iter().cloned());
        connect_check(&cfg, "alert", &vars)
    };
    let (ok, out) = am(&[]);
    assert!(ok && out.contains("ok      alertmanager"), "{out}");
    let (ok, out) = am(&[("BANTER_ALERTING__PASSWORD", "nope".into())]);
    assert!(!ok && out.contains("alerting.password"), "{out}");
    let (ok, out) = am(&[("BANTER_ALERTING__CA_FILE", rogue.clone())]);
    assert!(!ok && out.contains("alerting.ca_file"), "{out}");

    // A role refused by the broker stops at once with the setting named, instead of waiting
    // out kafka.connect_timeout_secs.
    let t0 = Instant::now();
    let out = banter_cmd(&cfg)
        .arg("stream")
        .env("BANTER_KAFKA__SASL__PASSWORD", "not-the-password")
        .env("BANTER_KAFKA__CONNECT_TIMEOUT_SECS", "60")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("refused the connection") && err.contains("kafka.sasl.password"),
        "{err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
}

/// An OIDC token endpoint (client-credentials grant) for client `banter-client` with secret
/// `oauth-secret`: it hands out unsigned JWTs, which the local broker's OAUTHBEARER listener
/// (Kafka's unsecured validator) accepts. Returns its URL and how many tokens it gave.
async fn token_endpoint() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
    let issued = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = issued.clone();
    // `Basic base64(banter-client:oauth-secret)`, as RFC 6749 sends client credentials.
    let expected_auth = {
        let raw = b"banter-client:oauth-secret";
        let url_safe = banter_runtime::aws::base64url(raw);
        let mut std = url_safe.replace('-', "+").replace('_', "/");
        while !std.len().is_multiple_of(4) {
            std.push('=');
        }
        format!("basic {std}").to_ascii_lowercase()
    };
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            let expected_auth = expected_auth.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut n = 0;
                // Headers and the short form body arrive together or nearly so.
                while n < buf.len() {
                    match tokio::time::timeout(Duration::from_millis(300), sock.read(&mut buf[n..]))
                        .await
                    {
                        Ok(Ok(0)) | Err(_) => break,
                        Ok(Ok(k)) => n += k,
                        Ok(Err(_)) => return,
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                    if text.contains("grant_type=client_credentials") {
                        break;
                    }
                }
                let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let authorized = req.contains(&format!("authorization: {expected_auth}"));
                let (status, body) = if authorized {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let header = banter_runtime::aws::base64url(br#"{"alg":"none"}"#);
                    let claims = banter_runtime::aws::base64url(
                        format!(
                            r#"{{"sub":"banter-client","iat":{now},"exp":{}}}"#,
                            now + 3600
                        )
                        .as_bytes(),
                    );
                    (
                        "200 OK",
                        format!(
                            r#"{{"access_token":"{header}.{claims}.","token_type":"bearer","expires_in":3600}}"#
                        ),
                    )
                } else {
                    eprintln!(
                        "token request refused:\n{req}\nexpected authorization: {expected_auth}"
                    );
                    (
                        "401 Unauthorized",
                        r#"{"error":"invalid_client"}"#.to_owned(),
                    )
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (url, issued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_gets_its_token_from_the_token_endpoint() {
    use std::sync::atomic::Ordering;
    let mut cfg = config();
    secured_sasl(&mut cfg);
    let (url, issued) = token_endpoint().await;
    let oauth = |secret: &str| {
        vec![
            ("BANTER_KAFKA__SASL__MECHANISM", "OAUTHBEARER".to_owned()),
            ("BANTER_KAFKA__SASL__USERNAME", String::new()),
            ("BANTER_KAFKA__SASL__PASSWORD", String::new()),
            ("BANTER_KAFKA__SASL__OAUTH_TOKEN_ENDPOINT", url.clone()),
            (
                "BANTER_KAFKA__SASL__OAUTH_CLIENT_ID",
                "banter-client".to_owned(),
            ),
            ("BANTER_KAFKA__SASL__OAUTH_CLIENT_SECRET", secret.to_owned()),
        ]
    };
    // The command runs on a blocking thread: the token endpoint runs on this runtime.
    let c2 = cfg.clone();
    let vars = oauth("oauth-secret");
    let (ok, out) = tokio::task::spawn_blocking(move || {
        let vars: Vec<(&str, String)> = vars.iter().map(|(k, v)| (*k, v.clone())).collect();
        connect_check(&c2, "stream", &vars)
    })
    .await
    .unwrap();
    assert!(ok, "OAUTHBEARER with the right client secret:\n{out}");
    assert!(issued.load(Ordering::SeqCst) >= 1, "no token was fetched");

    let c2 = cfg.clone();
    let vars = oauth("wrong-secret");
    let (ok, out) = tokio::task::spawn_blocking(move || {
        let vars: Vec<(&str, String)> = vars.iter().map(|(k, v)| (*k, v.clone())).collect();
        connect_check(&c2, "stream", &vars)
    })
    .await
    .unwrap();
    assert!(
        !ok && out.contains("kafka.sasl.oauth_client_secret"),
        "a wrong client secret:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_codec_goes_through_the_broker() {
    use banter_runtime::config::KafkaCompression;
    use rdkafka::consumer::Consumer;
    use rdkafka::producer::FutureRecord;
    use rdkafka::Message;
    let mut cfg = config();
    let topic = fresh_topic(&cfg, "compression", 1).await;
    secured_sasl(&mut cfg);
    let codecs = [
        KafkaCompression::None,
        KafkaCompression::Gzip,
        KafkaCompression::Snappy,
        KafkaCompression::Lz4,
        KafkaCompression::Zstd,
    ];
    // Compressible records, so each batch is really compressed.
    let value = "banter ".repeat(200);
    for c in codecs {
        cfg.kafka.compression = c;
        let producer = banter_runtime::kafka::producer(&cfg.kafka, "test").unwrap();
        for i in 0..20 {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key(c.as_librdkafka())
                        .payload(&format!("{i} {value}")),
                    Duration::from_secs(30),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("{}: {e}", c.as_librdkafka()));
        }
    }
    let consumer = from_beginning(&cfg, &topic);
    let mut by_codec = std::collections::BTreeMap::<String, usize>::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while by_codec.values().sum::<usize>() < 100 && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            let m = m.unwrap();
            assert!(m.payload_view::<str>().unwrap().unwrap().ends_with(&value));
            *by_codec
                .entry(String::from_utf8_lossy(m.key().unwrap()).into_owned())
                .or_default() += 1;
        }
    }
    consumer.unsubscribe();
    assert_eq!(by_codec.len(), 5, "{by_codec:?}");
    assert!(by_codec.values().all(|n| *n == 20), "{by_codec:?}");
}
