//! What the golden-file tests share: times written as offsets ("2m30s", "61m", "25h", "-3m"),
//! rows of one emission in a canonical order, and running every case of a folder against its
//! `.expected.json` (`BANTER_BLESS=1` rewrites them; review the diff).

#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a part; a panic is the report

use std::path::Path;

use serde_json::Value;

/// Times as offsets from `t0`.
#[derive(Debug, Clone, Copy)]
pub struct Clock(pub i64);

impl Clock {
    /// "2m30s", "61m", "45s", "25h", "-3m" after `t0`.
    pub fn at(self, s: &str) -> i64 {
        let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
        let mut ms = 0i64;
        let mut num = String::new();
        for c in s.chars() {
            match c {
                '0'..='9' => num.push(c),
                'h' => ms += num.parse::<i64>().unwrap() * 3_600_000,
                'm' => ms += num.parse::<i64>().unwrap() * 60_000,
                's' => ms += num.parse::<i64>().unwrap() * 1000,
                _ => panic!("bad time {s}"),
            }
            if !c.is_ascii_digit() {
                num.clear();
            }
        }
        self.0 + if neg { -ms } else { ms }
    }

    /// `t` as minutes (and seconds) after `t0`.
    pub fn show(self, t: i64) -> String {
        let d = t - self.0;
        let (m, s) = (d.div_euclid(60_000), d.rem_euclid(60_000) / 1000);
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    }
}

/// Rows emitted by one watermark step come in hash order; the files list each step's rows
/// sorted (by their JSON text), steps in emission order.
pub fn canonical(rows: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(rows.len());
    let mut group: Vec<Value> = Vec::new();
    let flush = |group: &mut Vec<Value>, out: &mut Vec<Value>| {
        group.sort_by_cached_key(|v| v.to_string());
        out.append(group);
    };
    for r in rows {
        let same = match (group.last(), r.get("emitted_at")) {
            (Some(last), Some(at)) => last.get("emitted_at") == Some(at),
            _ => false,
        };
        if !same {
            flush(&mut group, &mut out);
        }
        group.push(r);
    }
    flush(&mut group, &mut out);
    out
}

/// Runs every `<case>.jsonl` of `dir` (at least `min_cases`) through `run` and compares the
/// canonical rows with `<case>.expected.json`.
pub fn check_cases(dir: &Path, min_cases: usize, run: impl Fn(&str) -> Vec<Value>) {
    let bless = std::env::var_os("BANTER_BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    cases.sort();
    assert!(cases.len() >= min_cases, "{} cases", cases.len());
    for case in cases {
        let got = Value::Array(canonical(run(&std::fs::read_to_string(&case).unwrap())));
        let expected = case.with_extension("expected.json");
        if bless {
            std::fs::write(
                &expected,
                serde_json::to_string_pretty(&got).unwrap() + "\n",
            )
            .unwrap();
        }
        let want: Value =
            serde_json::from_str(&std::fs::read_to_string(&expected).unwrap_or_else(|_| {
                panic!(
                    "no {}: run with BANTER_BLESS=1 and review it",
                    expected.display()
                )
            }))
            .unwrap();
        assert_eq!(
            got,
            want,
            "{} differs from its expected file",
            case.display()
        );
    }
}
