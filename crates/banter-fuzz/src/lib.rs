//! What banter's fuzz targets run, one function per target, each taking any bytes: none may
//! panic, hang or allocate without bound, and each checks what must hold of what it accepts.
//! `fuzz/` holds the cargo-fuzz harness around them (`scripts/fuzz.sh`); `tests/corpus.rs`
//! runs every corpus file and every kept finding through them on stable, in the test suite.
//!
//! | target | input | what must hold |
//! |---|---|---|
//! | [`meta_webhook`] | a webhook body | the update count bounds the work; accepted events encode and decode back unchanged; rejected ones make encodable dead letters |
//! | [`first_party`] | a `POST /v1/events` body | the same, for the first-party parser (JSON array, object or NDJSON) |
//! | [`avro`] | a record type and Avro bytes | every decoder errors or gives a value that encodes back to a value the others read the same |
//! | [`config`] | a config file and environment overrides | loading errors or gives a config whose redacted form prints |
//! | [`changelog`] | a checkpoint and changelog entries | restoring errors or gives a pipeline that processes events and writes its changelog |

use std::sync::LazyLock;

use banter_ingest::normalize::{first_party as fp, meta, Item, Normalizer};
use banter_model::{
    AvroRecord, ConversationRollup, DeadLetter, EngagementEvent, FunnelRollup, Rollup, SpikeAlert,
    Stage,
};
use banter_stream::changelog::{Changes, Store};
use banter_stream::cta::Matcher;
use banter_stream::{Checkpoint, Mark, Outputs, Pipeline, PipelineConfig, Saved, StreamSettings};

/// "Now" for normalization: fixed, so a finding replays.
const NOW_MS: i64 = 1_764_000_000_000;

/// The most events or updates one fuzzed request may hold, as ingest's default limit.
const MAX_ITEMS: usize = 1000;

fn normalizer() -> &'static Normalizer {
    static N: LazyLock<Normalizer> =
        LazyLock::new(|| Normalizer::new(b"fuzzing-salt-not-for-production", 5 * 60_000));
    &N
}

/// What ingest does with the items of one request before publishing, checked: every event
/// encodes and decodes back equal, every rejection makes a dead letter that encodes.
fn check_items(items: &[Item]) {
    for item in items {
        match item {
            Item::Event(e) => {
                let bytes = EngagementEvent::codec().encode(e).unwrap_or_else(|err| {
                    panic!("an accepted event does not encode: {err}\n{e:?}")
                });
                let back = EngagementEvent::codec()
                    .decode(&bytes)
                    .unwrap_or_else(|err| {
                        panic!("an accepted event does not decode: {err}\n{e:?}")
                    });
                assert!(
                    same_event(e, &back),
                    "an accepted event reads back different:\n{e:?}\n{back:?}"
                );
            }
            Item::Rejected(r) => {
                let (payload, detail) = DeadLetter::bounded_payload(&r.payload, &r.detail);
                assert!(payload.len() <= DeadLetter::MAX_PAYLOAD);
                let dl = DeadLetter {
                    stage: Stage::Ingest,
                    reason: r.reason.to_owned(),
                    detail,
                    source: Some("/fuzz".into()),
                    source_partition: None,
                    source_offset: None,
                    account_id: r.account_id.clone(),
                    payload,
                    failed_at: NOW_MS,
                };
                DeadLetter::codec()
                    .encode(&dl)
                    .unwrap_or_else(|err| panic!("a dead letter does not encode: {err}\n{dl:?}"));
            }
            Item::Ignored(_) => {}
        }
    }
}

/// Equal, NaN values included (a conversion value is a float).
fn same_event(a: &EngagementEvent, b: &EngagementEvent) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    if a.value.is_some_and(f64::is_nan) && b.value.is_some_and(f64::is_nan) {
        a.value = None;
        b.value = None;
    }
    a == b
}

/// A Meta webhook body, after its signature was found good: counted, parsed, normalized.
pub fn meta_webhook(data: &[u8]) {
    if banter_ingest::server::webhook::updates_within(data, MAX_ITEMS).is_err() {
        return;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(items) = meta::normalize(normalizer(), &value, NOW_MS) {
        // The count bounds the items: a body within it makes at most that many per update.
        check_items(&items);
    }
}

/// A `POST /v1/events` body: the first byte says JSON (even) or NDJSON (odd), the rest is the
/// body.
pub fn first_party(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let Ok(raws) = banter_ingest::server::split_events(body, mode % 2 == 1, MAX_ITEMS) else {
        return;
    };
    assert!(
        raws.len() <= MAX_ITEMS,
        "{} events past the limit",
        raws.len()
    );
    let items: Vec<Item> = raws
        .iter()
        .map(|r| fp::normalize(normalizer(), r, NOW_MS))
        .collect();
    check_items(&items);
}

/// Every decoder of one record type over `bytes`; what one accepts, it writes back to bytes
/// that every decoder reads to the same value.
fn avro_of<T: AvroRecord + std::fmt::Debug>(bytes: &[u8]) {
    let codec = T::codec();
    let decoded = [
        codec.decode(bytes).ok(),
        codec.decode_serde(bytes).ok(),
        codec.decode_generic(bytes).ok(),
    ];
    for value in decoded.into_iter().flatten() {
        let again = codec
            .encode(&value)
            .unwrap_or_else(|e| panic!("a decoded {} does not encode: {e}\n{value:?}", T::NAME));
        let fast = codec
            .decode(&again)
            .unwrap_or_else(|e| panic!("{} written back does not decode: {e}", T::NAME));
        let generic = codec
            .decode_generic(&again)
            .unwrap_or_else(|e| panic!("{} written back is not Avro: {e}", T::NAME));
        // Compared as bytes: floats (NaN) have no equality.
        let a = codec.encode(&fast).unwrap_or_default();
        let b = codec.encode(&generic).unwrap_or_default();
        assert_eq!(a, again, "{} changes when read back", T::NAME);
        assert_eq!(
            b,
            again,
            "the generic decoder reads {} differently",
            T::NAME
        );
    }
}

/// Avro single-object bytes of one record type: the first byte's low bits pick the type
/// (events, rollups, funnel rollups, conversation rollups, alerts, dead letters); with its high
/// bit set, the type's own header is put before the rest (past the fingerprint check).
pub fn avro(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let with_header = |fingerprint: [u8; 8]| -> Vec<u8> {
        if pick & 0x80 == 0 {
            return rest.to_vec();
        }
        let mut v = banter_model::codec::SINGLE_OBJECT_MAGIC.to_vec();
        v.extend_from_slice(&fingerprint);
        v.extend_from_slice(rest);
        v
    };
    match (pick & 0x7f) % 6 {
        0 => avro_of::<EngagementEvent>(&with_header(EngagementEvent::codec().fingerprint().0)),
        1 => avro_of::<Rollup>(&with_header(Rollup::codec().fingerprint().0)),
        2 => avro_of::<FunnelRollup>(&with_header(FunnelRollup::codec().fingerprint().0)),
        3 => {
            avro_of::<ConversationRollup>(&with_header(ConversationRollup::codec().fingerprint().0))
        }
        4 => avro_of::<SpikeAlert>(&with_header(SpikeAlert::codec().fingerprint().0)),
        _ => avro_of::<DeadLetter>(&with_header(DeadLetter::codec().fingerprint().0)),
    }
}

/// A configuration file, and after a NUL byte, environment overrides (`NAME=value` lines):
/// loading errors (naming the key) or gives a configuration whose redacted form prints and
/// loads again.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, env) = text.split_once('\0').unwrap_or((text, ""));
    let vars: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let Ok(cfg) =
        banter_runtime::config::load_str::<banter::config::Config>(Some((file, " in fuzz")), vars)
    else {
        return;
    };
    let shown = cfg.to_redacted_toml();
    // What `config show` prints must read back as a configuration file: it may fail
    // validation (a redacted secret), never parsing.
    if let Err(banter_runtime::config::ConfigError::Parse { message, .. }) =
        banter_runtime::config::load_str::<banter::config::Config>(
            Some((&shown, " (redacted)")),
            Vec::new(),
        )
    {
        panic!("the redacted configuration does not read back: {message}\n{shown}");
    }
}

/// Reads a little-endian integer of `N` bytes from the front of `data`, or zeros past its end.
fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

fn take_slice<'a>(data: &mut &'a [u8], len: usize) -> &'a [u8] {
    let n = len.min(data.len());
    let (head, tail) = data.split_at(n);
    *data = tail;
    head
}

/// A few events of a small generated workload, fed after a restore.
fn events() -> &'static [EngagementEvent] {
    static EVENTS: LazyLock<Vec<EngagementEvent>> = LazyLock::new(|| {
        let w = banter_workload::Workload::generate(banter_workload::WorkloadConfig {
            accounts: 2,
            duration_ms: 90 * 60_000,
            ..Default::default()
        });
        (0..w.len().min(400)).map(|i| w.event(i)).collect()
    });
    &EVENTS
}

fn pipeline_config() -> PipelineConfig {
    PipelineConfig::from_settings(&StreamSettings::default())
}

/// A partition's saved state in the fuzz layout ([`saved_bytes`]): one flags byte (bit 0: a
/// checkpoint), the checkpoint's numbers (next offset, restore mark, watermark, highest event
/// time), then entries of `store (1) | key length (1) | key | value length (2) | value`.
pub fn parse_saved(mut data: &[u8]) -> Saved {
    let d = &mut data;
    let [flags] = take::<1>(d);
    let num = |d: &mut &[u8]| i64::from_le_bytes(take::<8>(d));
    let opt = |d: &mut &[u8], present: bool| {
        let v = num(d);
        present.then_some(v)
    };
    let checkpoint = (flags & 1 == 1).then(|| {
        let next_offset = num(d);
        let restore = (flags & 2 == 2).then(|| Mark {
            offset: num(d),
            watermark: opt(d, flags & 4 == 4),
            max_event_time: opt(d, flags & 8 == 8),
        });
        Checkpoint {
            format: Checkpoint::FORMAT,
            next_offset,
            restore,
            idle: Vec::new(),
            watermark: opt(d, flags & 16 == 16),
            max_event_time: opt(d, flags & 32 == 32),
            id_seed: (flags & 64 == 64).then(|| u64::from_le_bytes(take::<8>(d))),
        }
    });
    let mut saved = Saved {
        checkpoint,
        ..Saved::default()
    };
    while !d.is_empty() {
        let [store] = take::<1>(d);
        let [klen] = take::<1>(d);
        let key = take_slice(d, usize::from(klen)).to_vec();
        let vlen = u16::from_le_bytes(take::<2>(d));
        let value = take_slice(d, usize::from(vlen)).to_vec();
        let store = Store::ALL[usize::from(store) % Store::ALL.len()];
        saved.entries.insert((store, key), value);
    }
    saved
}

/// `saved` in the layout [`parse_saved`] reads (entries with keys over 255 bytes or values
/// over 64 KiB are left out), for seeding the corpus with real state.
pub fn saved_bytes(saved: &Saved) -> Vec<u8> {
    let mut out = vec![0u8];
    if let Some(cp) = &saved.checkpoint {
        let mut flags = 1u8;
        out.extend(cp.next_offset.to_le_bytes());
        if let Some(m) = &cp.restore {
            flags |= 2;
            out.extend(m.offset.to_le_bytes());
            if let Some(w) = m.watermark {
                flags |= 4;
                out.extend(w.to_le_bytes());
            }
            if let Some(t) = m.max_event_time {
                flags |= 8;
                out.extend(t.to_le_bytes());
            }
        }
        if let Some(w) = cp.watermark {
            flags |= 16;
            out.extend(w.to_le_bytes());
        }
        if let Some(t) = cp.max_event_time {
            flags |= 32;
            out.extend(t.to_le_bytes());
        }
        if let Some(seed) = cp.id_seed {
            flags |= 64;
            out.extend(seed.to_le_bytes());
        }
        out[0] = flags;
    }
    for ((store, key), value) in &saved.entries {
        let (Ok(klen), Ok(vlen)) = (u8::try_from(key.len()), u16::try_from(value.len())) else {
            continue;
        };
        let index = Store::ALL.iter().position(|s| s == store).unwrap_or(0);
        out.push(index as u8);
        out.push(klen);
        out.extend_from_slice(key);
        out.extend(vlen.to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// A partition's saved state ([`parse_saved`]) restored: an error, or a pipeline that takes
/// events, moves its time on and writes its changelog.
pub fn changelog(data: &[u8]) {
    let saved = parse_saved(data);
    let Ok((mut p, _from)) = Pipeline::restore(&pipeline_config(), Matcher::default(), &saved)
    else {
        return;
    };
    let mut out = Outputs::default();
    let start = p.next_offset().clamp(0, i64::MAX - 10_000);
    for (i, e) in events().iter().take(200).enumerate() {
        p.process(e, start + i as i64, &mut out);
        out.clear();
    }
    if let Some(t) = p.max_event_time() {
        p.idle_advance(t.saturating_add(3_600_000), &mut out);
    }
    let mut changes = Changes::new();
    p.write_changes(&mut changes)
        .unwrap_or_else(|e| panic!("a restored pipeline cannot write its changelog: {e}"));
    let _ = p.checkpoint();
}

/// The seeds' generated workload (12 accounts, 6 hours, a campaign on every post with a CTA)
/// run through a pipeline as `banter stream` runs it: the workload, every output, and the
/// partition's whole saved state (changelog and checkpoint) after every `every` events, its
/// values binary, or as JSON with `json` (as checkpoint format 2 wrote them; restore reads
/// both).
pub fn workload_run(every: usize, json: bool) -> (banter_workload::Workload, Outputs, Vec<Saved>) {
    let w = banter_workload::Workload::generate(banter_workload::WorkloadConfig {
        accounts: 12,
        duration_ms: 6 * 60 * 60_000,
        ..Default::default()
    });
    let matcher = Matcher::new(
        &w.posts
            .iter()
            .filter_map(|p| {
                p.cta.as_ref().map(|(id, kw)| {
                    banter_stream::cta::Campaign::on_post(id, &p.account_id, &p.content_id, kw)
                })
            })
            .collect::<Vec<_>>(),
    )
    .unwrap_or_default();
    let mut p = Pipeline::new(&pipeline_config(), matcher);
    let mut outs = Outputs::default();
    let mut all = Outputs::default();
    let mut logs = Vec::new();
    let mut log: Saved = Saved::default();
    for i in 0..w.len() {
        p.process(&w.event(i), i as i64, &mut outs);
        all.rollups.append(&mut outs.rollups);
        all.funnels.append(&mut outs.funnels);
        all.conversations.append(&mut outs.conversations);
        all.alerts.append(&mut outs.alerts);
        outs.clear();
        if i % every == every - 1 {
            let mut changes = if json {
                Changes::with_json_values()
            } else {
                Changes::new()
            };
            if p.write_changes(&mut changes).is_ok() {
                for (store, c) in changes {
                    match c.value {
                        Some(v) => log.entries.insert((store, c.key), v),
                        None => log.entries.remove(&(store, c.key)),
                    };
                }
            }
            log.checkpoint = Some(p.checkpoint());
            logs.push(log.clone());
        }
    }
    (w, all, logs)
}

/// The seed corpus: real inputs of each target, from the fixtures and a generated workload.
/// `(target, name, bytes)`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let (w, all, logs) = workload_run(500, false);
    // Avro: one record of each type, and its body alone.
    for i in 0..8.min(w.len()) {
        let bytes = EngagementEvent::codec()
            .encode(&w.event(i))
            .unwrap_or_default();
        out.push(("avro", format!("event-{i}"), [&[0x00], &bytes[..]].concat()));
    }
    // Small inputs fuzz faster: the checkpoint and a few entries of one store.
    let mut checkpoints = Vec::new();
    for log in &logs {
        for store in Store::ALL {
            let some = Saved {
                checkpoint: log.checkpoint.clone(),
                entries: log
                    .entries
                    .iter()
                    .filter(|((s, _), _)| *s == store)
                    .take(6)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            };
            if !some.entries.is_empty() {
                checkpoints.push(saved_bytes(&some));
            }
        }
    }
    let step = (checkpoints.len() / 24).max(1);
    for (i, c) in checkpoints.into_iter().enumerate().step_by(step) {
        out.push(("changelog", format!("workload-{i}"), c));
    }
    let header = |k: u8, bytes: Vec<u8>| [&[k][..], &bytes[..]].concat();
    for (i, r) in all.rollups.iter().take(4).enumerate() {
        out.push((
            "avro",
            format!("rollup-{i}"),
            header(1, Rollup::codec().encode(r).unwrap_or_default()),
        ));
    }
    for (i, r) in all.funnels.iter().take(4).enumerate() {
        out.push((
            "avro",
            format!("funnel-{i}"),
            header(2, FunnelRollup::codec().encode(r).unwrap_or_default()),
        ));
    }
    for (i, r) in all.conversations.iter().take(4).enumerate() {
        out.push((
            "avro",
            format!("conversation-{i}"),
            header(3, ConversationRollup::codec().encode(r).unwrap_or_default()),
        ));
    }
    for (i, r) in all.alerts.iter().take(4).enumerate() {
        out.push((
            "avro",
            format!("alert-{i}"),
            header(4, SpikeAlert::codec().encode(r).unwrap_or_default()),
        ));
    }
    let dl = DeadLetter {
        stage: Stage::Stream,
        reason: "late".into(),
        detail: "event time 2 h behind the watermark".into(),
        source: Some("banter.events.v1".into()),
        source_partition: Some(3),
        source_offset: Some(12),
        account_id: Some("acct-1".into()),
        payload: vec![0xc3, 0x01, 1, 2, 3],
        failed_at: NOW_MS,
    };
    out.push((
        "avro",
        "dead-letter".into(),
        header(5, DeadLetter::codec().encode(&dl).unwrap_or_default()),
    ));
    // The body alone, with the header added by the target.
    if let Ok(bytes) = EngagementEvent::codec().encode(&w.event(0)) {
        out.push((
            "avro",
            "event-body".into(),
            [&[0x80], &bytes[banter_model::codec::HEADER_LEN..]].concat(),
        ));
    }
    // First-party bodies: the generator's events as the API takes them.
    let body: Vec<serde_json::Value> = (0..20).map(|i| first_party_json(&w.event(i * 7))).collect();
    out.push((
        "first_party",
        "array".into(),
        [&[0u8][..], &serde_json::to_vec(&body).unwrap_or_default()].concat(),
    ));
    let ndjson: Vec<u8> = body
        .iter()
        .flat_map(|v| {
            let mut l = serde_json::to_vec(v).unwrap_or_default();
            l.push(b'\n');
            l
        })
        .collect();
    out.push((
        "first_party",
        "ndjson".into(),
        [&[1u8][..], &ndjson].concat(),
    ));
    out.push((
        "first_party",
        "object".into(),
        [
            &[0u8][..],
            &serde_json::to_vec(&body[0]).unwrap_or_default(),
        ]
        .concat(),
    ));
    // Webhook bodies and configuration files from the repository.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fixtures = root.join("crates/banter-ingest/tests/fixtures/meta");
    for entry in std::fs::read_dir(&fixtures).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "json") {
            if let Ok(bytes) = std::fs::read(&path) {
                let name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
                out.push(("meta_webhook", name.unwrap_or_default(), bytes));
            }
        }
    }
    if let Ok(bytes) = std::fs::read(root.join("docker/banter.toml")) {
        out.push(("config", "docker".into(), bytes));
    }
    out.push((
        "config",
        "env-overrides".into(),
        b"[kafka]\nbrokers = \"localhost:9092\"\n\0BANTER_STREAM__ALLOWED_LATENESS_MS=60000\nBANTER_KAFKA__PROPERTIES__SASL__PASSWORD=x\n"
            .to_vec(),
    ));
    out.push((
        "config",
        "ingest-keys".into(),
        b"[ingest]\nallow_unauthenticated = false\n[[ingest.api_keys]]\nsource = \"shop\"\nsha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n[clickhouse]\nurl = \"http://user:pw@localhost:8123\"\n"
            .to_vec(),
    ));
    out
}

/// An event as a first-party caller posts it (the Avro field names, enums as strings).
fn first_party_json(e: &EngagementEvent) -> serde_json::Value {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
        o.remove("received_at");
    }
    v
}
