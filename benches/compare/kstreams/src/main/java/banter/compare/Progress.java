package banter.compare;

import java.io.PrintWriter;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.ListOffsetsOptions;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.IsolationLevel;
import org.apache.kafka.common.TopicPartition;

/**
 * Samples a consumer group's progress through a topic every 500 ms until killed: one line per
 * sample, "seconds committed end" (seconds since start, the group's committed offsets summed
 * over the partitions, the topic's last stable offsets summed). The same for every engine:
 * banter and Kafka Streams commit offsets in their transactions, Flink on checkpoints.
 *
 * <p>Usage: Progress BOOTSTRAP TOPIC GROUP OUT
 */
public final class Progress {
  public static void main(String[] args) throws Exception {
    Properties p = new Properties();
    p.put("bootstrap.servers", args[0]);
    long start = System.nanoTime();
    try (Admin admin = Admin.create(p);
        PrintWriter out = new PrintWriter(args[3], "UTF-8")) {
      int partitions =
          admin.describeTopics(List.of(args[1])).allTopicNames().get().get(args[1]).partitions().size();
      Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
      for (int i = 0; i < partitions; i++) {
        latest.put(new TopicPartition(args[1], i), OffsetSpec.latest());
      }
      ListOffsetsOptions committedOnly = new ListOffsetsOptions(IsolationLevel.READ_COMMITTED);
      while (true) {
        long end = 0;
        for (var e : admin.listOffsets(latest, committedOnly).all().get().values()) {
          end += e.offset();
        }
        long done = 0;
        for (Map.Entry<TopicPartition, OffsetAndMetadata> e :
            admin.listConsumerGroupOffsets(args[2]).partitionsToOffsetAndMetadata().get().entrySet()) {
          if (e.getKey().topic().equals(args[1]) && e.getValue() != null) {
            done += e.getValue().offset();
          }
        }
        out.printf("%.2f %d %d%n", (System.nanoTime() - start) / 1e9, done, end);
        out.flush();
        Thread.sleep(500);
      }
    }
  }
}
