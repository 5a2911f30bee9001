//! Golden files: each Meta fixture in `tests/fixtures/meta/` normalizes to exactly what
//! `tests/fixtures/meta/golden/` holds. `BANTER_BLESS=1 cargo test -p banter-ingest` rewrites
//! the golden files after a deliberate change (review the diff).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;

use banter_ingest::normalize::{meta, Item, Normalizer};
use serde_json::{json, Value};

const NOW: i64 = 1_764_000_000_000;

fn render(items: &[Item]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|i| match i {
                Item::Event(e) => json!({ "event": e }),
                Item::Rejected(r) => json!({
                    "rejected": { "reason": r.reason, "detail": r.detail, "account_id": r.account_id }
                }),
                Item::Ignored(reason) => json!({ "ignored": reason }),
            })
            .collect(),
    )
}

#[test]
fn meta_fixtures_match_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/meta");
    let n = Normalizer::new(b"golden-salt-0123456789", 300_000);
    let bless = std::env::var_os("BANTER_BLESS").is_some();
    let mut checked = 0;
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    for path in names {
        let body: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let got = render(&meta::normalize(&n, &body, NOW).unwrap());
        let golden = dir.join("golden").join(path.file_name().unwrap());
        if bless {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
        }
        let want: Value = serde_json::from_slice(&std::fs::read(&golden).unwrap_or_else(|_| {
            panic!(
                "no golden file {}: run with BANTER_BLESS=1 and review it",
                golden.display()
            )
        }))
        .unwrap();
        assert_eq!(got, want, "{} differs from its golden file", path.display());
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} fixtures");
}

#[test]
fn not_an_envelope_is_an_error() {
    let n = Normalizer::new(b"golden-salt-0123456789", 300_000);
    for (body, msg) in [
        (json!({"entry": []}), "not a Meta webhook: missing `object`"),
        (
            json!({"object": "whatsapp_business_account", "entry": []}),
            "unsupported webhook object `whatsapp_business_account` (expected instagram or page)",
        ),
        (
            json!({"object": "page"}),
            "not a Meta webhook: missing `entry` array",
        ),
    ] {
        assert_eq!(
            meta::normalize(&n, &body, NOW).unwrap_err().to_string(),
            msg
        );
    }
}

#[test]
fn redelivery_gives_the_same_event_ids() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/meta");
    let n = Normalizer::new(b"golden-salt-0123456789", 300_000);
    let mut body: Value =
        serde_json::from_slice(&std::fs::read(dir.join("ig_comments.json")).unwrap()).unwrap();
    let ids = |items: Vec<Item>| -> Vec<String> {
        items
            .into_iter()
            .filter_map(|i| {
                if let Item::Event(e) = i {
                    Some(e.event_id)
                } else {
                    None
                }
            })
            .collect()
    };
    let first = ids(meta::normalize(&n, &body, NOW).unwrap());
    // Meta retries later; Instagram's entry.time is the delivery time and may move.
    body["entry"][0]["time"] = json!(1_763_999_990);
    let again = ids(meta::normalize(&n, &body, NOW + 30_000).unwrap());
    assert_eq!(first, again);
    assert_eq!(first.len(), 3);
}
