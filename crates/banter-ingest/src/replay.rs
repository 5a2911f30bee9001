//! `banter replay FILE`: publishes a file of NDJSON lines, for backfills.
//!
//! Each line is either a captured Meta webhook body (`{"object": …, "entry": […]}`, trusted,
//! the signature is not checked) or a first-party event in the normalized JSON form. Lines go
//! through the same normalization and validation as over HTTP; what is rejected, including
//! a line that is not JSON, is dead-lettered with its line number.
//!
//! Progress goes to stderr every few seconds. The replay is resumable: after every committed
//! batch the byte offset reached is written to `FILE.replay-offset`; a new run starts from
//! there (`--restart` ignores it). A batch is published in one transaction, so a crash
//! re-publishes at most the batch in flight, whose events carry the same `event_id`s.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::Value;
use thiserror::Error;

use crate::normalize::{first_party, meta, Item, Rejection};
use crate::publisher::PublishError;
use crate::server::{now_ms, to_records, IngestState};

/// Lines per published batch.
pub const BATCH_LINES: usize = 2000;

/// Why a replay stopped.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// The file or its checkpoint could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Kafka stayed unavailable through every retry; rerun to resume from the checkpoint.
    #[error("kafka unavailable after {attempts} attempts at line {line}: {source} (rerun to resume from the checkpoint)")]
    Publish {
        /// Attempts made.
        attempts: u32,
        /// First line of the failed batch.
        line: u64,
        /// The last error.
        source: PublishError,
    },
    /// A batch could not be encoded (a bug): nothing of it was published.
    #[error("cannot encode the batch at line {line}: {message}")]
    Encode {
        /// First line of the batch.
        line: u64,
        /// What failed.
        message: String,
    },
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Lines read in this run (after the checkpoint).
    pub lines: u64,
    /// Events published.
    pub events: u64,
    /// Dead letters published.
    pub dead_letters: u64,
    /// Byte offset the run started from.
    pub resumed_from: u64,
}

/// Where the checkpoint of `file` lives.
pub fn checkpoint_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".replay-offset");
    PathBuf::from(p)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReplayError + '_ {
    move |source| ReplayError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Normalizes one line.
pub fn normalize_line(state: &IngestState, line: &str, line_no: u64, now: i64) -> Vec<Item> {
    let bad = |detail: String| {
        vec![Item::Rejected(Rejection {
            reason: "malformed",
            detail,
            payload: line.as_bytes().to_vec(),
            account_id: None,
        })]
    };
    let raw: Box<RawValue> = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return bad(format!("line {line_no}: malformed JSON: {e}")),
    };
    // Only lines that mention `entry` can be webhook bodies; they are parsed into a tree once.
    if raw.get().contains("\"entry\"") {
        if let Ok(v) = serde_json::from_str::<Value>(raw.get()) {
            if v.get("object").is_some() && v.get("entry").is_some() {
                return match meta::normalize(&state.normalizer, &v, now) {
                    Ok(items) => items,
                    Err(e) => bad(format!("line {line_no}: {e}")),
                };
            }
        }
    }
    vec![first_party::normalize(&state.normalizer, &raw, now)]
}

/// Replays `file`; `restart` ignores the checkpoint.
///
/// # Errors
/// I/O on the file or checkpoint; Kafka unavailable through `retries` attempts per batch.
pub async fn replay(
    state: &IngestState,
    file: &Path,
    restart: bool,
    retries: u32,
) -> Result<ReplaySummary, ReplayError> {
    let ckpt = checkpoint_path(file);
    let start = if restart {
        0
    } else {
        match std::fs::read_to_string(&ckpt) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
            Err(_) => 0,
        }
    };
    let mut f = std::fs::File::open(file).map_err(io(file))?;
    f.seek(SeekFrom::Start(start)).map_err(io(file))?;
    let mut reader = BufReader::with_capacity(1 << 20, f);
    let mut summary = ReplaySummary {
        resumed_from: start,
        ..Default::default()
    };
    if start > 0 {
        eprintln!(
            "replay: resuming {} at byte {start} (--restart to start over)",
            file.display()
        );
    }
    let mut offset = start;
    let mut line = String::new();
    let mut batch_items: Vec<Item> = Vec::new();
    let mut batch_lines = 0usize;
    let mut batch_first_line = 1u64;
    let mut line_no = 0u64;
    let began = Instant::now();
    let mut last_report = Instant::now();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(io(file))?;
        if n > 0 {
            offset += n as u64;
            line_no += 1;
            let text = line.trim_end_matches(['\n', '\r']);
            if !text.trim().is_empty() {
                if batch_lines == 0 {
                    batch_first_line = line_no;
                }
                batch_items.extend(normalize_line(state, text, line_no, now_ms()));
                batch_lines += 1;
            }
        }
        let eof = n == 0;
        if batch_lines >= BATCH_LINES || (eof && batch_lines > 0) {
            let out = to_records(state, &batch_items, "replay", now_ms()).map_err(|e| {
                ReplayError::Encode {
                    line: batch_first_line,
                    message: e.to_string(),
                }
            })?;
            let records = &out.records;
            let mut attempt = 0;
            loop {
                attempt += 1;
                match state.publisher.publish(records.clone()).await {
                    Ok(()) => break,
                    Err(e) if attempt < retries => {
                        eprintln!("replay: kafka unavailable ({e}); retrying batch at line {batch_first_line}");
                        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt.min(10))))
                            .await;
                    }
                    Err(source) => {
                        return Err(ReplayError::Publish {
                            attempts: attempt,
                            line: batch_first_line,
                            source,
                        })
                    }
                }
            }
            std::fs::write(&ckpt, offset.to_string()).map_err(io(&ckpt))?;
            out.count(&state.metrics, "replay");
            summary.lines += batch_lines as u64;
            summary.events += out.accepted as u64;
            summary.dead_letters += out.rejected.len() as u64;
            batch_items.clear();
            batch_lines = 0;
            if last_report.elapsed() >= Duration::from_secs(2) {
                last_report = Instant::now();
                eprintln!(
                    "replay: {} lines, {} events, {} dead letters, {:.0} lines/s",
                    summary.lines,
                    summary.events,
                    summary.dead_letters,
                    summary.lines as f64 / began.elapsed().as_secs_f64().max(1e-9)
                );
            }
        }
        if eof {
            break;
        }
    }
    eprintln!(
        "replay: done, {} lines, {} events, {} dead letters in {:.1} s",
        summary.lines,
        summary.events,
        summary.dead_letters,
        began.elapsed().as_secs_f64()
    );
    Ok(summary)
}
