//! Every corpus input and every kept finding of the fuzz targets, run through them on stable:
//! a finding fixed once stays fixed. `BANTER_FUZZ_SEED=1` (re)writes the generated seeds into
//! `fuzz/corpus/<target>/` first (`scripts/fuzz.sh seed`).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("meta_webhook", banter_fuzz::meta_webhook),
    ("first_party", banter_fuzz::first_party),
    ("avro", banter_fuzz::avro),
    ("config", banter_fuzz::config),
    ("changelog", banter_fuzz::changelog),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_file());
    out.sort();
    out
}

#[test]
fn every_corpus_input_and_finding_runs_clean() {
    if std::env::var_os("BANTER_FUZZ_SEED").is_some() {
        for (target, name, bytes) in banter_fuzz::seeds() {
            let dir = fuzz_dir().join("corpus").join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
    for (target, run) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(target));
        assert!(
            !corpus.is_empty(),
            "no corpus for {target} in fuzz/corpus/{target} (scripts/fuzz.sh seed)"
        );
        let findings = files(&fuzz_dir().join("regressions").join(target));
        for f in corpus.iter().chain(&findings) {
            let bytes = std::fs::read(f).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&bytes));
            assert!(outcome.is_ok(), "{target} fails on {}", f.display());
        }
        eprintln!(
            "{target}: {} corpus inputs, {} findings",
            corpus.len(),
            findings.len()
        );
    }
}
