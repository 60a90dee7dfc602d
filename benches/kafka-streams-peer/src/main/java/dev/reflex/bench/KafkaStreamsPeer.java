package dev.reflex.bench;

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;

/**
 * The Kafka Streams peer of {@code reflex-bench --peer kafka-streams}: the router's benchmark job
 * written as a Kafka Streams application.
 *
 * <p>For every record of the input topic: read the {@code ce_type} header, decode the value
 * (Confluent wire format: byte 0 = magic 0, bytes 1..5 = the big-endian schema id, then the Avro
 * datum, decoded with the writer schema fetched once per id from the registry's
 * {@code GET /schemas/ids/{id}}), evaluate the benchmark rule
 * {@code ce.type == "io.k8s.pod.crashloop" && payload.restart_count >= 3 && !payload.rollout_in_progress}
 * and forward the original key, value and headers to the output topic when it holds; drop the
 * record otherwise (the router's {@code unmatched = "drop"}). A value that is not a valid frame
 * goes, unchanged, to the dead-letter topic. At-least-once ({@code processing.guarantee}).
 *
 * <p>Throughput settings follow Kafka Streams' and the Kafka client tuning guides' advice; each is
 * printed at start-up and can be overridden with {@code --config key=value} (see README.md).
 */
public final class KafkaStreamsPeer {
    static final String CE_TYPE = "ce_type";
    static final byte[] CRASHLOOP = "io.k8s.pod.crashloop".getBytes(StandardCharsets.UTF_8);

    private KafkaStreamsPeer() {}

    static void usage() {
        System.err.println(String.join("\n",
            "usage: java -jar reflex-kafka-streams-peer.jar --bootstrap HOST:PORT --registry URL",
            "         --input TOPIC --output TOPIC --application-id ID [--dlq TOPIC]",
            "         [--state-dir DIR] [--config key=value]...",
            "  --config   any Kafka Streams, consumer (consumer.*) or producer (producer.*) setting,",
            "             over the tuned defaults printed at start-up"));
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> args = new LinkedHashMap<>();
        List<String> overrides = new ArrayList<>();
        for (int i = 0; i < argv.length; i++) {
            String a = argv[i];
            if (!a.startsWith("--") || i + 1 >= argv.length) {
                usage();
                System.exit(2);
            }
            String v = argv[++i];
            if (a.equals("--config")) {
                overrides.add(v);
            } else {
                args.put(a.substring(2), v);
            }
        }
        for (String required : List.of("bootstrap", "registry", "input", "output", "application-id")) {
            if (!args.containsKey(required)) {
                System.err.println("missing --" + required);
                usage();
                System.exit(2);
            }
        }
        String input = args.get("input");
        String output = args.get("output");
        String dlq = args.getOrDefault("dlq", input + ".dlq");

        Properties props = tunedSettings(args.get("bootstrap"), args.get("application-id"));
        if (args.containsKey("state-dir")) {
            props.put(StreamsConfig.STATE_DIR_CONFIG, args.get("state-dir"));
        }
        for (String o : overrides) {
            int eq = o.indexOf('=');
            if (eq <= 0) {
                System.err.println("--config " + o + ": use key=value");
                System.exit(2);
            }
            props.put(o.substring(0, eq), o.substring(eq + 1));
        }
        System.err.println("kafka-streams-peer settings: " + new java.util.TreeMap<>(props));

        Schemas schemas = new Schemas(args.get("registry"));
        Topology topology = new Topology();
        topology.addSource("input", new ByteArrayDeserializer(), new ByteArrayDeserializer(), input)
            .addProcessor("route", () -> new Route(schemas), "input")
            .addSink("output", output, new ByteArraySerializer(), new ByteArraySerializer(), "route")
            .addSink("dlq", dlq, new ByteArraySerializer(), new ByteArraySerializer(), "route");

        KafkaStreams streams = new KafkaStreams(topology, props);
        CountDownLatch done = new CountDownLatch(1);
        int[] exitCode = {0};
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("kafka-streams-peer: stopping on " + e);
            exitCode[0] = 1;
            done.countDown();
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.setStateListener((now, before) -> {
            System.err.println("kafka-streams-peer: state " + before + " -> " + now);
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                done.countDown();
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(10));
            done.countDown();
        }));
        streams.start();
        done.await();
        streams.close(Duration.ofSeconds(10));
        System.exit(exitCode[0]);
    }

    /**
     * The throughput settings. Kafka Streams' own advice (StreamsConfig docs, "Optimizing Kafka
     * Streams"): one stream thread per core, a long commit interval under at-least-once; the client
     * tuning guides' advice for producers and consumers that move as much as they can: larger
     * batches and a linger, larger fetches. Durability stays what the router has: acks=all with
     * idempotence, no compression (the broker then does the same work for both).
     */
    static Properties tunedSettings(String bootstrap, String applicationId) {
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, applicationId);
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
        // One thread per core of the 2-core machine; 6 partitions = 6 tasks spread over them.
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.toString(Runtime.getRuntime().availableProcessors()));
        // Streams' at-least-once default (30 s): fewer commits, more throughput; the router
        // commits every second but its commits are asynchronous and off the hot path.
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, "30000");
        // Stateless topology: no record cache is used; 0 says so.
        p.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, "0");
        // Records buffered per partition before the consumer pauses it (default 1000).
        p.put(StreamsConfig.BUFFERED_RECORDS_PER_PARTITION_CONFIG, "1000");
        // Producer: batch.size 100-200 kB and linger.ms 10-100 (tuning guides; Streams' own
        // default linger is 100 ms for the same reason), acks=all + idempotence as the router.
        p.put(StreamsConfig.producerPrefix(ProducerConfig.BATCH_SIZE_CONFIG), "131072");
        p.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), "20");
        p.put(StreamsConfig.producerPrefix(ProducerConfig.ACKS_CONFIG), "all");
        p.put(StreamsConfig.producerPrefix(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG), "true");
        p.put(StreamsConfig.producerPrefix(ProducerConfig.COMPRESSION_TYPE_CONFIG), "none");
        // Consumer: larger fetches (fetch.min.bytes ~100 kB, tuning guides) with a short wait so
        // a quiet input does not stall, and more records per poll than Streams' 1000.
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.FETCH_MIN_BYTES_CONFIG), "65536");
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.FETCH_MAX_WAIT_MS_CONFIG), "50");
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.MAX_POLL_RECORDS_CONFIG), "2000");
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        return p;
    }

    /** Writer schemas by id, fetched once each from the registry. */
    static final class Schemas {
        private final String registry;
        private final HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
        private final ObjectMapper json = new ObjectMapper();
        private final Map<Integer, Schema> byId = new ConcurrentHashMap<>();

        Schemas(String registry) {
            this.registry = registry.replaceAll("/+$", "");
        }

        Schema get(int id) {
            return byId.computeIfAbsent(id, this::fetch);
        }

        private Schema fetch(int id) {
            try {
                HttpRequest request = HttpRequest.newBuilder(URI.create(registry + "/schemas/ids/" + id))
                    .header("Accept", "application/vnd.schemaregistry.v1+json")
                    .timeout(Duration.ofSeconds(10))
                    .GET()
                    .build();
                HttpResponse<String> response = http.send(request, HttpResponse.BodyHandlers.ofString());
                if (response.statusCode() != 200) {
                    throw new IllegalStateException("GET /schemas/ids/" + id + ": HTTP "
                        + response.statusCode() + " " + response.body());
                }
                JsonNode body = json.readTree(response.body());
                return new Schema.Parser().parse(body.get("schema").asText());
            } catch (IOException e) {
                throw new IllegalStateException("GET /schemas/ids/" + id + " from " + registry + ": " + e, e);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted fetching schema " + id, e);
            }
        }
    }

    /** The router's job for one task: decode, evaluate the rule, forward the original record. */
    static final class Route implements Processor<byte[], byte[], byte[], byte[]> {
        private final Schemas schemas;
        private ProcessorContext<byte[], byte[]> context;
        // Reused per task (a task runs on one thread): the decoder, a reader per schema id and
        // the record the datum is decoded into.
        private BinaryDecoder decoder;
        private final Map<Integer, GenericDatumReader<GenericRecord>> readers = new java.util.HashMap<>();
        private GenericRecord reuse;

        Route(Schemas schemas) {
            this.schemas = schemas;
        }

        @Override
        public void init(ProcessorContext<byte[], byte[]> context) {
            this.context = context;
        }

        @Override
        public void process(Record<byte[], byte[]> record) {
            // ce.type first: the rule's && short-circuits before the payload is read.
            Header type = record.headers().lastHeader(CE_TYPE);
            if (type == null || !java.util.Arrays.equals(type.value(), CRASHLOOP)) {
                return;
            }
            byte[] value = record.value();
            if (value == null || value.length < 5 || value[0] != 0) {
                context.forward(record, "dlq");
                return;
            }
            int id = ((value[1] & 0xff) << 24) | ((value[2] & 0xff) << 16) | ((value[3] & 0xff) << 8) | (value[4] & 0xff);
            GenericRecord payload;
            try {
                GenericDatumReader<GenericRecord> reader =
                    readers.computeIfAbsent(id, i -> new GenericDatumReader<>(schemas.get(i)));
                decoder = DecoderFactory.get().binaryDecoder(value, 5, value.length - 5, decoder);
                payload = reader.read(reuse, decoder);
                reuse = payload;
            } catch (IOException | RuntimeException e) {
                if (e instanceof IllegalStateException && e.getMessage() != null
                        && e.getMessage().startsWith("GET /schemas/ids/")) {
                    throw (IllegalStateException) e;
                }
                context.forward(record, "dlq");
                return;
            }
            Object restarts = payload.get("restart_count");
            Object rollout = payload.get("rollout_in_progress");
            if (restarts instanceof Integer r && r >= 3 && rollout instanceof Boolean b && !b) {
                // The original key, value and headers; the producer's default partitioner
                // hashes the key with murmur2, as the router's murmur2_random does.
                context.forward(record, "output");
            }
        }
    }
}
