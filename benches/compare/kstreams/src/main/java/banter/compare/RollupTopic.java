package banter.compare;

import java.io.File;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/** What Dump and Visible share: reading a rollup topic from its beginning, and a window's key. */
final class RollupTopic {
  private RollupTopic() {}

  /** A decoder of single-object Avro `Rollup` records, the schema read from SCHEMA_DIR. */
  static BinaryMessageDecoder<GenericRecord> decoder(String schemaDir) throws IOException {
    Schema rollup = new Schema.Parser().parse(new File(schemaDir, "rollup.v1.avsc"));
    return new BinaryMessageDecoder<>(GenericData.get(), rollup);
  }

  /**
   * A read_committed consumer (no group, nothing committed) assigned every partition of
   * `topic` from its beginning; `extra` settings on top.
   */
  static KafkaConsumer<byte[], byte[]> fromBeginning(
      String bootstrap, String topic, Properties extra) {
    Properties p = new Properties();
    p.put("bootstrap.servers", bootstrap);
    p.put("isolation.level", "read_committed");
    p.put("enable.auto.commit", "false");
    p.putAll(extra);
    KafkaConsumer<byte[], byte[]> c =
        new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer());
    List<TopicPartition> parts = new ArrayList<>();
    c.partitionsFor(topic).forEach(i -> parts.add(new TopicPartition(topic, i.partition())));
    c.assign(parts);
    c.seekToBeginning(parts);
    return c;
  }

  /** A window's key as TSV: kind, account_id, content_id ('' for the account), window_start. */
  static String windowKey(GenericRecord row) {
    Object content = row.get("content_id");
    return row.get("window")
        + "\t"
        + row.get("account_id")
        + "\t"
        + (content == null ? "" : content.toString())
        + "\t"
        + row.get("window_start");
  }
}
