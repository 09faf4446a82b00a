"""kafka-python consumer groups: a member consumes and commits, and the next
member of the group resumes exactly after the committed offsets."""

import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from common import expect_equal, topic_name

bootstrap = sys.argv[1]
topic = topic_name("kp-group")
group = f"group-{topic}"
KafkaAdminClient(bootstrap_servers=bootstrap).create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")


def produce(keys):
    for k in keys:
        producer.send(topic, key=k.encode(), value=b"v")
    producer.flush(30)


def consume(n):
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                      enable_auto_commit=False, session_timeout_ms=10000, heartbeat_interval_ms=500)
    got = []
    deadline = time.time() + 60
    while len(got) < n and time.time() < deadline:
        for _tp, msgs in c.poll(timeout_ms=500).items():
            got.extend(m.key.decode() for m in msgs)
    c.commit()
    c.close()
    return sorted(got)


produce([f"a{i}" for i in range(90)])
expect_equal("first member", consume(90), sorted(f"a{i}" for i in range(90)))
produce([f"b{i}" for i in range(30)])
second = consume(30)
expect_equal("second member resumes after the commit", second, sorted(f"b{i}" for i in range(30)))
print("kafka-python groups suite passed")
