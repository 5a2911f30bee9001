package banter.compare;

import java.io.File;
import java.io.PrintWriter;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Follows a rollup topic live, as a read_committed consumer from the beginning, until killed,
 * and writes when each window first became visible there: one TSV line per window at its
 * first record, "received_ms kind account_id content_id window_start_ms window_end_ms"
 * (received_ms: the wall clock when the consumer got it, so after the producer's transaction
 * committed; content_id '' for the account), for MINUTE and VELOCITY_5M windows. Later records
 * of a window (corrections) are not written. Records of other schemas are skipped.
 *
 * <p>Usage: Visible BOOTSTRAP TOPIC OUT SCHEMA_DIR
 */
public final class Visible {
  public static void main(String[] args) throws Exception {
    Schema rollup = new Schema.Parser().parse(new File(args[3], "rollup.v1.avsc"));
    BinaryMessageDecoder<GenericRecord> decoder =
        new BinaryMessageDecoder<>(GenericData.get(), rollup);
    Properties p = new Properties();
    p.put("bootstrap.servers", args[0]);
    p.put("isolation.level", "read_committed");
    p.put("enable.auto.commit", "false");
    // A fetch returns as soon as there is a record, or after 50 ms: the follower adds little.
    p.put("fetch.max.wait.ms", "50");
    // A minute's windows arrive at once: take them in few polls.
    p.put("max.poll.records", "10000");
    Set<String> seen = new HashSet<>();
    try (KafkaConsumer<byte[], byte[]> c =
            new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer());
        PrintWriter out = new PrintWriter(args[2], "UTF-8")) {
      List<TopicPartition> parts = new ArrayList<>();
      c.partitionsFor(args[1]).forEach(i -> parts.add(new TopicPartition(args[1], i.partition())));
      c.assign(parts);
      c.seekToBeginning(parts);
      GenericRecord reuse = null;
      while (true) {
        var records = c.poll(Duration.ofMillis(100));
        long received = System.currentTimeMillis();
        for (ConsumerRecord<byte[], byte[]> r : records) {
          GenericRecord row;
          try {
            row = decoder.decode(r.value(), reuse);
          } catch (RuntimeException | java.io.IOException e) {
            continue; // another record type on the topic (or no value)
          }
          reuse = row;
          String window = row.get("window").toString();
          if (!window.equals("MINUTE") && !window.equals("VELOCITY_5M")) {
            continue;
          }
          Object content = row.get("content_id");
          String key =
              window
                  + "\t"
                  + row.get("account_id")
                  + "\t"
                  + (content == null ? "" : content.toString())
                  + "\t"
                  + row.get("window_start");
          if (seen.add(key)) {
            out.println(received + "\t" + key + "\t" + row.get("window_end"));
          }
        }
        out.flush();
      }
    }
  }
}
