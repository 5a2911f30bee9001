"""Cross-checks banter's Avro single-object encoding against fastavro, an independent
implementation.

  fastavro_check.py read SCHEMA.avsc CASES.jsonl
      each line {"hex": <message banter wrote>, "record": <the record as JSON>}: checks the
      header (C3 01 + fastavro's CRC-64-AVRO fingerprint of the canonical form), decodes the
      body with fastavro and compares it with the record.
  fastavro_check.py write SCHEMA.avsc RECORDS.jsonl
      encodes each JSON record with fastavro as a single-object message; prints hex lines.

Exit status 0 when everything agrees; otherwise the first disagreement on stderr, status 1.
"""
import io
import json
import sys
from datetime import datetime, timezone

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def load(path):
    with open(path) as f:
        schema = parse_schema(json.load(f))
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    return schema, fp


def plain(value):
    """fastavro returns datetimes for timestamp-millis; banter's JSON has epoch ms."""
    if isinstance(value, datetime):
        delta = value - EPOCH
        return (delta.days * 86_400_000) + (delta.seconds * 1000) + delta.microseconds // 1000
    if isinstance(value, bytes):
        return list(value)
    return value


def read(schema_path, cases_path):
    schema, fp = load(schema_path)
    n = 0
    with open(cases_path) as f:
        for line_no, line in enumerate(f, 1):
            case = json.loads(line)
            msg = bytes.fromhex(case["hex"])
            if msg[:2] != b"\xc3\x01":
                sys.exit(f"line {line_no}: no single-object marker: {msg[:2].hex()}")
            if msg[2:10] != fp:
                sys.exit(f"line {line_no}: fingerprint {msg[2:10].hex()} != fastavro's {fp.hex()}")
            body = io.BytesIO(msg[10:])
            got = fastavro.schemaless_reader(body, schema, schema)
            if body.read():
                sys.exit(f"line {line_no}: trailing bytes after the record")
            got = {k: plain(v) for k, v in got.items()}
            want = case["record"]
            if got != want:
                diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
                sys.exit(f"line {line_no}: fastavro read {diff} (fastavro, banter)")
            n += 1
    print(f"fastavro {fastavro.__version__} read {n} banter messages, fingerprint {fp.hex()}")


def write(schema_path, records_path):
    schema, fp = load(schema_path)
    with open(records_path) as f:
        for line in f:
            record = json.loads(line)
            out = io.BytesIO()
            out.write(b"\xc3\x01" + fp)
            fastavro.schemaless_writer(out, schema, record)
            print(out.getvalue().hex())


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("read", "write"):
        sys.exit(__doc__)
    {"read": read, "write": write}[sys.argv[1]](sys.argv[2], sys.argv[3])
