"""confluent-kafka consumer groups against Fjord: three members share a
six-partition topic (every partition exactly once), a member leaves and a
new one joins, committed offsets carry the group across the changes, and no
record is lost."""

import sys
import threading

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from common import check, covered_exactly_once, expect_equal, topic_name, wait_for

bootstrap, strategy = sys.argv[1], sys.argv[2]
PARTITIONS = 6
RETRIABLE_COMMIT = (KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
                    KafkaError._STATE, KafkaError._ASSIGNMENT_LOST, KafkaError._NO_OFFSET)
topic = topic_name(f"groups-{strategy}")
group = f"group-{topic}"
admin = AdminClient({"bootstrap.servers": bootstrap})
admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(30)
producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
produced = set()


def produce(n, tag):
    for i in range(n):
        key = f"{tag}-{i}"
        producer.produce(topic, key=key.encode(), value=b"x" * 50, partition=i % PARTITIONS)
        produced.add(key)
    expect_equal("unflushed", producer.flush(30), 0)


class Member:
    def __init__(self, name):
        self.name = name
        self.assignment = set()
        self.consumed = []
        self.stop = threading.Event()
        self.c = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": name,
            "partition.assignment.strategy": strategy,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 300,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        })
        self.lock = threading.Lock()
        self.c.subscribe([topic], on_assign=self.on_assign, on_revoke=self.on_revoke)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def on_assign(self, consumer, partitions):
        with self.lock:
            self.assignment |= {p.partition for p in partitions}
        if strategy == "cooperative-sticky":
            consumer.incremental_assign(partitions)

    def on_revoke(self, consumer, partitions):
        with self.lock:
            self.assignment -= {p.partition for p in partitions}
        if strategy == "cooperative-sticky":
            consumer.incremental_unassign(partitions)

    def run(self):
        while not self.stop.is_set():
            m = self.c.poll(0.2)
            if m is None or m.error():
                continue
            self.consumed.append(m.key().decode())
            # Commit what was processed, synchronously, so nothing is lost. A
            # commit can race a rebalance; the record then comes again.
            try:
                self.c.commit(message=m, asynchronous=False)
            except KafkaException as e:
                check(e.args[0].code() in RETRIABLE_COMMIT, f"commit failed: {e}")
        self.c.close()

    def parts(self):
        with self.lock:
            return set(self.assignment)

    def leave(self):
        self.stop.set()
        self.thread.join(30)




def all_consumed(members):
    got = set()
    for m in members + gone:
        got.update(m.consumed)
    return produced <= got


gone = []
produce(300, "first")
members = [Member(f"m{i}") for i in range(3)]
wait_for("three members sharing six partitions", lambda: covered_exactly_once(members, PARTITIONS))
print("assignment:", {m.name: sorted(m.parts()) for m in members})
wait_for("first records consumed", lambda: all_consumed(members))

# A member leaves: the other two take over all partitions.
before = {m.name: m.parts() for m in members}
leaver = members.pop(0)
leaver.leave()
gone.append(leaver)
wait_for("two members covering six partitions", lambda: covered_exactly_once(members, PARTITIONS))
if strategy == "cooperative-sticky":
    for m in members:
        check(before[m.name] <= m.parts(), f"{m.name} kept its partitions in a cooperative rebalance")
produce(300, "second")
wait_for("records after the leave consumed", lambda: all_consumed(members))

# A new member joins and gets a share.
members.append(Member("m3"))
wait_for("three members again", lambda: covered_exactly_once(members, PARTITIONS))
produce(300, "third")
wait_for("records after the join consumed", lambda: all_consumed(members))

desc = admin.describe_consumer_groups([group])[group].result(30)
expect_equal("group state", str(desc.state).split(".")[-1].upper(), "STABLE")
expect_equal("group members", len(desc.members), 3)
for m in members:
    m.leave()
print(f"groups suite ({strategy}) passed")
