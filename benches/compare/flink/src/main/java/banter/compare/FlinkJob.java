package banter.compare;

import java.io.File;
import java.io.IOException;
import java.lang.management.ManagementFactory;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.common.eventtime.WatermarkGenerator;
import org.apache.flink.api.common.eventtime.WatermarkOutput;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.accumulators.LongCounter;
import org.apache.flink.api.common.functions.AggregateFunction;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.core.execution.CheckpointingMode;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.datastream.KeyedStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.streaming.api.functions.windowing.ProcessWindowFunction;
import org.apache.flink.streaming.api.windowing.assigners.SlidingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.assigners.TumblingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.windows.TimeWindow;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;

/**
 * A Flink job computing what `banter stream` computes for MINUTE and VELOCITY_5M rows, written
 * the way a Flink user would: event-time windows with a bounded out-of-orderness watermark and
 * allowed lateness, on a local MiniCluster at parallelism 1.
 *
 * <ul>
 *   <li>Watermark per Kafka partition (split) = highest event time seen, counted only up to the
 *       event's received_at, minus 60 s; Flink combines the partitions' watermarks by their
 *       minimum (banter and the Kafka Streams application keep one per partition), so windows
 *       close later here; the counts are the same.
 *   <li>Events too late for their minute (its end + 1 h at or below the watermark) are dropped
 *       before windowing, as banter dead-letters them; within the lateness a late event fires
 *       its windows again (EventTimeTrigger), as banter's corrections do.
 *   <li>Duplicates: keyed by event id per minute, and by event id alone for PLATFORM_DELIVERY
 *       (a redelivery may fall in another minute); the first delivery counts.
 *   <li>MINUTE: 1-minute tumbling windows; VELOCITY_5M: 5-minute windows sliding by a minute
 *       (each event is added to five windows: Flink's way, not banter's panes).
 *   <li>Exactly-once: checkpoints every second, a transactional Kafka sink (the output is
 *       visible to read_committed readers when a checkpoint completes).
 *   <li>The source is bounded by the topic's end at start: the job ends when the input is
 *       processed and the last checkpoint has committed the output, then prints its CPU time
 *       and peak RSS. With --live it is not bounded and runs until killed.
 * </ul>
 *
 * <p>Usage: FlinkJob BOOTSTRAP INPUT OUTPUT GROUP SCHEMA_DIR CHECKPOINT_DIR [--live]
 */
public final class FlinkJob {
  static final long MINUTE = 60_000L;
  static final long OUT_OF_ORDERNESS = 60_000L;
  static final long LATENESS = 3_600_000L;

  /** One decoded engagement event: what the windows need. */
  public static final class Event {
    public String dedup;
    public String account;
    public String content;
    public long time;
    public long supported;
    public long delta;
    public boolean platformDelivery;
    public boolean tooLate;

    public Event() {}
  }

  /** One event's contribution to one key (an account, or a post of it). */
  public static final class Delta {
    public String key;
    public long time;
    public long delta;

    public Delta() {}

    Delta(String key, long time, long delta) {
      this.key = key;
      this.time = time;
      this.delta = delta;
    }
  }

  /** One window's result. */
  public static final class Row {
    public String kind;
    public String key;
    public long start;
    public long end;
    public long interactions;

    public Row() {}
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 6 && !(args.length == 7 && args[6].equals("--live"))) {
      System.err.println(
          "usage: FlinkJob BOOTSTRAP INPUT OUTPUT GROUP SCHEMA_DIR CHECKPOINT_DIR [--live]");
      System.exit(2);
    }
    // Live: the source is not bounded by the topic's end; the job runs until killed.
    boolean live = args.length == 7;
    String bootstrap = args[0], input = args[1], output = args[2], group = args[3];
    String eventSchema = Files.readString(Path.of(args[4], "engagement_event.v1.avsc"));
    String rollupSchema = Files.readString(Path.of(args[4], "rollup.v1.avsc"));

    Configuration conf = new Configuration();
    // Checkpoints to files (the JobManager's memory takes at most 5 MB of state), and a failure
    // ends the job instead of restarting it: a benchmark must not hide one.
    conf.setString("execution.checkpointing.storage", "filesystem");
    conf.setString("execution.checkpointing.dir", Path.of(args[5]).toUri().toString());
    conf.setString("restart-strategy.type", "none");
    StreamExecutionEnvironment env = StreamExecutionEnvironment.createLocalEnvironment(1, conf);
    env.enableCheckpointing(1000, CheckpointingMode.EXACTLY_ONCE);

    var sourceBuilder =
        KafkaSource.<Event>builder()
            .setBootstrapServers(bootstrap)
            .setTopics(input)
            .setGroupId(group)
            .setStartingOffsets(OffsetsInitializer.earliest())
            .setProperty("isolation.level", "read_committed")
            .setDeserializer(new Events(eventSchema));
    if (!live) {
      sourceBuilder.setBounded(OffsetsInitializer.latest());
    }
    KafkaSource<Event> source = sourceBuilder.build();
    WatermarkStrategy<Event> watermarks =
        WatermarkStrategy.<Event>forGenerator(c -> new SupportedTime())
            .withTimestampAssigner((e, ts) -> e.time);
    DataStream<Delta> deltas =
        env.fromSource(source, watermarks, "events")
            .process(new DropTooLate())
            .keyBy(e -> e.dedup, Types.STRING)
            .process(new FirstDelivery());
    KeyedStream<Delta, String> byKey = deltas.keyBy(d -> d.key, Types.STRING);
    DataStream<Row> minutes =
        byKey
            .window(TumblingEventTimeWindows.of(Duration.ofMinutes(1)))
            .allowedLateness(Duration.ofMillis(LATENESS))
            .aggregate(new Sum(), new ToRow("MINUTE"));
    DataStream<Row> velocity =
        byKey
            .window(SlidingEventTimeWindows.of(Duration.ofMinutes(5), Duration.ofMinutes(1)))
            .allowedLateness(Duration.ofMillis(LATENESS))
            .aggregate(new Sum(), new ToRow("VELOCITY_5M"));

    KafkaSink<Row> sink =
        KafkaSink.<Row>builder()
            .setBootstrapServers(bootstrap)
            .setRecordSerializer(
                KafkaRecordSerializationSchema.<Row>builder()
                    .setTopic(output)
                    .setKeySerializationSchema(
                        (SerializationSchema<Row>) r ->
                            r.key.substring(0, r.key.indexOf('|')).getBytes())
                    .setValueSerializationSchema(new Rollups(rollupSchema))
                    .build())
            .setDeliveryGuarantee(DeliveryGuarantee.EXACTLY_ONCE)
            .setTransactionalIdPrefix(group)
            // The broker's transaction.max.timeout.ms is 15 minutes (Flink's default is 1 h).
            .setProperty("transaction.timeout.ms", "900000")
            .setProperty("linger.ms", "10")
            .setProperty("compression.type", "lz4")
            .build();
    minutes.union(velocity).sinkTo(sink);
    long tooLate = env.execute("banter-compare").<Long>getAccumulatorResult("too-late");

    var os = (com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean();
    long rssKb = 0;
    for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
      if (line.startsWith("VmHWM:")) {
        rssKb = Long.parseLong(line.replaceAll("[^0-9]", ""));
      }
    }
    System.out.printf(
        "finished cpu_s=%.2f rss_mb=%d too_late=%d%n",
        os.getProcessCpuTime() / 1e9, rssKb / 1024, tooLate);
  }

  /** Decodes single-object Avro events (the writer schema is found by its fingerprint). */
  static final class Events implements KafkaRecordDeserializationSchema<Event> {
    private final String schema;
    private transient BinaryMessageDecoder<GenericRecord> decoder;
    private transient GenericRecord reuse;

    Events(String schema) {
      this.schema = schema;
    }

    @Override
    public void open(DeserializationSchema.InitializationContext context) {
      decoder = new BinaryMessageDecoder<>(GenericData.get(), new Schema.Parser().parse(schema));
    }

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Event> out)
        throws IOException {
      GenericRecord r;
      try {
        r = decoder.decode(record.value(), reuse);
      } catch (IOException | RuntimeException bad) {
        return; // banter dead-letters it; the workload has none
      }
      reuse = r;
      Event e = new Event();
      e.time = (Long) r.get("event_time");
      e.supported = Math.min(e.time, (Long) r.get("received_at"));
      long minute = Math.floorDiv(e.time, MINUTE) * MINUTE;
      String id = r.get("event_id").toString();
      e.platformDelivery = "PLATFORM_DELIVERY".equals(r.get("event_time_source").toString());
      e.dedup = e.platformDelivery ? "d|" + id : "m|" + minute + "|" + id;
      e.account = r.get("account_id").toString();
      Object content = r.get("content_id");
      e.content = content == null ? null : content.toString();
      e.delta = delta(r);
      out.collect(e);
    }

    private static long delta(GenericRecord r) {
      if ((Boolean) r.get("is_brand_actor")) {
        return 0;
      }
      switch (r.get("kind").toString()) {
        case "COMMENT", "LIVE_COMMENT", "POST_REACTION", "SHARE", "STORY_REPLY", "DM_IN":
          break;
        default:
          return 0;
      }
      switch (r.get("action").toString()) {
        case "ADD", "UNHIDE":
          return 1;
        case "REMOVE", "HIDE":
          return -1;
        default:
          return 0;
      }
    }

    @Override
    public TypeInformation<Event> getProducedType() {
      return TypeInformation.of(Event.class);
    }
  }

  /**
   * Flink's watermark means "no event at or before it is still to come", banter's "windows
   * ending at or before it are closed": Flink's = banter's - 1.
   */
  static final class SupportedTime implements WatermarkGenerator<Event> {
    private long max = Long.MIN_VALUE + OUT_OF_ORDERNESS + 1;

    @Override
    public void onEvent(Event e, long timestamp, WatermarkOutput out) {
      max = Math.max(max, e.supported);
    }

    @Override
    public void onPeriodicEmit(WatermarkOutput out) {
      out.emitWatermark(new Watermark(max - OUT_OF_ORDERNESS - 1));
    }
  }

  /**
   * Drops an event too late for its minute, as banter dead-letters it. A delivery-timed one is
   * passed on marked, so that Meta's redelivery of it is known as a duplicate.
   */
  static final class DropTooLate extends ProcessFunction<Event, Event> {
    private final LongCounter dropped = new LongCounter();

    @Override
    public void open(OpenContext context) {
      getRuntimeContext().addAccumulator("too-late", dropped);
    }

    @Override
    public void processElement(Event e, Context ctx, Collector<Event> out) {
      long wm = ctx.timerService().currentWatermark();
      long minute = Math.floorDiv(e.time, MINUTE) * MINUTE;
      if (wm != Long.MIN_VALUE && minute + MINUTE + LATENESS <= wm + 1) {
        dropped.add(1);
        e.tooLate = true;
        if (!e.platformDelivery) {
          return;
        }
      }
      out.collect(e);
    }
  }

  /** Passes the first delivery of an event on, as a delta for its account and its post. */
  static final class FirstDelivery extends KeyedProcessFunction<String, Event, Delta> {
    private transient ValueState<Boolean> seen;

    @Override
    public void open(OpenContext context) {
      seen = getRuntimeContext().getState(new ValueStateDescriptor<>("seen", Types.BOOLEAN));
    }

    @Override
    public void processElement(Event e, Context ctx, Collector<Delta> out) throws IOException {
      if (seen.value() != null) {
        return;
      }
      seen.update(true);
      if (e.tooLate) {
        return;
      }
      out.collect(new Delta(e.account + "|", e.time, e.delta));
      if (e.content != null) {
        out.collect(new Delta(e.account + "|" + e.content, e.time, e.delta));
      }
    }
  }

  static final class Sum implements AggregateFunction<Delta, Long, Long> {
    @Override
    public Long createAccumulator() {
      return 0L;
    }

    @Override
    public Long add(Delta d, Long acc) {
      return acc + d.delta;
    }

    @Override
    public Long getResult(Long acc) {
      return acc;
    }

    @Override
    public Long merge(Long a, Long b) {
      return a + b;
    }
  }

  static final class ToRow extends ProcessWindowFunction<Long, Row, String, TimeWindow> {
    private final String kind;

    ToRow(String kind) {
      this.kind = kind;
    }

    @Override
    public void process(String key, Context ctx, Iterable<Long> sums, Collector<Row> out) {
      Row r = new Row();
      r.kind = kind;
      r.key = key;
      r.start = ctx.window().getStart();
      r.end = ctx.window().getEnd();
      r.interactions = sums.iterator().next();
      out.collect(r);
    }
  }

  /** Encodes a row as a single-object Avro Rollup, as banter writes them. */
  static final class Rollups implements SerializationSchema<Row> {
    private final String schema;
    private transient BinaryMessageEncoder<GenericRecord> encoder;
    private transient Schema rollup;
    private transient GenericData.EnumSymbol[] kinds;

    Rollups(String schema) {
      this.schema = schema;
    }

    @Override
    public void open(SerializationSchema.InitializationContext context) {
      rollup = new Schema.Parser().parse(schema);
      encoder = new BinaryMessageEncoder<>(GenericData.get(), rollup);
      Schema k = rollup.getField("window").schema();
      kinds =
          new GenericData.EnumSymbol[] {
            new GenericData.EnumSymbol(k, "MINUTE"), new GenericData.EnumSymbol(k, "VELOCITY_5M")
          };
    }

    @Override
    public byte[] serialize(Row row) {
      int bar = row.key.indexOf('|');
      GenericData.Record r = new GenericData.Record(rollup);
      r.put("account_id", row.key.substring(0, bar));
      r.put("content_id", bar + 1 == row.key.length() ? null : row.key.substring(bar + 1));
      boolean minute = row.kind.equals("MINUTE");
      r.put("window", kinds[minute ? 0 : 1]);
      r.put("window_start", row.start);
      r.put("window_end", row.end);
      r.put("revision", 0L);
      r.put("interactions", row.interactions);
      for (String f :
          new String[] {
            "comments", "live_comments", "reactions", "shares", "story_replies", "dms_in",
            "mentions", "brand_replies", "late_events"
          }) {
        r.put(f, 0L);
      }
      r.put("velocity", minute ? null : row.interactions / 5.0);
      r.put("emitted_at", row.end);
      try {
        ByteBuffer b = encoder.encode(r);
        byte[] bytes = new byte[b.remaining()];
        b.get(bytes);
        return bytes;
      } catch (IOException io) {
        throw new RuntimeException(io);
      }
    }
  }
}
