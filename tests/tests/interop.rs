//! An independent implementation agrees with our codec: Python's fastavro reads what banter
//! writes (header, fingerprint and body) and banter reads what fastavro writes.
//!
//! Needs Python with fastavro: `scripts/install-deps.sh` makes `.stack/venv`; `BANTER_PYTHON`
//! points elsewhere.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::PathBuf;
use std::process::Command;

use banter_model::*;
use banter_testkit::{repo_root, unique};
use banter_workload::sample::sample_events;

fn python() -> PathBuf {
    let p = std::env::var_os("BANTER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".stack/venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import fastavro"])
        .output()
        .map(|o| o.status.success());
    assert!(
        matches!(ok, Ok(true)),
        "no Python with fastavro at {} (run `scripts/install-deps.sh`, or set BANTER_PYTHON)",
        p.display()
    );
    p
}

fn run(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo_root().join("tests/interop/fastavro_check.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fastavro_check.py {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Events covering every enum symbol, nulls and non-ASCII text, plus generated ones.
fn events() -> Vec<EngagementEvent> {
    let mut out = sample_events(99, 200, 10, 1_764_000_000_000);
    for (i, kind) in Kind::ALL.iter().enumerate() {
        let mut e = EngagementEvent::new(
            format!("edge-{i}"),
            Platform::ALL[i % Platform::ALL.len()],
            *kind,
            Action::ALL[i % Action::ALL.len()],
            "acct-édge",
            1_764_000_000_000 + i as i64,
        );
        e.content_type = Some(ContentType::ALL[i % ContentType::ALL.len()]);
        e.event_time_source = EventTimeSource::ALL[i % EventTimeSource::ALL.len()];
        e.text = Some("INFO 🔥 ¿dónde? 价格".into());
        e.is_brand_actor = i % 2 == 0;
        e.value = Some(19.99 * i as f64);
        e.currency = Some("EUR".into());
        e.ref_ = Some(format!("ref-{i}"));
        e.click_id = Some(format!("clk-{i}"));
        e.content_published_at = Some(1_763_999_000_000);
        out.push(e);
    }
    out
}

#[test]
fn fastavro_reads_what_banter_writes_and_banter_reads_what_fastavro_writes() {
    let codec = EngagementEvent::codec();
    let schema = repo_root().join("schemas/avro/engagement_event.v1.avsc");
    let dir = std::env::temp_dir().join(unique("banter-interop"));
    std::fs::create_dir_all(&dir).unwrap();
    let events = events();

    // banter -> fastavro
    let cases: String = events
        .iter()
        .map(|e| {
            let record = serde_json::to_value(e).unwrap();
            format!(
                "{}\n",
                serde_json::json!({"hex": hex(&codec.encode(e).unwrap()), "record": record})
            )
        })
        .collect();
    let cases_path = dir.join("cases.jsonl");
    std::fs::write(&cases_path, cases).unwrap();
    let said = run(&[
        "read",
        schema.to_str().unwrap(),
        cases_path.to_str().unwrap(),
    ]);
    assert!(
        said.contains(&format!("read {} banter messages", events.len())),
        "{said}"
    );
    assert!(said.contains(&codec.fingerprint().to_string()), "{said}");

    // fastavro -> banter
    let records: String = events
        .iter()
        .map(|e| format!("{}\n", serde_json::to_string(e).unwrap()))
        .collect();
    let records_path = dir.join("records.jsonl");
    std::fs::write(&records_path, records).unwrap();
    let written = run(&[
        "write",
        schema.to_str().unwrap(),
        records_path.to_str().unwrap(),
    ]);
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), events.len());
    for (line, e) in lines.iter().zip(&events) {
        let bytes = unhex(line);
        assert_eq!(
            bytes,
            codec.encode(e).unwrap(),
            "fastavro and banter write the same bytes"
        );
        assert_eq!(&codec.decode(&bytes).unwrap(), e);
        assert_eq!(&codec.decode_generic(&bytes).unwrap(), e);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
