package banter.compare;

import java.io.PrintWriter;
import java.time.Duration;
import java.util.HashSet;
import java.util.Properties;
import java.util.Set;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;

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
    BinaryMessageDecoder<GenericRecord> decoder = RollupTopic.decoder(args[3]);
    Properties p = new Properties();
    // A fetch returns as soon as there is a record, or after 50 ms: the follower adds little.
    p.put("fetch.max.wait.ms", "50");
    // A minute's windows arrive at once: take them in few polls.
    p.put("max.poll.records", "10000");
    Set<String> seen = new HashSet<>();
    try (KafkaConsumer<byte[], byte[]> c = RollupTopic.fromBeginning(args[0], args[1], p);
        PrintWriter out = new PrintWriter(args[2], "UTF-8")) {
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
          String key = RollupTopic.windowKey(row);
          if (seen.add(key)) {
            out.println(received + "\t" + key + "\t" + row.get("window_end"));
          }
        }
        out.flush();
      }
    }
  }
}
