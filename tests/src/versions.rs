//! Records as a newer banter version writes them: its schema adds a field (with a default,
//! as compatible evolution requires), and its records carry a value in it.

use banter_model::AvroRecord;
use serde::Serialize;

/// The field version 2 adds in these tests.
pub const V2_FIELD: &str = "added_in_v2";

/// `T`'s current schema with [`V2_FIELD`] added (a string, default ""), as JSON.
pub fn v2_schema<T: AvroRecord>() -> String {
    let mut schema: serde_json::Value = serde_json::from_str(T::SCHEMA).unwrap();
    schema["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": V2_FIELD, "type": "string", "default": ""}));
    schema.to_string()
}

/// `value` written by version 2 (single-object encoding, [`v2_schema`]'s fingerprint), with
/// `"from v2"` in the added field: what an upgraded producer puts on the topic.
pub fn write_v2<T: AvroRecord + Serialize>(value: &T) -> Vec<u8> {
    let json = v2_schema::<T>();
    let schema = apache_avro::Schema::parse_str(&json).unwrap();
    let mut v = apache_avro::to_value(value).unwrap();
    if let apache_avro::types::Value::Record(fields) = &mut v {
        fields.push((
            V2_FIELD.to_owned(),
            apache_avro::types::Value::String("from v2".into()),
        ));
    }
    let v = v.resolve(&schema).unwrap();
    let mut out = banter_model::codec::SINGLE_OBJECT_MAGIC.to_vec();
    out.extend_from_slice(&banter_model::codec::schema_fingerprint(&json).unwrap().0);
    out.extend(apache_avro::to_avro_datum(&schema, v).unwrap());
    out
}
