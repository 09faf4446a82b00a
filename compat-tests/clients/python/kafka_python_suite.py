"""kafka-python against Fjord: admin, produce under every codec, exact
read-back (through incremental fetch sessions), offsets, configs,
partitions, delete."""

import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
from kafka.errors import InvalidPartitionsError, TopicAlreadyExistsError

from common import CODECS, PARTITIONS, by_partition, check, expect_equal, records, topic_name

bootstrap = sys.argv[1]
admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
topic = topic_name("kafka-python")

admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
try:
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)], raise_errors=True)
    check(False, "duplicate create must fail")
except TopicAlreadyExistsError:
    pass

recs = records()
before = int(time.time() * 1000)
for codec in CODECS:
    # kafka-python 3 turns idempotence on by default: this exercises it.
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                      compression_type=None if codec == "none" else codec)
    futures = []
    for c, part, key, value, headers in recs:
        if c == codec:
            futures.append(p.send(topic, key=key, value=value, headers=headers, partition=part))
    p.flush(30)
    for f in futures:
        f.get(timeout=30)
    p.close()

want = by_partition(recs)
c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                  fetch_max_wait_ms=200, max_partition_fetch_bytes=4096)
tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
c.assign(tps)
c.seek_to_beginning(*tps)
got = {p: [] for p in range(PARTITIONS)}
offsets = {p: [] for p in range(PARTITIONS)}
total = sum(len(v) for v in want.values())
deadline = time.time() + 60
# Small per-partition fetches force many fetches, most of them incremental.
while sum(len(v) for v in got.values()) < total and time.time() < deadline:
    for tp, msgs in c.poll(timeout_ms=500).items():
        for m in msgs:
            got[tp.partition].append((m.key, m.value, [(k, v) for k, v in m.headers]))
            offsets[tp.partition].append(m.offset)
for p in range(PARTITIONS):
    expect_equal(f"partition {p} records", got[p], want[p])
    expect_equal(f"partition {p} offsets", offsets[p], list(range(len(want[p]))))

expect_equal("beginning offsets", c.beginning_offsets(tps), {tp: 0 for tp in tps})
expect_equal("end offsets", c.end_offsets(tps), {tp: len(want[tp.partition]) for tp in tps})
times = c.offsets_for_times({tps[0]: before - 60_000})
expect_equal("offset for old timestamp", times[tps[0]].offset, 0)
times = c.offsets_for_times({tps[0]: int(time.time() * 1000) + 3_600_000})
check(times[tps[0]] is None, "no offset for a future timestamp")
c.close()

# Configs (non-incremental AlterConfigs replaces the overrides).
res = ConfigResource(ConfigResourceType.TOPIC, topic)
def topic_configs():
    out = admin.describe_configs([res], config_filter="all")
    return {k: v["value"] for k, v in out["topic"][topic].items()}
expect_equal("default segment.bytes", topic_configs()["segment.bytes"], str(1 << 30))
admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"segment.bytes": "1048576"})])
expect_equal("altered segment.bytes", topic_configs()["segment.bytes"], "1048576")

admin.create_partitions({topic: NewPartitions(total_count=PARTITIONS + 1)})
try:
    admin.create_partitions({topic: NewPartitions(total_count=1)})
    check(False, "shrinking must fail")
except InvalidPartitionsError:
    pass
md = admin.describe_topics([topic])
expect_equal("grown partitions", len(md[0]["partitions"]), PARTITIONS + 1)

admin.delete_topics([topic])
check(topic not in admin.list_topics(), "deleted topic is gone")
admin.close()
print("kafka-python suite passed")
