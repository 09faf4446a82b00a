"""confluent-kafka (librdkafka) against Fjord: admin, produce under every
codec, exact read-back, offsets by time, configs, partitions, delete."""

import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
)

from common import CODECS, PARTITIONS, by_partition, check, expect_equal, records, topic_name

bootstrap = sys.argv[1]
admin = AdminClient({"bootstrap.servers": bootstrap})
topic = topic_name("confluent")

# Create, and a second create of the same name fails as in Kafka.
admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(30)
try:
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    check(False, "duplicate create must fail")
except KafkaException as e:
    expect_equal("duplicate create error", e.args[0].code(), KafkaError.TOPIC_ALREADY_EXISTS)
md = admin.list_topics(topic, timeout=30)
expect_equal("partition count", len(md.topics[topic].partitions), PARTITIONS)

# Produce every record with its codec, acks=all.
recs = records()
before_produce = int(time.time() * 1000)
for codec in CODECS:
    errors = []
    p = Producer({"bootstrap.servers": bootstrap, "compression.type": codec, "acks": "all", "linger.ms": 20})
    for c, part, key, value, headers in recs:
        if c != codec:
            continue
        p.produce(topic, value=value, key=key, headers=headers, partition=part,
                  on_delivery=lambda err, msg: errors.append(err) if err else None)
    left = p.flush(30)
    expect_equal(f"unflushed {codec}", left, 0)
    expect_equal(f"delivery errors {codec}", errors, [])

# Read everything back from the start of each partition, exactly.
want = by_partition(recs)
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "fjord-compat-unused",
              "enable.auto.commit": False, "enable.auto.offset.store": False})
c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
got = {p: [] for p in range(PARTITIONS)}
offsets = {p: [] for p in range(PARTITIONS)}
deadline = time.time() + 60
total = sum(len(v) for v in want.values())
while sum(len(v) for v in got.values()) < total and time.time() < deadline:
    m = c.poll(1.0)
    if m is None:
        continue
    check(m.error() is None, f"consume error {m.error()}")
    got[m.partition()].append((m.key(), m.value(), [(k, v if v is not None else b"") for k, v in (m.headers() or [])]))
    offsets[m.partition()].append(m.offset())
c.close()
for p in range(PARTITIONS):
    expect_equal(f"partition {p} records", got[p], want[p])
    expect_equal(f"partition {p} offsets", offsets[p], list(range(len(want[p]))))

# Offsets: earliest, latest, and by timestamp.
for spec, expected in [(OffsetSpec.earliest(), lambda p: 0), (OffsetSpec.latest(), lambda p: len(want[p]))]:
    res = admin.list_offsets({TopicPartition(topic, p): spec for p in range(PARTITIONS)})
    for tp, fut in res.items():
        expect_equal(f"list offsets {tp.partition}", fut.result(30).offset, expected(tp.partition))
res = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.for_timestamp(before_produce - 60_000)})
expect_equal("offset for old timestamp", list(res.values())[0].result(30).offset, 0)
res = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.for_timestamp(int(time.time() * 1000) + 3_600_000)})
expect_equal("offset for future timestamp", list(res.values())[0].result(30).offset, -1)
res = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.max_timestamp()})
check(0 <= list(res.values())[0].result(30).offset < len(want[0]), "max timestamp offset in range")

# Configs: describe defaults, alter incrementally, see the change, reject bad values.
res = ConfigResource(ConfigResource.Type.TOPIC, topic)
desc = admin.describe_configs([res])[res].result(30)
expect_equal("default retention.ms", desc["retention.ms"].value, "604800000")
check(desc["retention.ms"].is_default, "retention.ms is a default")
admin.incremental_alter_configs([ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
    ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET),
    ConfigEntry("max.message.bytes", "2000000", incremental_operation=AlterConfigOpType.SET),
])])[ConfigResource(ConfigResource.Type.TOPIC, topic)].result(30)
desc = admin.describe_configs([res])[res].result(30)
expect_equal("altered retention.ms", desc["retention.ms"].value, "3600000")
check(not desc["retention.ms"].is_default, "altered retention.ms is an override")
expect_equal("altered max.message.bytes", desc["max.message.bytes"].value, "2000000")
try:
    admin.incremental_alter_configs([ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "not-a-number", incremental_operation=AlterConfigOpType.SET)])])[
        ConfigResource(ConfigResource.Type.TOPIC, topic)].result(30)
    check(False, "bad config value must fail")
except KafkaException as e:
    expect_equal("bad config error", e.args[0].code(), KafkaError.INVALID_CONFIG)
admin.incremental_alter_configs([ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
    ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)])])[
    ConfigResource(ConfigResource.Type.TOPIC, topic)].result(30)
desc = admin.describe_configs([res])[res].result(30)
expect_equal("reset retention.ms", desc["retention.ms"].value, "604800000")
broker_res = ConfigResource(ConfigResource.Type.BROKER, "0")
bdesc = admin.describe_configs([broker_res])[broker_res].result(30)
check("log.retention.ms" in bdesc, "broker configs listed")

# Partitions: grow, reject shrinking, and the new ones take records.
admin.create_partitions([NewPartitions(topic, PARTITIONS + 2)])[topic].result(30)
try:
    admin.create_partitions([NewPartitions(topic, 2)])[topic].result(30)
    check(False, "shrinking must fail")
except KafkaException as e:
    expect_equal("shrink error", e.args[0].code(), KafkaError.INVALID_PARTITIONS)
md = admin.list_topics(topic, timeout=30)
expect_equal("grown partition count", len(md.topics[topic].partitions), PARTITIONS + 2)
# No auto-creation: this producer outlives the topic, and its metadata
# refreshes must not bring the deleted topic back.
p = Producer({"bootstrap.servers": bootstrap, "topic.metadata.refresh.interval.ms": 100,
              "allow.auto.create.topics": False})
done = []
p.produce(topic, value=b"in-new-partition", partition=PARTITIONS + 1, on_delivery=lambda e, m: done.append((e, m.offset() if m else None)))
p.flush(30)
expect_equal("produce to new partition", done, [(None, 0)])

# Delete records, then the topic.
res = admin.delete_records([TopicPartition(topic, 0, 5)])
for tp, fut in res.items():
    expect_equal("low watermark", fut.result(30).low_watermark, 5)
res = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.earliest()})
expect_equal("earliest after delete records", list(res.values())[0].result(30).offset, 5)
admin.delete_topics([topic])[topic].result(30)
md = admin.list_topics(timeout=30)
check(topic not in md.topics, "deleted topic is gone")
print("confluent-kafka suite passed")
