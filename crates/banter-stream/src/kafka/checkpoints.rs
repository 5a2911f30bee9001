//! The checkpoint topic (`kafka.topics.checkpoints`, compacted): per input partition its
//! latest [`Checkpoint`] under `<input>/<partition>`, and beside it the changelog of every
//! operator's store under `<input>/<partition>/<store>/<entry key>` (the entry key is binary:
//! a table tag and a typed key). Written in the transaction of the outputs they belong to;
//! read back by [`CheckpointReader`] when partitions are assigned.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::changelog::Store;
use crate::pipeline::Saved;
use crate::window::Checkpoint;

/// A checkpoint's format alone (0: written before the field existed).
#[derive(serde::Deserialize)]
struct Format {
    #[serde(default)]
    format: u32,
}

/// A checkpoint record's value read, its format first: one this version does not read is
/// refused as such, even where its fields would not parse here.
fn parse_checkpoint(v: &[u8]) -> Result<Checkpoint, String> {
    let format: Format = serde_json::from_slice(v).map_err(|e| e.to_string())?;
    Checkpoint::readable(format.format)?;
    serde_json::from_slice(v).map_err(|e| e.to_string())
}

/// The key of an input partition's checkpoint.
pub(super) fn checkpoint_key(input: &str, partition: i32) -> String {
    format!("{input}/{partition}")
}

/// The key of a changelog entry of `store` for an input partition, written into `out` (cleared
/// first, so the buffer is reused) from the partition's [`checkpoint_key`].
pub(super) fn store_key_into(out: &mut Vec<u8>, checkpoint_key: &str, store: Store, key: &[u8]) {
    out.clear();
    out.extend_from_slice(checkpoint_key.as_bytes());
    out.push(b'/');
    out.extend_from_slice(store.name().as_bytes());
    out.push(b'/');
    out.extend_from_slice(key);
}

/// What a key of the checkpoint topic is.
#[derive(Debug, PartialEq, Eq)]
enum Key<'a> {
    /// An input partition's checkpoint.
    Checkpoint(i32),
    /// A changelog entry of an input partition's store.
    Entry(i32, Store, &'a [u8]),
}

/// Reads a key written for input topic `input` (topic names hold no `/`); None for another
/// topic's keys and for stores this version does not know.
fn parse_key<'a>(input: &str, key: &'a [u8]) -> Option<Key<'a>> {
    let rest = key.strip_prefix(input.as_bytes())?.strip_prefix(b"/")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let partition: i32 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = &rest[digits..];
    if rest.is_empty() {
        return Some(Key::Checkpoint(partition));
    }
    let rest = rest.strip_prefix(b"/")?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    let store = Store::from_name(std::str::from_utf8(&rest[..slash]).ok()?)?;
    Some(Key::Entry(partition, store, &rest[slash + 1..]))
}

/// The partition of the checkpoint topic that holds an input partition's records.
pub(super) fn checkpoint_partition(input_partition: i32, checkpoint_partitions: usize) -> i32 {
    let n = i32::try_from(checkpoint_partitions)
        .unwrap_or(i32::MAX)
        .max(1);
    input_partition.rem_euclid(n)
}

/// Reads the latest committed checkpoint and changelogs of input partitions.
pub(super) struct CheckpointReader {
    pub consumer: BaseConsumer<banter_runtime::kafka::KafkaContext>,
    pub topic: String,
    pub input: String,
    pub timeout: Duration,
}

impl CheckpointReader {
    /// The partitions of the checkpoint topic; an error when it does not exist.
    pub fn partitions(&self) -> Result<usize, String> {
        let md = self
            .consumer
            .fetch_metadata(Some(&self.topic), self.timeout)
            .map_err(|e| format!("metadata of {}: {e}", self.topic))?;
        let n = md
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        if n == 0 {
            return Err(format!(
                "checkpoint topic {} does not exist (run `banter topics`)",
                self.topic
            ));
        }
        Ok(n)
    }

    /// What the topic holds for `partitions` of the input, read to its end.
    pub fn read(&self, partitions: &[i32]) -> Result<HashMap<i32, Saved>, String> {
        let deadline = Instant::now() + self.timeout;
        let n = self.partitions()?;
        let mut tpl = TopicPartitionList::new();
        let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
        for &p in partitions {
            let cp = checkpoint_partition(p, n);
            if pending.contains_key(&cp) {
                continue;
            }
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, cp, self.timeout)
                .map_err(|e| format!("watermarks of {}/{cp}: {e}", self.topic))?;
            if high > low {
                tpl.add_partition_offset(&self.topic, cp, Offset::Beginning)
                    .map_err(|e| e.to_string())?;
                pending.insert(cp, high);
            }
        }
        let mut found: HashMap<i32, Saved> = HashMap::new();
        if pending.is_empty() {
            return Ok(found);
        }
        self.consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let result = self.read_assigned(partitions, &mut pending, &mut found, deadline);
        let _ = self.consumer.unassign();
        result.map(|()| found)
    }

    fn read_assigned(
        &self,
        partitions: &[i32],
        pending: &mut BTreeMap<i32, i64>,
        found: &mut HashMap<i32, Saved>,
        deadline: Instant,
    ) -> Result<(), String> {
        while !pending.is_empty() {
            if Instant::now() > deadline {
                return Err(format!(
                    "checkpoints of partitions {:?} not read within {:?}",
                    pending.keys().collect::<Vec<_>>(),
                    self.timeout
                ));
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let key = m.key().and_then(|k| parse_key(&self.input, k));
                    match key {
                        Some(Key::Entry(p, store, k)) if partitions.contains(&p) => {
                            let entries = &mut found.entry(p).or_default().entries;
                            match m.payload() {
                                Some(v) => entries.insert((store, k.to_vec()), v.to_vec()),
                                None => entries.remove(&(store, k.to_vec())),
                            };
                        }
                        Some(Key::Checkpoint(p)) if partitions.contains(&p) => {
                            if let Some(v) = m.payload() {
                                let at =
                                    || format!("{}/{}@{}", self.topic, m.partition(), m.offset());
                                let cp = parse_checkpoint(v)
                                    .map_err(|e| format!("checkpoint at {}: {e}", at()))?;
                                found.entry(p).or_default().checkpoint = Some(cp);
                            }
                        }
                        _ => {} // another input's, or a store this version does not know
                    }
                    if pending
                        .get(&m.partition())
                        .is_some_and(|h| m.offset() + 1 >= *h)
                    {
                        pending.remove(&m.partition());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    pending.remove(&p);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "reading checkpoints"),
                None => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A later format is refused for its format, not for fields it no longer has; an earlier
    /// one likewise; formats 2 and 3 parse.
    #[test]
    fn a_checkpoint_is_refused_for_its_format_before_its_fields_are_read() {
        let later = parse_checkpoint(br#"{"format":4,"offsets":{"next":5}}"#).unwrap_err();
        assert!(
            later.starts_with("format 4 was written by a later banter"),
            "{later}"
        );
        let earlier = parse_checkpoint(br#"{"next_offset":5}"#).unwrap_err();
        assert!(
            earlier.starts_with("format 0 was written by an earlier banter"),
            "{earlier}"
        );
        for f in [2, 3] {
            let cp = parse_checkpoint(
                format!(r#"{{"format":{f},"next_offset":5,"restore":null,"idle":[],"watermark":null,"max_event_time":null}}"#)
                    .as_bytes(),
            )
            .unwrap();
            assert_eq!((cp.format, cp.next_offset), (f, 5));
        }
        assert!(parse_checkpoint(b"{").is_err());
    }

    #[test]
    fn keys_of_the_checkpoint_topic_read_back_whatever_the_entry_key_holds() {
        let input = "banter.events.v1";
        assert_eq!(
            parse_key(input, checkpoint_key(input, 12).as_bytes()),
            Some(Key::Checkpoint(12))
        );
        // The bytes the reader expects (and earlier versions wrote), written into a reused
        // buffer as the transaction does.
        let mut k = b"left over".to_vec();
        store_key_into(&mut k, &checkpoint_key(input, 3), Store::Funnels, b"\x01k");
        assert_eq!(k, b"banter.events.v1/3/funnels/\x01k");
        for entry in [&b""[..], b"/", b"x\x1f/y", b"\xff\x00"] {
            store_key_into(&mut k, &checkpoint_key(input, 3), Store::Funnels, entry);
            assert_eq!(
                parse_key(input, &k),
                Some(Key::Entry(3, Store::Funnels, entry))
            );
        }
        // Another input topic whose name starts alike, an unknown store, no partition.
        assert_eq!(parse_key(input, b"banter.events.v10/1"), None);
        assert_eq!(parse_key(input, b"banter.events.v1/1/post/x"), None);
        assert_eq!(parse_key(input, b"banter.events.v1/"), None);
        assert_eq!(checkpoint_partition(7, 3), 1);
        assert_eq!(checkpoint_partition(7, 0), 0);
    }
}
