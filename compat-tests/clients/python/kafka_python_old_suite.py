"""kafka-python told it talks to an old broker (api_version=(0, 8, 1) …
(0, 11)), so it sends the request versions Kafka 4 dropped: OffsetCommit
v0/v1, OffsetFetch v0, ListOffsets v0, CreateTopics v0, DeleteTopics v0,
DescribeConfigs v0 and AlterConfigs v0. Each effect is checked with a
client that speaks today's versions."""

import sys

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.structs import OffsetAndMetadata

from common import check, expect_equal

bootstrap = sys.argv[1]
topic = "kp-old-versions"
tp = TopicPartition(topic, 0)

# CreateTopics v0 (a 0.10.1 broker).
old_admin = KafkaAdminClient(bootstrap_servers=bootstrap, api_version=(0, 10, 1))
created = old_admin.create_topics([NewTopic(topic, 2, 1, topic_configs={"retention.ms": "5000"})])
expect_equal("CreateTopics v0", [(t["name"], t["error_code"]) for t in created["topics"]], [(topic, 0)])
admin = KafkaAdminClient(bootstrap_servers=bootstrap)
expect_equal("partitions of the topic made by v0",
             len(admin.describe_topics([topic])[0]["partitions"]), 2)

# DescribeConfigs v0 and AlterConfigs v0 (a 0.11 broker).
configs_admin = KafkaAdminClient(bootstrap_servers=bootstrap, api_version=(0, 11))


def retention(client):
    res = client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=["retention.ms"])])
    return res["topic"][topic]["retention.ms"]["value"]


expect_equal("retention.ms by DescribeConfigs v0", retention(configs_admin), "5000")
configs_admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": "7000"})])
expect_equal("retention.ms by DescribeConfigs v0 after AlterConfigs v0", retention(configs_admin), "7000")
expect_equal("retention.ms by a current DescribeConfigs", retention(admin), "7000")

# ListOffsets v0 (a 0.8.2 consumer) after three records.
producer = KafkaProducer(bootstrap_servers=bootstrap)
for i in range(3):
    producer.send(topic, f"r{i}".encode(), partition=0)
producer.flush()
producer.close()
old = KafkaConsumer(bootstrap_servers=bootstrap, api_version=(0, 8, 2))
expect_equal("end offset by ListOffsets v0", old.end_offsets([tp]), {tp: 3})
expect_equal("start offset by ListOffsets v0", old.beginning_offsets([tp]), {tp: 0})
old.close()

# OffsetCommit v0 + OffsetFetch v0 (0.8.1), OffsetCommit v1 (0.8.2).
for version, offset in [((0, 8, 1), 2), ((0, 8, 2), 3)]:
    group = f"kp-old-group-{version[-1]}"
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, api_version=version, enable_auto_commit=False)
    c.assign([tp])
    c.commit({tp: OffsetAndMetadata(offset, "old", -1)})
    expect_equal(f"committed offset read back by {version}", c.committed(tp), offset)
    c.close()
    modern = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    expect_equal(f"offset committed by {version}, as a current client sees it", modern.committed(tp), offset)
    modern.close()

# DeleteTopics v0.
deleted = old_admin.delete_topics([topic])
expect_equal("DeleteTopics v0", [(t["name"], t["error_code"]) for t in deleted["topics"]], [(topic, 0)])
check(topic not in admin.list_topics(), "the topic is gone")
print("kafka-python old versions suite passed")
