//! Codec throughput on generated events, encode and decode, on each path: fast (the
//! hand-written v1 codec), serde (serde_avro_fast) and generic (apache-avro). Run with `cargo bench -p banter-model --bench codec`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use banter_model::{AvroRecord, EngagementEvent, ValidationContext};
use banter_workload::sample::sample_events;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const N: usize = 10_000;

fn codec(c: &mut Criterion) {
    let events = sample_events(42, N, 5_000, 1_764_000_000_000);
    let codec = EngagementEvent::codec();
    assert!(codec.is_specialized());
    let encoded: Vec<Vec<u8>> = events.iter().map(|e| codec.encode(e).unwrap()).collect();
    let bytes: usize = encoded.iter().map(Vec::len).sum();
    eprintln!("mean encoded size: {} bytes", bytes / N);

    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Elements(N as u64));

    g.bench_function("encode/fast", |b| {
        let mut enc = codec.encoder();
        let mut buf = Vec::with_capacity(bytes + 1024);
        b.iter(|| {
            buf.clear();
            for e in &events {
                enc.encode_into(e, &mut buf).unwrap();
            }
            black_box(buf.len())
        })
    });
    g.bench_function("decode/fast", |b| {
        b.iter(|| {
            for m in &encoded {
                black_box(codec.decode(m).unwrap());
            }
        })
    });
    // What the stream adds per event since it re-checks what it reads (issue 17): decoding
    // into a reused event, with and without the unclocked validation.
    g.bench_function("decode_into/fast", |b| {
        let mut e = EngagementEvent::empty();
        b.iter(|| {
            for m in &encoded {
                codec.decode_into(m, &mut e).unwrap();
                black_box(&e);
            }
        })
    });
    g.bench_function("decode_into+validate", |b| {
        let mut e = EngagementEvent::empty();
        let ctx = ValidationContext::unclocked();
        b.iter(|| {
            for m in &encoded {
                codec.decode_into(m, &mut e).unwrap();
                black_box(e.validate(&ctx).is_ok());
            }
        })
    });
    g.bench_function("encode/serde", |b| {
        b.iter(|| {
            for e in &events {
                black_box(codec.encode_serde(e).unwrap());
            }
        })
    });
    g.bench_function("decode/serde", |b| {
        b.iter(|| {
            for m in &encoded {
                black_box(codec.decode_serde(m).unwrap());
            }
        })
    });
    g.bench_function("encode/generic", |b| {
        b.iter(|| {
            for e in &events {
                black_box(codec.encode_generic(e).unwrap());
            }
        })
    });
    g.bench_function("decode/generic", |b| {
        b.iter(|| {
            for m in &encoded {
                black_box(codec.decode_generic(m).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = codec
}
criterion_main!(benches);
