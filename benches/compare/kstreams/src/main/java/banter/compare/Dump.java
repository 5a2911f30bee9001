package banter.compare;

import java.io.PrintWriter;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;

/**
 * Reads a rollup topic from the beginning as a read_committed consumer up to its end and writes
 * the last value of every window (kind, account, content, start) as TSV:
 * kind, account_id, content_id ('' for the account), window_start_ms, interactions. Prints the
 * number of records read (the rows the application emitted, corrections included).
 *
 * <p>Usage: Dump BOOTSTRAP TOPIC OUT.tsv SCHEMA_DIR
 */
public final class Dump {
  public static void main(String[] args) throws Exception {
    BinaryMessageDecoder<GenericRecord> decoder = RollupTopic.decoder(args[3]);
    Properties p = new Properties();
    p.put("max.poll.records", "5000");
    Map<String, Long> last = new TreeMap<>();
    long records = 0;
    try (KafkaConsumer<byte[], byte[]> c = RollupTopic.fromBeginning(args[0], args[1], p)) {
      List<TopicPartition> parts = new ArrayList<>(c.assignment());
      Map<TopicPartition, Long> ends = c.endOffsets(parts);
      GenericRecord reuse = null;
      while (parts.stream().anyMatch(tp -> c.position(tp) < ends.get(tp))) {
        for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(500))) {
          GenericRecord row = decoder.decode(r.value(), reuse);
          reuse = row;
          records++;
          last.put(RollupTopic.windowKey(row), (Long) row.get("interactions"));
        }
      }
    }
    try (PrintWriter w = new PrintWriter(args[2], "UTF-8")) {
      for (var e : last.entrySet()) {
        w.println(e.getKey() + "\t" + e.getValue());
      }
    }
    System.out.println(records + " records, " + last.size() + " windows");
  }
}
