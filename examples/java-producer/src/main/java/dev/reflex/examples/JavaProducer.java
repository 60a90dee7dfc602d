package dev.reflex.examples;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.SecureRandom;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.Future;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.common.utils.Utils;

/**
 * A Java producer service publishing pod events (avro/k8s_pod_event.avsc) to Reflex the way a
 * JVM service without Confluent's serializers would: the schema registered over the registry's
 * REST API, each record Avro-encoded with {@link GenericDatumWriter} and framed by hand in
 * Confluent wire format (magic byte 0, the schema id as 4 bytes big-endian, the Avro binary
 * datum), CloudEvents headers and a W3C traceparent, sent with kafka-clients' default
 * partitioner (the key as UTF-8 bytes, no explicit partition), acks=all, idempotence on.
 *
 * <p>Prints one JSON line per record to stdout, in send order: its ce_id, key, the partition and
 * offset from the broker's {@link RecordMetadata}, the partition {@code
 * Utils.toPositive(Utils.murmur2(key)) % partitions} names, the schema id and the value as hex.
 * Exits non-zero when anything fails.
 *
 * <p>Usage: see README.md, or run with {@code --help}.
 */
public final class JavaProducer {
    private static final String USAGE = String.join("\n",
            "usage: java -jar reflex-java-producer.jar --bootstrap HOST:PORT --topic TOPIC --schema FILE.avsc",
            "         (--registry URL [--subject SUBJECT] | --schema-id ID)",
            "         [--count N] [--keys K1,K2,...] [--source URI] [--type CE_TYPE] [--id-prefix P]",
            "  --registry   Confluent-compatible schema registry: registers the schema under SUBJECT",
            "               (default TOPIC-value) and uses the id it answers",
            "  --schema-id  use this id instead of registering",
            "  --count      events to send (default 10), event i keyed by KEYS[i % |KEYS|]",
            "  --keys       comma-separated keys (default java-pod-0..java-pod-7); each is the pod name",
            "  --source     ce_source (default java/service); --type ce_type (default io.k8s.pod.crashloop)",
            "  --id-prefix  ce_id is PREFIX-i (default java)");

    private static final SecureRandom RANDOM = new SecureRandom();

    public static void main(String[] argv) throws Exception {
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
        Map<String, String> args = parseArgs(argv);
        if (args == null) {
            System.err.println(USAGE);
            System.exit(2);
        }
        String bootstrap = required(args, "bootstrap");
        String topic = required(args, "topic");
        Schema schema = new Schema.Parser().parse(Files.readString(Path.of(required(args, "schema"))));
        int count = Integer.parseInt(args.getOrDefault("count", "10"));
        List<String> keys = new ArrayList<>();
        if (args.containsKey("keys")) {
            for (String key : args.get("keys").split(",", -1)) {
                keys.add(key);
            }
        } else {
            for (int i = 0; i < 8; i++) {
                keys.add("java-pod-" + i);
            }
        }
        String source = args.getOrDefault("source", "java/service");
        String type = args.getOrDefault("type", "io.k8s.pod.crashloop");
        String idPrefix = args.getOrDefault("id-prefix", "java");

        int schemaId;
        if (args.containsKey("schema-id")) {
            schemaId = Integer.parseInt(args.get("schema-id"));
        } else {
            String subject = args.getOrDefault("subject", topic + "-value");
            schemaId = register(required(args, "registry"), subject, schema.toString());
        }

        Properties config = new Properties();
        config.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        config.put(ProducerConfig.CLIENT_ID_CONFIG, "reflex-java-producer");
        config.put(ProducerConfig.ACKS_CONFIG, "all");
        config.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        config.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        config.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        config.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "30000");
        config.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "30000");
        config.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        config.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        // No partitioner.class and no explicit partition: the default partitioner picks
        // toPositive(murmur2(key bytes)) % partitions for every keyed record.

        GenericDatumWriter<GenericRecord> writer = new GenericDatumWriter<>(schema);
        List<String> ids = new ArrayList<>(count);
        List<String> recordKeys = new ArrayList<>(count);
        List<byte[]> values = new ArrayList<>(count);
        List<Future<RecordMetadata>> sends = new ArrayList<>(count);
        int partitions;
        try (KafkaProducer<String, byte[]> producer = new KafkaProducer<>(config)) {
            partitions = producer.partitionsFor(topic).size();
            for (int i = 0; i < count; i++) {
                String key = keys.get(i % keys.size());
                String id = idPrefix + "-" + i;
                byte[] value = frame(schemaId, encode(writer, podEvent(schema, key, i)));
                RecordHeaders headers = new RecordHeaders();
                header(headers, "ce_specversion", "1.0");
                header(headers, "ce_id", id);
                header(headers, "ce_source", source);
                header(headers, "ce_type", type);
                header(headers, "ce_time", Instant.now().toString());
                header(headers, "ce_subject", "pods/" + key);
                header(headers, "content-type", "application/avro");
                header(headers, "traceparent", "00-" + hex(randomBytes(16)) + "-" + hex(randomBytes(8)) + "-01");
                sends.add(producer.send(new ProducerRecord<>(topic, null, key, value, headers)));
                ids.add(id);
                recordKeys.add(key);
                values.add(value);
            }
            producer.flush();
            for (int i = 0; i < count; i++) {
                RecordMetadata metadata = sends.get(i).get();
                byte[] keyBytes = recordKeys.get(i).getBytes(StandardCharsets.UTF_8);
                int murmur2 = Utils.toPositive(Utils.murmur2(keyBytes)) % partitions;
                System.out.println("{\"ce_id\":" + json(ids.get(i))
                        + ",\"key\":" + json(recordKeys.get(i))
                        + ",\"partition\":" + metadata.partition()
                        + ",\"offset\":" + metadata.offset()
                        + ",\"murmur2_partition\":" + murmur2
                        + ",\"partitions\":" + partitions
                        + ",\"schema_id\":" + schemaId
                        + ",\"value_hex\":\"" + hex(values.get(i)) + "\"}");
            }
        }
        System.out.flush();
    }

    /** A pod event for `pod`, the i-th this producer sends. */
    static GenericRecord podEvent(Schema schema, String pod, int i) {
        GenericRecord event = new GenericData.Record(schema);
        event.put("cluster", "prod-java");
        event.put("namespace", "shop");
        event.put("pod", pod);
        event.put("reason", "CrashLoopBackOff");
        event.put("restart_count", 3 + i % 5);
        event.put("seq", (long) i);
        event.put("rollout_in_progress", false);
        Map<String, String> labels = new HashMap<>();
        labels.put("lang", "java");
        event.put("labels", labels);
        return event;
    }

    /** The Avro binary encoding of one datum (no container, no schema). */
    static byte[] encode(GenericDatumWriter<GenericRecord> writer, GenericRecord datum) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        BinaryEncoder encoder = EncoderFactory.get().binaryEncoder(out, null);
        writer.write(datum, encoder);
        encoder.flush();
        return out.toByteArray();
    }

    /** Confluent wire format: magic byte 0, the schema id (4 bytes, big-endian), the datum. */
    static byte[] frame(int schemaId, byte[] datum) {
        return ByteBuffer.allocate(5 + datum.length).put((byte) 0).putInt(schemaId).put(datum).array();
    }

    /** Registers `schema` under `subject` (POST /subjects/{subject}/versions); returns its id. */
    static int register(String registry, String subject, String schema) throws IOException, InterruptedException {
        String url = registry.replaceAll("/+$", "") + "/subjects/"
                + URLEncoder.encode(subject, StandardCharsets.UTF_8).replace("+", "%20") + "/versions";
        HttpRequest request = HttpRequest.newBuilder(URI.create(url))
                .timeout(Duration.ofSeconds(10))
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .header("Accept", "application/vnd.schemaregistry.v1+json")
                .POST(HttpRequest.BodyPublishers.ofString("{\"schema\":" + json(schema) + "}"))
                .build();
        HttpResponse<String> response = HttpClient.newBuilder()
                .connectTimeout(Duration.ofSeconds(5))
                .build()
                .send(request, HttpResponse.BodyHandlers.ofString());
        Matcher id = Pattern.compile("\"id\"\\s*:\\s*(\\d+)").matcher(response.body());
        if (response.statusCode() != 200 || !id.find()) {
            throw new IOException("registering " + subject + " at " + url + ": HTTP "
                    + response.statusCode() + " " + response.body());
        }
        return Integer.parseInt(id.group(1));
    }

    private static void header(RecordHeaders headers, String key, String value) {
        headers.add(key, value.getBytes(StandardCharsets.UTF_8));
    }

    private static byte[] randomBytes(int n) {
        byte[] bytes = new byte[n];
        RANDOM.nextBytes(bytes);
        return bytes;
    }

    private static String hex(byte[] bytes) {
        StringBuilder out = new StringBuilder(bytes.length * 2);
        for (byte b : bytes) {
            out.append(Character.forDigit((b >> 4) & 0xf, 16)).append(Character.forDigit(b & 0xf, 16));
        }
        return out.toString();
    }

    /** `s` as a JSON string literal. */
    static String json(String s) {
        StringBuilder out = new StringBuilder(s.length() + 2).append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        return out.append('"').toString();
    }

    /** `--name value` pairs; null on `--help` or anything malformed. */
    private static Map<String, String> parseArgs(String[] argv) {
        Map<String, String> args = new HashMap<>();
        for (int i = 0; i < argv.length; i++) {
            if (!argv[i].startsWith("--") || argv[i].equals("--help") || i + 1 == argv.length) {
                return null;
            }
            args.put(argv[i].substring(2), argv[++i]);
        }
        return args;
    }

    private static String required(Map<String, String> args, String name) {
        String value = args.get(name);
        if (value == null) {
            System.err.println("--" + name + " is required\n" + USAGE);
            System.exit(2);
        }
        return value;
    }
}
