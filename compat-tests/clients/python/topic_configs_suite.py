"""Kafka topic configs through confluent-kafka's AdminClient and producer:
many configs created and described back, invalid values refused with
INVALID_CONFIG, ignored configs accepted and described, the CreateTime
window refusing records with INVALID_TIMESTAMP, KIP-467 per-record errors
on a compacted topic, min.compaction.lag.ms respected, and dynamic broker
configs (read-only ones refused). The broker runs with a short
log.cleaner.backoff.ms."""

import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
)

from common import check, expect_equal, topic_name, wait_for

bootstrap = sys.argv[1]
admin = AdminClient({"bootstrap.servers": bootstrap})
HOUR = 3_600_000


def create(name, configs, partitions=1):
    fut = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1, config=configs)])
    return fut[name]


def describe(name):
    res = ConfigResource(ConfigResource.Type.TOPIC, name)
    return admin.describe_configs([res])[res].result(30)


def src(entry):
    """A ConfigEntry's source as an int, whether the binding gives an enum or not."""
    return int(getattr(entry.source, "value", entry.source))


def error_code(fut):
    try:
        fut.result(30)
    except KafkaException as e:
        return e.args[0].code()
    return None


# 1. Many of Kafka's topic configs at once, described back as set.
many = {
    "cleanup.policy": "compact,delete",
    "compression.type": "lz4",
    "compression.lz4.level": "12",
    "delete.retention.ms": "900",
    "file.delete.delay.ms": "1000",
    "flush.messages": "100000",
    "flush.ms": "12345678",
    "index.interval.bytes": "8192",
    "max.compaction.lag.ms": "3600000",
    "max.message.bytes": "2000000",
    "message.timestamp.before.max.ms": "86400000",
    "message.timestamp.after.max.ms": "3600000",
    "message.timestamp.type": "CreateTime",
    "min.cleanable.dirty.ratio": "0.25",
    "min.compaction.lag.ms": "1000",
    "min.insync.replicas": "1",
    "retention.bytes": "1073741824",
    "retention.ms": "86400000",
    "segment.bytes": "1048576",
    "segment.index.bytes": "65536",
    "segment.jitter.ms": "100",
    "segment.ms": "3600000",
    "unclean.leader.election.enable": "false",
    "leader.replication.throttled.replicas": "*",
}
t1 = topic_name("many-configs")
create(t1, many).result(30)
desc = describe(t1)
for k, v in many.items():
    check(k in desc, f"{k} is described")
    expect_equal(f"{k} value", desc[k].value, v)
    expect_equal(f"{k} source", src(desc[k]), ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    check(not desc[k].is_read_only, f"{k} is not read-only")
# Configs left alone come from the broker's defaults, with Kafka's values.
for k, v in {
    "compression.gzip.level": "-1",
    "compression.zstd.level": "3",
    "local.retention.ms": "-2",
    "message.downconversion.enable": "true",
    "preallocate": "false",
    "remote.storage.enable": "false",
    "message.timestamp.difference.max.ms": "9223372036854775807",
}.items():
    check(k in desc, f"default {k} is described")
    expect_equal(f"default {k}", desc[k].value, v)
    check(src(desc[k]) != ConfigSource.DYNAMIC_TOPIC_CONFIG.value, f"{k} is a default")
print("many configs: ok")

# 2. What Kafka refuses is INVALID_CONFIG (40): wrong type, out of range, unknown value or name.
for bad in [
    {"retention.ms": "-5"},
    {"segment.ms": "soon"},
    {"compression.type": "brotli"},
    {"min.cleanable.dirty.ratio": "1.5"},
    {"compression.zstd.level": "99"},
    {"preallocate": "sometimes"},
    {"message.format.version": "9.9"},
    {"dummy.doesntexist": "1"},
]:
    code = error_code(create(topic_name("bad-config"), bad))
    expect_equal(f"error for {bad}", code, KafkaError.INVALID_CONFIG)
res = ConfigResource(ConfigResource.Type.TOPIC, t1, incremental_configs=[
    ConfigEntry("max.compaction.lag.ms", "0", incremental_operation=AlterConfigOpType.SET)])
expect_equal("alter to an out-of-range value", error_code(admin.incremental_alter_configs([res])[res]),
             KafkaError.INVALID_CONFIG)
expect_equal("value unchanged", describe(t1)["max.compaction.lag.ms"].value, "3600000")
print("invalid configs: ok")

# 3. Configs without meaning here are accepted, stored and described.
t2 = topic_name("ignored")
ignored = {
    "message.format.version": "0.10.0.0",
    "message.downconversion.enable": "false",
    "preallocate": "true",
    "remote.storage.enable": "true",
    "local.retention.ms": "60000",
    "follower.replication.throttled.replicas": "0:0",
}
create(t2, ignored).result(30)
desc = describe(t2)
for k, v in ignored.items():
    expect_equal(f"ignored {k}", desc[k].value, v)
# 0092's change of message.format.version mid-stream, through AlterConfigs.
res = ConfigResource(ConfigResource.Type.TOPIC, t2, set_config={"message.format.version": "0.11.0"})
admin.alter_configs([res])[res].result(30)
expect_equal("altered format version", describe(t2)["message.format.version"].value, "0.11.0")
p = Producer({"bootstrap.servers": bootstrap})
p.produce(t2, key=b"k", value=b"still v2")
check(p.flush(30) == 0, "produce to a topic with an old message.format.version")
print("ignored configs: ok")

# 4. The CreateTime window: records outside it fail with INVALID_TIMESTAMP (32).
t3 = topic_name("ts-window")
create(t3, {"message.timestamp.before.max.ms": str(HOUR), "message.timestamp.after.max.ms": str(HOUR)}).result(30)
results = {}


def on_delivery(err, msg):
    results[msg.value()] = err.code() if err else None


# Default retries: INVALID_TIMESTAMP is not retriable, so the refused
# records still fail on the first answer, while the accepted ones survive a
# transient error (a request timeout while a loaded machine stalls the
# broker's fsync) instead of failing the step. The margins are an hour
# either side of the bounds, so clock reads never decide the outcome.
p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
now = int(time.time() * 1000)
for value, ts in [(b"now", now), (b"old", now - 2 * HOUR), (b"future", now + 2 * HOUR), (b"recent", now - HOUR // 2)]:
    p.produce(t3, key=value, value=value, timestamp=ts, on_delivery=on_delivery)
    # Unanswered after 60 s is its own failure, not a window mismatch.
    check(p.flush(60) == 0, f"timestamp window: no answer for {value!r} within 60 s")
expect_equal("timestamp window", results, {
    b"now": None, b"old": KafkaError.INVALID_TIMESTAMP, b"future": KafkaError.INVALID_TIMESTAMP, b"recent": None})
print("timestamp window: ok")

# 5. KIP-467 on a compacted topic: in one batch, only the keyless records
# fail with INVALID_RECORD; the others with librdkafka's
# _INVALID_DIFFERENT_RECORD (0011's check).
# The step needs the 20 records in one batch. A loaded machine can make librdkafka send the
# first record alone (it was seen once: that record delivered, the rest refused as one
# batch); such a split is the client's batching, not the broker's answer, and the step is
# tried again on a new topic.
for attempt in range(3):
    t4 = topic_name("compact-keys")
    create(t4, {"cleanup.policy": "compact"}).result(30)
    results = {}
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1000, "batch.num.messages": 1000, "retries": 0})
    # The partition's leader known before the first record, so nothing goes out early.
    p.list_topics(t4, timeout=30)
    for i in range(20):
        key = None if i % 5 == 0 else f"k{i}".encode()
        p.produce(t4, key=key, value=f"v{i}".encode(), partition=0, on_delivery=on_delivery)
    check(p.flush(30) == 0, "deliveries reported")
    split = any(c is None for c in results.values()) and any(c is not None for c in results.values())
    if not split:
        break
    print(f"record errors: the batch was split by the client ({results}); again", file=sys.stderr)
invalid = sorted(int(v[1:]) for v, c in results.items() if c == KafkaError.INVALID_RECORD)
expect_equal("keyless records refused", invalid, [0, 5, 10, 15])
others = [c for v, c in results.items() if int(v[1:]) % 5 != 0]
check(all(c == KafkaError._INVALID_DIFFERENT_RECORD for c in others), f"the rest of the batch: {others}")
print("record errors: ok")


# 6. min.compaction.lag.ms: recent records of a topic with a lag stay while
# a topic without one is compacted in the same cleaner passes; records
# older than the lag are compacted.
def count(topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": topic_name("g"), "enable.auto.commit": False})
    lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.assign([TopicPartition(topic, 0, lo)])
    n, last = 0, lo - 1
    while last < hi - 1:
        m = c.poll(10)
        check(m is not None, f"reading {topic} up to {hi}")
        if m.error():
            continue
        n += 1
        last = m.offset()
    c.close()
    return n


def fill(topic, ts):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for i in range(60):
        p.produce(topic, key=b"same-key", value=(b"%d-" % i) * 20, partition=0, timestamp=ts)
        p.flush(30)


compacted = {"cleanup.policy": "compact", "segment.bytes": "1024", "min.cleanable.dirty.ratio": "0.01"}
lagged = topic_name("lagged")
control = topic_name("control")
old = topic_name("old-enough")
create(lagged, {**compacted, "min.compaction.lag.ms": str(HOUR)}).result(30)
create(control, compacted).result(30)
create(old, {**compacted, "min.compaction.lag.ms": str(HOUR)}).result(30)
now = int(time.time() * 1000)
fill(lagged, now)
fill(control, now)
fill(old, now - 2 * HOUR)
wait_for("the control topic compacted", lambda: count(control) < 60)
wait_for("records older than the lag compacted", lambda: count(old) < 60)
expect_equal("records younger than min.compaction.lag.ms", count(lagged), 60)
print("compaction lag: ok")

# 7. Dynamic broker configs: Kafka's updatable ones are accepted and
# described; read-only ones are refused with INVALID_REQUEST.
broker = ConfigResource(ConfigResource.Type.BROKER, "0", incremental_configs=[
    ConfigEntry("log.retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET),
    ConfigEntry("compression.type", "zstd", incremental_operation=AlterConfigOpType.SET),
    ConfigEntry("log.cleaner.min.compaction.lag.ms", "5000", incremental_operation=AlterConfigOpType.SET),
    ConfigEntry("message.max.bytes", "2000000", incremental_operation=AlterConfigOpType.SET),
    ConfigEntry("log.cleaner.threads", "2", incremental_operation=AlterConfigOpType.SET),
    ConfigEntry("sasl.kerberos.min.time.before.relogin", "58000", incremental_operation=AlterConfigOpType.SET),
])
admin.incremental_alter_configs([broker])[broker].result(30)
bres = ConfigResource(ConfigResource.Type.BROKER, "0")
bdesc = admin.describe_configs([bres])[bres].result(30)
for k, v in [("log.retention.ms", "3600000"), ("compression.type", "zstd"), ("log.cleaner.min.compaction.lag.ms", "5000"),
             ("message.max.bytes", "2000000"), ("log.cleaner.threads", "2")]:
    expect_equal(f"broker {k}", bdesc[k].value, v)
    expect_equal(f"broker {k} source", src(bdesc[k]), ConfigSource.DYNAMIC_BROKER_CONFIG.value)
check(bdesc["log.dirs"].is_read_only, "log.dirs is read-only")
# A new topic inherits the dynamic defaults.
t5 = topic_name("inherits")
create(t5, {}).result(30)
d5 = describe(t5)
expect_equal("inherited compression.type", d5["compression.type"].value, "zstd")
expect_equal("inherited source", src(d5["compression.type"]), ConfigSource.DYNAMIC_BROKER_CONFIG.value)
for ro in ["log.dirs", "log.message.format.version", "num.partitions"]:
    res = ConfigResource(ConfigResource.Type.BROKER, "0", incremental_configs=[
        ConfigEntry(ro, "1", incremental_operation=AlterConfigOpType.SET)])
    expect_equal(f"read-only {ro}", error_code(admin.incremental_alter_configs([res])[res]), KafkaError.INVALID_REQUEST)
bad = ConfigResource(ConfigResource.Type.BROKER, "0", incremental_configs=[
    ConfigEntry("log.cleaner.min.cleanable.ratio", "2", incremental_operation=AlterConfigOpType.SET)])
# Kafka answers INVALID_REQUEST for broker configs it cannot apply (KAFKA-13609).
expect_equal("broker value out of range", error_code(admin.incremental_alter_configs([bad])[bad]),
             KafkaError.INVALID_REQUEST)
print("broker configs: ok")

print("suite passed")
