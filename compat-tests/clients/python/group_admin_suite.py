"""Group administration with confluent-kafka's AdminClient: list, describe,
reset (alter) committed offsets, list offsets, delete groups.
With argv[2] == "after-restart", checks what a restarted broker kept."""

import sys

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from common import check, expect_equal, wait_for

bootstrap, phase = sys.argv[1], sys.argv[2]
admin = AdminClient({"bootstrap.servers": bootstrap})
topic, group = "admin-groups", "admin-group"


def committed():
    res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(30)
    return {tp.partition: tp.offset for tp in res.topic_partitions if tp.topic == topic}


def listed():
    return {g.group_id for g in admin.list_consumer_groups().result(30).valid}


if phase == "before-restart":
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 300})
    c.subscribe([topic])
    wait_for("an assignment", lambda: c.poll(0.1) is None and len(c.assignment()) == 2)
    c.commit(offsets=[TopicPartition(topic, 0, 7), TopicPartition(topic, 1, 9)], asynchronous=False)
    check(group in listed(), "the group is listed")
    desc = admin.describe_consumer_groups([group])[group].result(30)
    expect_equal("state while consuming", str(desc.state).split(".")[-1], "STABLE")
    expect_equal("members", len(desc.members), 1)
    # Resetting offsets of a group with members is refused, as in Kafka.
    try:
        res = admin.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 1)])])[group].result(30)
        check(any(tp.error is not None for tp in res.topic_partitions), "altering offsets of an active group must fail")
    except KafkaException:
        pass
    expect_equal("offsets untouched by the refused reset", committed(), {0: 7, 1: 9})
    c.close()
    wait_for("the group to empty", lambda: str(admin.describe_consumer_groups([group])[group].result(30).state).split(".")[-1] == "EMPTY")
    # Reset (alter) committed offsets now that it is empty.
    admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 3)])])[group].result(30)
    expect_equal("offsets after the reset", committed(), {0: 3, 1: 9})
    print("group admin suite (before restart) passed")
else:
    check(group in listed(), "the group is still listed after a restart")
    expect_equal("offsets after the restart", committed(), {0: 3, 1: 9})
    desc = admin.describe_consumer_groups([group])[group].result(30)
    expect_equal("state after the restart", str(desc.state).split(".")[-1], "EMPTY")
    admin.delete_consumer_groups([group])[group].result(30)
    check(group not in listed(), "the deleted group is gone")
    print("group admin suite (after restart) passed")
