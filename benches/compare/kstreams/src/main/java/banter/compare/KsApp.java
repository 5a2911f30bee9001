package banter.compare;

import java.io.File;
import java.nio.ByteBuffer;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.ListOffsetsOptions;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.IsolationLevel;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * A Kafka Streams application computing what `banter stream` computes for MINUTE and
 * VELOCITY_5M rows, with DESIGN.md's semantics ("Time, lateness and exactly-once"):
 *
 * <ul>
 *   <li>watermark per partition = highest event time seen (counted only up to the event's
 *       received_at) minus 60 s; a minute is emitted when the watermark passes its end;
 *   <li>an event within the allowed lateness (1 h) of an emitted minute corrects it: the minute
 *       row and the closed velocity windows containing it are emitted again; later events are
 *       dropped (counted);
 *   <li>duplicate event ids are counted once per minute, and PLATFORM_DELIVERY ids for 36 h
 *       whatever minute they fall in;
 *   <li>interactions = COMMENT, LIVE_COMMENT, POST_REACTION, SHARE, STORY_REPLY, DM_IN from
 *       non-brand actors, ADD/UNHIDE +1, REMOVE/HIDE -1, EDIT 0;
 *   <li>once the input is read to its end, a partition quiet for a second moves its watermark
 *       on with the wall clock (banter's idle timeout), so the last minutes close.
 * </ul>
 *
 * It counts interactions only (banter also counts per kind and estimates distinct engagers),
 * so it does less work per event than banter. Processor API with one sub-topology: the input
 * is keyed by account and a post belongs to its account, so no repartition topic is needed
 * (the DSL's groupBy would add one). In-memory stores with changelogs, exactly_once_v2.
 *
 * <p>Usage: KsApp BOOTSTRAP INPUT OUTPUT APPLICATION_ID STATE_DIR SCHEMA_DIR
 */
public final class KsApp {
  static final long MINUTE = 60_000L;
  static final long OUT_OF_ORDERNESS = 60_000L;
  static final long LATENESS = 3_600_000L;
  static final long REDELIVERY = 36 * 3_600_000L;
  /** banter's `stream.idle_timeout_ms`, as run.sh sets it (-Dbanter.idle.ms). */
  static final long IDLE_MS = Long.getLong("banter.idle.ms", 1_000L);

  /** Watermarks of this instance's tasks: a quiet partition moves on to the busiest one's. */
  static final Map<Integer, Long> WATERMARKS = new ConcurrentHashMap<>();

  /**
   * Whether the committed offsets have reached the input's end. banter moves a quiet
   * partition's watermark on only once it has read its partition to the end; without that, a
   * partition whose next fetch is merely slow would be moved to the busiest one's watermark and
   * its own events dropped as too late.
   */
  static volatile boolean caughtUp;

  public static void main(String[] args) throws Exception {
    if (args.length != 6) {
      System.err.println("usage: KsApp BOOTSTRAP INPUT OUTPUT APPLICATION_ID STATE_DIR SCHEMA_DIR");
      System.exit(2);
    }
    String bootstrap = args[0], input = args[1], output = args[2], appId = args[3];
    Schema event = new Schema.Parser().parse(new File(args[5], "engagement_event.v1.avsc"));
    Schema rollup = new Schema.Parser().parse(new File(args[5], "rollup.v1.avsc"));

    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
    // banter's stream.max_batch_ms: one transaction per 250 ms at most.
    p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 250);
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
    p.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0);
    p.put(StreamsConfig.STATE_DIR_CONFIG, args[4]);
    p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
    // banter's producer settings (linger 10 ms, lz4).
    p.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), 10);
    p.put(StreamsConfig.producerPrefix(ProducerConfig.COMPRESSION_TYPE_CONFIG), "lz4");

    Topology t = new Topology();
    t.addSource("events", new StringDeserializer(), new ByteArrayDeserializer(), input);
    t.addProcessor("windows", () -> new Windows(event, rollup), "events");
    for (String store : List.of("panes", "seen", "delivered", "meta")) {
      t.addStateStore(
          Stores.keyValueStoreBuilder(
              Stores.inMemoryKeyValueStore(store), Serdes.String(), Serdes.Long()),
          "windows");
    }
    t.addSink("rollups", output, new StringSerializer(), new ByteArraySerializer(), "windows");

    KafkaStreams streams = new KafkaStreams(t, p);
    Runtime.getRuntime().addShutdownHook(new Thread(() -> streams.close(Duration.ofSeconds(30))));
    streams.setUncaughtExceptionHandler(
        e -> {
          e.printStackTrace();
          return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
              .StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
    streams.start();
    watchLag(bootstrap, input, appId);
  }

  /**
   * Prints "caught-up" once the application's committed offsets reach the input's end (the last
   * stable offset: what a read_committed consumer can read), checking every 200 ms.
   */
  static void watchLag(String bootstrap, String input, String appId) throws Exception {
    Properties ap = new Properties();
    ap.put("bootstrap.servers", bootstrap);
    try (Admin admin = Admin.create(ap)) {
      int partitions =
          admin.describeTopics(List.of(input)).allTopicNames().get().get(input).partitions().size();
      Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
      for (int i = 0; i < partitions; i++) {
        latest.put(new TopicPartition(input, i), OffsetSpec.latest());
      }
      ListOffsetsOptions committedOnly = new ListOffsetsOptions(IsolationLevel.READ_COMMITTED);
      boolean said = false;
      while (true) {
        Thread.sleep(200);
        var ends = admin.listOffsets(latest, committedOnly).all().get();
        Map<TopicPartition, OffsetAndMetadata> done =
            admin.listConsumerGroupOffsets(appId).partitionsToOffsetAndMetadata().get();
        boolean caughtUp = true;
        for (var e : ends.entrySet()) {
          OffsetAndMetadata c = done.get(e.getKey());
          if (e.getValue().offset() > 0 && (c == null || c.offset() < e.getValue().offset())) {
            caughtUp = false;
          }
        }
        KsApp.caughtUp = caughtUp;
        if (caughtUp && !said) {
          System.out.println("caught-up");
          System.out.flush();
          said = true;
        }
      }
    }
  }

  static String minuteKey(long minute) {
    return String.format("%013d", minute);
  }

  /** The windowing of one partition (task). */
  static final class Windows implements Processor<String, byte[], String, byte[]> {
    private final BinaryMessageDecoder<GenericRecord> decoder;
    private final BinaryMessageEncoder<GenericRecord> encoder;
    private final Schema rollupSchema;
    private final GenericData.EnumSymbol minuteKind;
    private final GenericData.EnumSymbol velocityKind;
    private final int fId, fKind, fAction, fAccount, fContent, fBrand, fTime, fSource, fReceived;
    private GenericRecord reuse;
    private ProcessorContext<String, byte[]> ctx;
    private KeyValueStore<String, Long> panes, seen, delivered, meta;
    private long lastArrival = System.nanoTime();
    private int partition = -1;
    private long offset;

    Windows(Schema event, Schema rollup) {
      decoder = new BinaryMessageDecoder<>(GenericData.get(), event);
      encoder = new BinaryMessageEncoder<>(GenericData.get(), rollup);
      rollupSchema = rollup;
      Schema kinds = rollup.getField("window").schema();
      minuteKind = new GenericData.EnumSymbol(kinds, "MINUTE");
      velocityKind = new GenericData.EnumSymbol(kinds, "VELOCITY_5M");
      fId = event.getField("event_id").pos();
      fKind = event.getField("kind").pos();
      fAction = event.getField("action").pos();
      fAccount = event.getField("account_id").pos();
      fContent = event.getField("content_id").pos();
      fBrand = event.getField("is_brand_actor").pos();
      fTime = event.getField("event_time").pos();
      fSource = event.getField("event_time_source").pos();
      fReceived = event.getField("received_at").pos();
    }

    @Override
    public void init(ProcessorContext<String, byte[]> context) {
      ctx = context;
      panes = context.getStateStore("panes");
      seen = context.getStateStore("seen");
      delivered = context.getStateStore("delivered");
      meta = context.getStateStore("meta");
      partition = context.taskId().partition();
      context.schedule(Duration.ofSeconds(1), PunctuationType.WALL_CLOCK_TIME, now -> idle());
    }

    @Override
    public void process(Record<String, byte[]> record) {
      lastArrival = System.nanoTime();
      offset = ctx.recordMetadata().map(m -> m.offset()).orElse(-1L);
      GenericRecord e;
      try {
        e = decoder.decode(record.value(), reuse);
      } catch (Exception bad) {
        return; // banter dead-letters it; the workload has none
      }
      reuse = e;
      long time = (Long) e.get(fTime);
      long minute = Math.floorDiv(time, MINUTE) * MINUTE;
      Long wm = meta.get("wm");
      String id = e.get(fId).toString();
      boolean platformDelivery = "PLATFORM_DELIVERY".equals(e.get(fSource).toString());
      if (wm != null && minute + MINUTE + LATENESS <= wm) {
        // Too late: banter dead-letters it. A delivery-timed one is remembered, so that Meta's
        // redelivery of it is known as a duplicate.
        if (platformDelivery && delivered.get(id) == null) {
          delivered.put(id, minute);
        }
        return;
      }
      if (platformDelivery) {
        if (delivered.get(id) != null) {
          return;
        }
        delivered.put(id, minute);
      }
      String seenKey = minuteKey(minute) + "|" + id;
      if (seen.get(seenKey) != null) {
        return;
      }
      seen.put(seenKey, 1L);
      long delta = delta(e);
      String account = e.get(fAccount).toString();
      Object c = e.get(fContent);
      List<String> keys = new ArrayList<>(2);
      keys.add(account + "|");
      if (c != null) {
        keys.add(account + "|" + c);
      }
      for (String k : keys) {
        String pk = minuteKey(minute) + "|" + k;
        Long n = panes.get(pk);
        panes.put(pk, (n == null ? 0 : n) + delta);
      }
      Long closedBelow = meta.get("closed");
      if (closedBelow != null && minute < closedBelow) {
        // A correction: the minute and every closed velocity window containing it, again.
        for (String k : keys) {
          emitMinute(k, minute, wm);
          for (long end = minute + MINUTE; end <= minute + 5 * MINUTE; end += MINUTE) {
            if (end <= closedBelow) {
              emitVelocity(k, end, wm);
            }
          }
        }
      }
      long supported = Math.min(time, (Long) e.get(fReceived));
      Long met = meta.get("met");
      if (met == null || supported > met) {
        meta.put("met", supported);
        advance(supported - OUT_OF_ORDERNESS);
      }
    }

    private long delta(GenericRecord e) {
      if ((Boolean) e.get(fBrand)) {
        return 0;
      }
      switch (e.get(fKind).toString()) {
        case "COMMENT":
        case "LIVE_COMMENT":
        case "POST_REACTION":
        case "SHARE":
        case "STORY_REPLY":
        case "DM_IN":
          break;
        default:
          return 0;
      }
      switch (e.get(fAction).toString()) {
        case "ADD":
        case "UNHIDE":
          return 1;
        case "REMOVE":
        case "HIDE":
          return -1;
        default:
          return 0;
      }
    }

    /** A quiet partition's watermark moves on with the wall clock, or to the busiest one's. */
    private void idle() {
      long quiet = (System.nanoTime() - lastArrival) / 1_000_000L;
      Long met = meta.get("met");
      if (!caughtUp || quiet < IDLE_MS || met == null) {
        return;
      }
      long busiest = WATERMARKS.values().stream().mapToLong(Long::longValue).max().orElse(0);
      offset = -1;
      advance(Math.max(met + quiet, busiest));
    }

    private void advance(long wm) {
      Long old = meta.get("wm");
      if (old != null && wm <= old) {
        return;
      }
      meta.put("wm", wm);
      WATERMARKS.put(partition, wm);
      long closedTo = Math.floorDiv(wm, MINUTE) * MINUTE;
      Long closedBelow = meta.get("closed");
      long from;
      if (closedBelow == null) {
        try (KeyValueIterator<String, Long> it = panes.all()) {
          if (!it.hasNext()) {
            return;
          }
          from = Long.parseLong(it.next().key.substring(0, 13));
        }
      } else {
        from = closedBelow;
      }
      if (from >= closedTo) {
        return;
      }
      // Only minutes with a pane within the last five matter: skip empty stretches.
      for (long m = from; m < closedTo; m += MINUTE) {
        Map<String, Long> velocity = new HashMap<>();
        try (KeyValueIterator<String, Long> it =
            panes.range(minuteKey(m - 4 * MINUTE), minuteKey(m) + "|\uffff")) {
          while (it.hasNext()) {
            KeyValue<String, Long> kv = it.next();
            String k = kv.key.substring(14);
            velocity.merge(k, kv.value, Long::sum);
            if (kv.key.startsWith(minuteKey(m))) {
              emit(minuteKind, k, m, m + MINUTE, kv.value, null, wm);
            }
          }
        }
        for (var v : velocity.entrySet()) {
          emit(velocityKind, v.getKey(), m - 4 * MINUTE, m + MINUTE, v.getValue(), v.getValue() / 5.0, wm);
        }
        if (velocity.isEmpty()) {
          // Jump to the next minute with a pane (an idle jump of hours costs nothing).
          try (KeyValueIterator<String, Long> it = panes.range(minuteKey(m + MINUTE), "\uffff")) {
            if (!it.hasNext()) {
              break;
            }
            long next = Long.parseLong(it.next().key.substring(0, 13));
            m = Math.max(m, next - MINUTE) ;
          }
        }
      }
      meta.put("closed", closedTo);
      prune(wm);
    }

    /** Forgets what can no longer change or be needed for a correction. */
    private void prune(long wm) {
      long paneCut = wm - LATENESS - 6 * MINUTE;
      deleteBelow(panes, minuteKey(Math.floorDiv(paneCut, MINUTE) * MINUTE));
      long seenCut = wm - LATENESS - MINUTE;
      deleteBelow(seen, minuteKey(Math.floorDiv(seenCut, MINUTE) * MINUTE));
      long hour = Math.floorDiv(wm, 3_600_000L);
      Long pruned = meta.get("delivered-pruned");
      if (pruned == null || pruned < hour) {
        meta.put("delivered-pruned", hour);
        List<String> old = new ArrayList<>();
        try (KeyValueIterator<String, Long> it = delivered.all()) {
          while (it.hasNext()) {
            KeyValue<String, Long> kv = it.next();
            if (kv.value < wm - REDELIVERY) {
              old.add(kv.key);
            }
          }
        }
        old.forEach(delivered::delete);
      }
    }

    private static void deleteBelow(KeyValueStore<String, Long> store, String to) {
      List<String> old = new ArrayList<>();
      try (KeyValueIterator<String, Long> it = store.range("", to)) {
        while (it.hasNext()) {
          String k = it.next().key;
          if (k.compareTo(to) < 0) {
            old.add(k);
          }
        }
      }
      old.forEach(store::delete);
    }

    private void emitMinute(String k, long minute, Long wm) {
      Long n = panes.get(minuteKey(minute) + "|" + k);
      if (n != null) {
        emit(minuteKind, k, minute, minute + MINUTE, n, null, wm == null ? 0 : wm);
      }
    }

    private void emitVelocity(String k, long end, Long wm) {
      long sum = 0;
      boolean any = false;
      for (long m = end - 5 * MINUTE; m < end; m += MINUTE) {
        Long n = panes.get(minuteKey(m) + "|" + k);
        if (n != null) {
          sum += n;
          any = true;
        }
      }
      if (any) {
        emit(velocityKind, k, end - 5 * MINUTE, end, sum, sum / 5.0, wm == null ? 0 : wm);
      }
    }

    private void emit(
        GenericData.EnumSymbol kind, String k, long start, long end, long n, Double velocity, long wm) {
      int bar = k.indexOf('|');
      String account = k.substring(0, bar);
      String content = bar + 1 == k.length() ? null : k.substring(bar + 1);
      GenericData.Record r = new GenericData.Record(rollupSchema);
      r.put("account_id", account);
      r.put("content_id", content);
      r.put("window", kind);
      r.put("window_start", start);
      r.put("window_end", end);
      r.put("revision", offset);
      r.put("interactions", n);
      for (String f :
          List.of("comments", "live_comments", "reactions", "shares", "story_replies", "dms_in",
              "mentions", "brand_replies", "late_events")) {
        r.put(f, 0L);
      }
      r.put("velocity", velocity);
      r.put("emitted_at", wm);
      ByteBuffer b;
      try {
        b = encoder.encode(r);
      } catch (java.io.IOException io) {
        throw new RuntimeException(io);
      }
      byte[] bytes = new byte[b.remaining()];
      b.get(bytes);
      ctx.forward(new Record<>(account, bytes, Math.max(wm, 0)));
    }
  }
}
