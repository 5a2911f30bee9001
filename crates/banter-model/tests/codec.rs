//! Codec properties: the fast and generic paths agree byte for byte, schema versions resolve,
//! and no input makes the decoder panic.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use banter_model::codec::{CodecError, HEADER_LEN};
use banter_model::*;
use banter_workload::sample::sample_events;
use proptest::prelude::*;
use serde::Serialize;

const V0: &str = include_str!("schemas/engagement_event.v0.avsc");
/// `fastavro.schema.fingerprint(to_parsing_canonical_form(v1), "CRC-64-AVRO")`: fastavro's hex
/// string is already in wire (little-endian) byte order.
const FASTAVRO_FINGERPRINT_V1: &str = "517cc246cf4c25df";
const V2: &str = include_str!("schemas/engagement_event.v2.avsc");

fn opt_string() -> impl Strategy<Value = Option<String>> {
    prop::option::of(any::<String>())
}

fn event_strategy() -> impl Strategy<Value = EngagementEvent> {
    let ids = (
        any::<String>(),
        any::<String>(),
        opt_string(),
        opt_string(),
        opt_string(),
        opt_string(),
    );
    let enums = (
        prop::sample::select(Platform::ALL),
        prop::sample::select(Kind::ALL),
        prop::sample::select(Action::ALL),
        prop::option::of(prop::sample::select(ContentType::ALL)),
        prop::sample::select(EventTimeSource::ALL),
    );
    let more = (
        opt_string(),
        opt_string(),
        opt_string(),
        opt_string(),
        opt_string(),
        opt_string(),
    );
    let nums = (
        any::<i64>(),
        any::<i64>(),
        prop::option::of(any::<i64>()),
        prop::option::of(any::<f64>().prop_filter("NaN never equals itself", |v| !v.is_nan())),
        any::<bool>(),
        opt_string(),
    );
    (ids, enums, more, nums).prop_map(
        |(
            (event_id, account_id, content_id, object_id, parent_id, thread_id),
            (platform, kind, action, content_type, event_time_source),
            (actor_id, text, reaction, cta_campaign_id, cta_keyword, ref_),
            (event_time, received_at, content_published_at, value, is_brand_actor, click_id),
        )| EngagementEvent {
            event_id,
            platform,
            kind,
            action,
            account_id,
            content_id,
            content_type,
            content_published_at,
            object_id,
            parent_id,
            thread_id,
            actor_id,
            is_brand_actor,
            text,
            reaction,
            cta_campaign_id,
            cta_keyword,
            ref_,
            click_id,
            value,
            currency: cta_keyword_currency(&value),
            event_time,
            event_time_source,
            received_at,
        },
    )
}

fn cta_keyword_currency(value: &Option<f64>) -> Option<String> {
    value.map(|_| "EUR".to_owned())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn all_paths_write_the_same_bytes_and_read_each_other(e in event_strategy()) {
        let codec = EngagementEvent::codec();
        let fast = codec.encode(&e).unwrap();
        let serde = codec.encode_serde(&e).unwrap();
        let generic = codec.encode_generic(&e).unwrap();
        prop_assert_eq!(&fast, &generic);
        prop_assert_eq!(&serde, &generic);
        prop_assert_eq!(codec.decode(&generic).unwrap(), e.clone());
        prop_assert_eq!(codec.decode_serde(&fast).unwrap(), e.clone());
        prop_assert_eq!(codec.decode_generic(&fast).unwrap(), e);
    }

    #[test]
    fn decoding_into_a_used_event_equals_decoding(a in event_strategy(), b in event_strategy()) {
        // The hot path decodes every event into the previous one's buffers.
        let codec = EngagementEvent::codec();
        let mut into = a.clone();
        codec.decode_into(&codec.encode(&b).unwrap(), &mut into).unwrap();
        prop_assert_eq!(&into, &b);
        codec.decode_into(&codec.encode(&a).unwrap(), &mut into).unwrap();
        prop_assert_eq!(&into, &a);
        let bytes = codec.encode(&a).unwrap();
        prop_assert!(codec.decode_into(&bytes[..bytes.len() - 1], &mut into).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let codec = EngagementEvent::codec();
        let mut msg = vec![0xC3, 0x01];
        msg.extend_from_slice(&codec.fingerprint().0);
        msg.extend_from_slice(&body);
        let fast = codec.decode(&msg).ok();
        let serde = codec.decode_serde(&msg).ok();
        // The hand-written and serde decoders accept exactly the same bodies.
        prop_assert_eq!(&fast, &serde);
        let _ = codec.decode_generic(&msg);
        let _ = codec.decode(&body);
    }

    #[test]
    fn truncated_messages_are_errors(e in event_strategy(), cut in 0usize..1000) {
        let codec = EngagementEvent::codec();
        let bytes = codec.encode(&e).unwrap();
        let cut = cut % bytes.len();
        prop_assert!(codec.decode(&bytes[..cut]).is_err());
        prop_assert!(codec.decode_serde(&bytes[..cut]).is_err());
        prop_assert!(codec.decode_generic(&bytes[..cut]).is_err());
    }
}

#[test]
fn specialized_codec_matches_the_schema() {
    let codec = EngagementEvent::codec();
    assert!(
        codec.is_specialized(),
        "engagement_event.v1.avsc changed: update codec/event_v1.rs (its FINGERPRINT and field order)"
    );
    // Enum indexes on the wire are the position in ALL: it must be the schema's symbol order.
    let schema: serde_json::Value = serde_json::from_str(EngagementEvent::SCHEMA).unwrap();
    let symbols = |field: &str| -> Vec<String> {
        let f = schema["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == field)
            .unwrap();
        let t = if f["type"].is_array() {
            &f["type"][1]
        } else {
            &f["type"]
        };
        t["symbols"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let names = |all: &[&str]| all.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        symbols("platform"),
        names(&Platform::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>())
    );
    assert_eq!(
        symbols("kind"),
        names(&Kind::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>())
    );
    assert_eq!(
        symbols("action"),
        names(&Action::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>())
    );
    assert_eq!(
        symbols("content_type"),
        names(
            &ContentType::ALL
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
        )
    );
    assert_eq!(
        symbols("event_time_source"),
        names(
            &EventTimeSource::ALL
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
        )
    );
}

#[test]
fn wire_header_is_magic_and_little_endian_rabin_of_canonical_form() {
    let codec = EngagementEvent::codec();
    let e = &sample_events(3, 1, 1, 1_764_000_000_000)[0];
    let bytes = codec.encode(e).unwrap();
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    assert_eq!(&bytes[2..HEADER_LEN], &codec.fingerprint().0);
    // The Parsing Canonical Form drops docs, defaults and logical types: a schema that differs
    // only in those has the same fingerprint.
    let relaxed = Codec::<EngagementEvent>::new().unwrap();
    let stripped = EngagementEvent::SCHEMA
        .replace(r#""doc": "Stable id"#, r#""x-note": "Stable id"#)
        .replace(
            r#"{"type": "long", "logicalType": "timestamp-millis"}"#,
            r#""long""#,
        );
    assert_ne!(stripped, EngagementEvent::SCHEMA);
    assert_eq!(
        relaxed.register_writer_schema(&stripped).unwrap(),
        codec.fingerprint()
    );
    // The CRC-64-AVRO of the canonical form, as fastavro computes it (tests/interop checks the
    // same against fastavro at run time).
    assert_eq!(codec.fingerprint().to_string(), FASTAVRO_FINGERPRINT_V1);
}

#[test]
fn every_record_type_round_trips_on_both_paths() {
    fn check<T: AvroRecord + PartialEq + std::fmt::Debug>(v: T) {
        let c = T::codec();
        let fast = c.encode(&v).unwrap();
        assert_eq!(fast, c.encode_generic(&v).unwrap(), "{}", T::NAME);
        assert_eq!(fast, c.encode_serde(&v).unwrap(), "{}", T::NAME);
        assert_eq!(c.decode(&fast).unwrap(), v);
        assert_eq!(c.decode_serde(&fast).unwrap(), v);
        assert_eq!(c.decode_generic(&fast).unwrap(), v);
    }
    check(Rollup {
        account_id: "acct".into(),
        content_id: Some("post".into()),
        window: WindowKind::Velocity5m,
        window_start: 1_764_000_000_000,
        window_end: 1_764_000_300_000,
        revision: 42,
        interactions: 17,
        comments: 5,
        live_comments: 0,
        reactions: 11,
        shares: 1,
        story_replies: 0,
        dms_in: 0,
        mentions: 0,
        brand_replies: 2,
        velocity: Some(3.4),
        early_accel: None,
        time_to_n_minutes: Some(12.5),
        unique_engagers: Some(15),
        late_events: 1,
        emitted_at: 1_764_000_360_000,
    });
    check(FunnelRollup {
        account_id: "acct".into(),
        campaign_id: "spring".into(),
        window: WindowKind::Day,
        window_start: 1_764_000_000_000,
        window_end: 1_764_086_400_000,
        revision: 7,
        triggered: 100,
        private_reply_sent: 95,
        dm_read: 66,
        engaged: 40,
        link_clicked: 25,
        converted: 5,
        conversion_value: 149.5,
        currency: Some("EUR".into()),
        median_trigger_to_reply_s: Some(2.0),
        median_reply_to_click_s: None,
        median_click_to_conversion_s: Some(600.0),
        emitted_at: 1_764_086_460_000,
        trigger_to_reply_sketch: vec![
            SketchBucket {
                bucket: ZERO_BUCKET,
                count: 3,
            },
            SketchBucket {
                bucket: 35,
                count: 92,
            },
        ],
        reply_to_click_sketch: vec![],
        click_to_conversion_sketch: vec![SketchBucket {
            bucket: 320,
            count: 5,
        }],
    });
    check(ConversationRollup {
        account_id: "acct".into(),
        content_id: None,
        window: WindowKind::Hour,
        window_start: 1_764_000_000_000,
        window_end: 1_764_003_600_000,
        revision: 9,
        inbound: 40,
        answered: 30,
        inbound_comments: 30,
        answered_comments: 22,
        inbound_story_replies: 4,
        inbound_dms: 6,
        response_rate: Some(0.75),
        median_response_s: Some(240.0),
        p90_response_s: Some(1800.0),
        median_first_response_s: None,
        root_comments: 24,
        reply_comments: 6,
        thread_depth: Some(0.25),
        reply_share: Some(0.2),
        emitted_at: 1_764_003_660_000,
        response_sketch: vec![
            SketchBucket {
                bucket: -12,
                count: 1,
            },
            SketchBucket {
                bucket: 274,
                count: 29,
            },
        ],
        first_response_sketch: vec![],
    });
    check(SpikeAlert {
        alert_id: "acct/post/1764000000000".into(),
        state: AlertState::Firing,
        account_id: "acct".into(),
        content_id: None,
        window_start: 1_764_000_000_000,
        window_end: 1_764_000_060_000,
        observed: 120,
        baseline_mean: 8.5,
        baseline_stddev: 3.1,
        z_score: 13.1,
        started_at: 1_764_000_000_000,
        ended_at: None,
        revision: 1,
        emitted_at: 1_764_000_060_000,
    });
    check(DeadLetter {
        stage: Stage::Ingest,
        reason: "invalid".into(),
        detail: "missing account_id".into(),
        source: Some("/v1/events".into()),
        source_partition: None,
        source_offset: None,
        account_id: None,
        payload: b"{\"kind\":\"COMMENT\"}\x00\xff".to_vec(),
        failed_at: 1_764_000_000_000,
    });
}

/// Writes `value` with another writer schema, through apache-avro, as a producer on that
/// version would.
fn write_with(schema_json: &str, value: &impl Serialize) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(schema_json).unwrap();
    let fingerprint = Codec::<EngagementEvent>::new()
        .unwrap()
        .register_writer_schema(schema_json)
        .unwrap();
    let v = apache_avro::to_value(value)
        .unwrap()
        .resolve(&schema)
        .unwrap();
    let mut out = vec![0xC3, 0x01];
    out.extend_from_slice(&fingerprint.0);
    out.extend(apache_avro::to_avro_datum(&schema, v).unwrap());
    out
}

#[derive(Serialize)]
struct V0Event {
    event_id: String,
    platform: Platform,
    kind: Kind,
    action: Action,
    account_id: String,
    content_id: Option<String>,
    actor_id: Option<String>,
    text: Option<String>,
    event_time: i64,
    event_time_source: EventTimeSource,
    received_at: i64,
}

#[test]
fn older_writer_schema_resolves_with_defaults() {
    let old = V0Event {
        event_id: "ev-old".into(),
        platform: Platform::Instagram,
        kind: Kind::Comment,
        action: Action::Add,
        account_id: "acct".into(),
        content_id: Some("post".into()),
        actor_id: None,
        text: Some("info please".into()),
        event_time: 1_764_000_000_000,
        event_time_source: EventTimeSource::PlatformDelivery,
        received_at: 1_764_000_000_500,
    };
    let bytes = write_with(V0, &old);

    let codec = Codec::<EngagementEvent>::new().unwrap();
    // Not registered yet: a clear error naming the fingerprint.
    let err = codec.decode(&bytes).unwrap_err();
    assert!(matches!(err, CodecError::UnknownSchema { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("unknown writer schema fingerprint "),
        "{err}"
    );

    codec.register_writer_schema(V0).unwrap();
    let mut expected = EngagementEvent::new(
        "ev-old",
        Platform::Instagram,
        Kind::Comment,
        Action::Add,
        "acct",
        1_764_000_000_000,
    );
    expected.content_id = Some("post".into());
    expected.text = Some("info please".into());
    expected.event_time_source = EventTimeSource::PlatformDelivery;
    expected.received_at = 1_764_000_000_500;
    assert_eq!(codec.decode(&bytes).unwrap(), expected);
    assert_eq!(codec.decode_generic(&bytes).unwrap(), expected);
}

#[derive(Serialize)]
struct Sentiment {
    score: f32,
    labels: Vec<String>,
}

#[derive(Serialize)]
struct V2Event {
    #[serde(flatten)]
    v1: EngagementEvent,
    language: Option<String>,
    sentiment: Option<Sentiment>,
}

#[test]
fn newer_writer_schema_resolves_by_skipping_unknown_fields() {
    let events = sample_events(11, 20, 3, 1_764_000_000_000);
    let codec = Codec::<EngagementEvent>::new().unwrap();
    codec.register_writer_schema(V2).unwrap();
    for (i, e) in events.into_iter().enumerate() {
        let newer = V2Event {
            v1: e.clone(),
            language: Some("en".into()),
            sentiment: (i % 2 == 0).then(|| Sentiment {
                score: 0.75,
                labels: vec!["positive".into(), "purchase-intent".into()],
            }),
        };
        let bytes = write_with(V2, &newer);
        assert_eq!(codec.decode(&bytes).unwrap(), e);
        assert_eq!(codec.decode_generic(&bytes).unwrap(), e);
    }
}

#[test]
fn hand_written_decoder_reports_where_a_body_is_bad() {
    let codec = EngagementEvent::codec();
    // A kind index past the last symbol, right after a 1-byte event id and the platform.
    let mut bad_enum = vec![0xC3, 0x01];
    bad_enum.extend_from_slice(&codec.fingerprint().0);
    bad_enum.extend_from_slice(&[2, b'e', 0, 99]);
    assert_eq!(
        codec.decode(&bad_enum).unwrap_err().to_string(),
        "invalid EngagementEvent body: kind index -50 out of range 0..19 at byte 4"
    );
}

#[test]
fn malformed_messages_give_precise_errors() {
    let codec = EngagementEvent::codec();
    let good = codec
        .encode(&sample_events(5, 1, 1, 1_764_000_000_000)[0])
        .unwrap();

    assert_eq!(
        codec.decode(&good[..4]).unwrap_err().to_string(),
        "message is 4 bytes, shorter than the 10-byte single-object header"
    );

    let mut bad_magic = good.clone();
    bad_magic[0] = b'{';
    assert_eq!(
        codec.decode(&bad_magic).unwrap_err().to_string(),
        "message does not start with the avro single-object marker c3 01 (got 7b 01)"
    );

    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0, 0]);
    assert_eq!(
        codec.decode(&trailing).unwrap_err().to_string(),
        "2 trailing bytes after a complete EngagementEvent"
    );
    assert!(matches!(
        codec.decode_generic(&trailing),
        Err(CodecError::Trailing { trailing: 2, .. })
    ));

    // An enum index past the last symbol.
    let mut bad_enum = vec![0xC3, 0x01];
    bad_enum.extend_from_slice(&codec.fingerprint().0);
    bad_enum.extend_from_slice(&[2, b'e', 99]);
    let err = codec.decode(&bad_enum).unwrap_err();
    assert!(matches!(err, CodecError::Body { .. }), "{err}");
    assert!(codec.decode_generic(&bad_enum).is_err());
}

#[test]
fn sample_events_are_about_120_bytes() {
    let codec = EngagementEvent::codec();
    let events = sample_events(1, 10_000, 1000, 1_764_000_000_000);
    let total: usize = events.iter().map(|e| codec.encode(e).unwrap().len()).sum();
    let mean = total / events.len();
    assert!((80..=200).contains(&mean), "mean encoded size {mean}");
}

#[test]
fn schemas_registered_on_the_shared_codecs_are_read_by_every_decoder() {
    // What a reader does with a schema found on the schema topic.
    let mut schema: serde_json::Value = serde_json::from_str(Rollup::SCHEMA).unwrap();
    schema["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "extra", "type": "long", "default": 0}));
    let json = schema.to_string();
    let fp = banter_model::codec::schema_fingerprint(&json).unwrap();
    assert!(!banter_model::codec::known_anywhere(fp));
    assert_eq!(
        banter_model::codec::register_schema(&json).unwrap(),
        Some(("Rollup", fp))
    );
    assert!(Rollup::codec().knows(fp));
    assert!(!SpikeAlert::codec().knows(fp));
    // A schema of another record is not taken for this one.
    let err = SpikeAlert::codec()
        .register_writer_schema(&json)
        .unwrap_err();
    assert!(err.to_string().contains("Rollup"), "{err}");
    // Records banter does not read are left alone.
    assert_eq!(
        banter_model::codec::register_schema(
            r#"{"type":"record","name":"Other","fields":[{"name":"a","type":"long"}]}"#
        )
        .unwrap(),
        None
    );
}

fn opt_double() -> impl Strategy<Value = Option<f64>> {
    prop::option::of(any::<f64>().prop_filter("NaN never equals itself", |v| !v.is_nan()))
}

fn window_kind() -> impl Strategy<Value = WindowKind> {
    prop::sample::select(WindowKind::ALL.to_vec())
}

fn rollup_strategy() -> impl Strategy<Value = Rollup> {
    let ids = (any::<String>(), opt_string(), window_kind());
    let times = (any::<i64>(), any::<i64>(), any::<i64>(), any::<i64>());
    let counts = prop::array::uniform10(any::<i64>());
    let rates = (
        opt_double(),
        opt_double(),
        opt_double(),
        prop::option::of(any::<i64>()),
    );
    (ids, times, counts, rates).prop_map(
        |(
            (account_id, content_id, window),
            (window_start, window_end, revision, emitted_at),
            c,
            (velocity, early_accel, time_to_n_minutes, unique_engagers),
        )| Rollup {
            account_id: account_id.into(),
            content_id: content_id.map(Into::into),
            window,
            window_start,
            window_end,
            revision,
            interactions: c[0],
            comments: c[1],
            live_comments: c[2],
            reactions: c[3],
            shares: c[4],
            story_replies: c[5],
            dms_in: c[6],
            mentions: c[7],
            brand_replies: c[8],
            velocity,
            early_accel,
            time_to_n_minutes,
            unique_engagers,
            late_events: c[9],
            emitted_at,
        },
    )
}

fn sketch() -> impl Strategy<Value = Vec<SketchBucket>> {
    prop::collection::vec(
        (any::<i32>(), any::<i64>()).prop_map(|(bucket, count)| SketchBucket { bucket, count }),
        0..70,
    )
}

fn conversation_strategy() -> impl Strategy<Value = ConversationRollup> {
    let ids = (any::<String>(), opt_string(), window_kind());
    let times = (any::<i64>(), any::<i64>(), any::<i64>(), any::<i64>());
    let counts = prop::array::uniform8(any::<i64>());
    let rates = (
        opt_double(),
        opt_double(),
        opt_double(),
        opt_double(),
        opt_double(),
        opt_double(),
    );
    (ids, times, counts, rates, sketch(), sketch()).prop_map(
        |(
            (account_id, content_id, window),
            (window_start, window_end, revision, emitted_at),
            c,
            (
                response_rate,
                median_response_s,
                p90_response_s,
                median_first_response_s,
                thread_depth,
                reply_share,
            ),
            response_sketch,
            first_response_sketch,
        )| ConversationRollup {
            account_id,
            content_id,
            window,
            window_start,
            window_end,
            revision,
            inbound: c[0],
            answered: c[1],
            inbound_comments: c[2],
            answered_comments: c[3],
            inbound_story_replies: c[4],
            inbound_dms: c[5],
            response_rate,
            median_response_s,
            p90_response_s,
            median_first_response_s,
            root_comments: c[6],
            reply_comments: c[7],
            thread_depth,
            reply_share,
            emitted_at,
            response_sketch,
            first_response_sketch,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The hand-written encoders of the stream's output rows write exactly what both library
    /// paths write, and the library decoders read it back.
    #[test]
    fn rollup_encoders_write_the_library_bytes(r in rollup_strategy(), c in conversation_strategy()) {
        let codec = Rollup::codec();
        let fast = codec.encode(&r).unwrap();
        prop_assert_eq!(&fast, &codec.encode_serde(&r).unwrap());
        prop_assert_eq!(&fast, &codec.encode_generic(&r).unwrap());
        prop_assert_eq!(codec.decode(&fast).unwrap(), r.clone());
        prop_assert_eq!(codec.decode_generic(&fast).unwrap(), r);
        let codec = ConversationRollup::codec();
        let fast = codec.encode(&c).unwrap();
        prop_assert_eq!(&fast, &codec.encode_serde(&c).unwrap());
        prop_assert_eq!(&fast, &codec.encode_generic(&c).unwrap());
        prop_assert_eq!(codec.decode(&fast).unwrap(), c.clone());
        prop_assert_eq!(codec.decode_generic(&fast).unwrap(), c);
    }

    /// The hand-written decoders accept exactly the bodies `serde_avro_fast` accepts, and read
    /// them the same; cut short, a row is an error on every path.
    #[test]
    fn rollup_decoders_accept_what_serde_accepts(
        body in prop::collection::vec(any::<u8>(), 0..200),
        r in rollup_strategy(),
        c in conversation_strategy(),
        cut in 0usize..2000,
    ) {
        fn check<T: AvroRecord + PartialEq + std::fmt::Debug>(body: &[u8]) -> Result<(), TestCaseError> {
            let codec = T::codec();
            let mut msg = vec![0xC3, 0x01];
            msg.extend_from_slice(&codec.fingerprint().0);
            msg.extend_from_slice(body);
            prop_assert_eq!(codec.decode(&msg).ok(), codec.decode_serde(&msg).ok());
            Ok(())
        }
        check::<Rollup>(&body)?;
        check::<ConversationRollup>(&body)?;
        // Valid rows with random bytes in the middle: near misses rather than noise.
        let mut near = ConversationRollup::codec().encode(&c).unwrap();
        let at = HEADER_LEN + cut % (near.len() - HEADER_LEN);
        near[at] = body.first().copied().unwrap_or(0x80);
        check::<ConversationRollup>(&near[HEADER_LEN..])?;
        let bytes = Rollup::codec().encode(&r).unwrap();
        prop_assert!(Rollup::codec().decode(&bytes[..HEADER_LEN + cut % (bytes.len() - HEADER_LEN)]).is_err());
        let bytes = ConversationRollup::codec().encode(&c).unwrap();
        prop_assert!(ConversationRollup::codec().decode(&bytes[..HEADER_LEN + cut % (bytes.len() - HEADER_LEN)]).is_err());
    }
}

#[test]
fn specialized_rollup_encoders_match_the_schemas() {
    use banter_model::codec::rollups_v1;
    assert_eq!(
        Rollup::codec().fingerprint().0,
        rollups_v1::ROLLUP_FINGERPRINT,
        "rollup.v1.avsc changed: update codec/rollups_v1.rs (ROLLUP_FINGERPRINT and field order)"
    );
    assert_eq!(
        ConversationRollup::codec().fingerprint().0,
        rollups_v1::CONVERSATION_FINGERPRINT,
        "conversation_rollup.v1.avsc changed: update codec/rollups_v1.rs (CONVERSATION_FINGERPRINT and field order)"
    );
    assert!(Rollup::codec().is_specialized());
    assert!(ConversationRollup::codec().is_specialized());
    // The window symbol's index on the wire is its position in WindowKind::ALL.
    for schema in [Rollup::SCHEMA, ConversationRollup::SCHEMA] {
        let schema: serde_json::Value = serde_json::from_str(schema).unwrap();
        let window = schema["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "window")
            .unwrap();
        let symbols: Vec<&str> = window["type"]["symbols"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let ours: Vec<&str> = WindowKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(symbols, ours);
    }
}

#[test]
fn a_sketch_in_blocks_with_byte_sizes_is_read_as_serde_reads_it() {
    let codec = ConversationRollup::codec();
    let mut c = codec
        .decode(&codec.encode(&conversation_example()).unwrap())
        .unwrap();
    c.response_sketch = vec![
        SketchBucket {
            bucket: 1,
            count: 1
        };
        2
    ];
    c.first_response_sketch = Vec::new();
    let bytes = codec.encode(&c).unwrap();
    // One block of 2: [count 2] [1 1] [1 1] [end] [end of the empty array].
    let tail = [0x04, 0x02, 0x02, 0x02, 0x02, 0x00, 0x00];
    assert!(bytes.ends_with(&tail));
    let head = &bytes[..bytes.len() - tail.len()];
    // The same items as two blocks, the first with a negative count and its size in bytes.
    let mut blocked = head.to_vec();
    blocked.extend_from_slice(&[0x01, 0x04, 0x02, 0x02, 0x02, 0x02, 0x02, 0x00, 0x00]);
    assert_eq!(codec.decode(&blocked).unwrap(), c);
    assert_eq!(codec.decode_serde(&blocked).unwrap(), c);
    // A count the bytes left cannot hold, and a bucket outside an Avro int.
    let mut huge = head.to_vec();
    huge.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f, 0x02, 0x02]);
    assert!(codec.decode(&huge).is_err());
    assert!(codec.decode_serde(&huge).is_err());
    let mut wide = head.to_vec();
    wide.extend_from_slice(&[0x02, 0x80, 0x80, 0x80, 0x80, 0x10, 0x02, 0x00, 0x00]);
    assert!(codec.decode(&wide).is_err());
    assert!(codec.decode_serde(&wide).is_err());
}

fn conversation_example() -> ConversationRollup {
    ConversationRollup {
        account_id: "acct-1".into(),
        content_id: Some("post-1".into()),
        window: WindowKind::Hour,
        window_start: 1_764_028_800_000,
        window_end: 1_764_032_400_000,
        revision: 7,
        inbound: 3,
        answered: 2,
        inbound_comments: 2,
        answered_comments: 1,
        inbound_story_replies: 1,
        inbound_dms: 0,
        response_rate: Some(2.0 / 3.0),
        median_response_s: Some(60.0),
        p90_response_s: Some(120.0),
        median_first_response_s: None,
        root_comments: 1,
        reply_comments: 1,
        thread_depth: Some(1.0),
        reply_share: Some(0.5),
        emitted_at: 1_764_032_400_000,
        response_sketch: Vec::new(),
        first_response_sketch: Vec::new(),
    }
}
