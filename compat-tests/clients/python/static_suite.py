"""Static membership (group.instance.id) with confluent-kafka: a member that
restarts within its session timeout gets its partitions back with no
rebalance, and a second process with the same instance id fences the first."""

import sys
import threading

from confluent_kafka import Consumer, KafkaError
from confluent_kafka.admin import AdminClient, NewTopic

from common import covered_exactly_once, expect_equal, topic_name, wait_for

bootstrap = sys.argv[1]
PARTITIONS = 6
topic = topic_name("static")
group = f"group-{topic}"
admin = AdminClient({"bootstrap.servers": bootstrap})
admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(30)


class Member:
    def __init__(self, instance):
        self.instance = instance
        self.assignment = set()
        self.revocations = 0
        self.errors = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.c = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "group.instance.id": instance,
            "session.timeout.ms": 15000,
            "heartbeat.interval.ms": 300,
            "enable.auto.commit": False,
            "error_cb": lambda e: self.errors.append(e.code()),
        })
        self.c.subscribe([topic], on_assign=self.on_assign, on_revoke=self.on_revoke)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def on_assign(self, _c, parts):
        with self.lock:
            self.assignment = {p.partition for p in parts}

    def on_revoke(self, _c, parts):
        with self.lock:
            self.revocations += 1
            self.assignment = set()

    def run(self):
        while not self.stop.is_set():
            m = self.c.poll(0.1)
            if m is not None and m.error():
                self.errors.append(m.error().code())
        self.c.close()

    def parts(self):
        with self.lock:
            return set(self.assignment)

    def close(self):
        self.stop.set()
        self.thread.join(30)




members = [Member(f"static-{i}") for i in range(3)]
wait_for("three static members sharing six partitions", lambda: covered_exactly_once(members, PARTITIONS))
before = {m.instance: m.parts() for m in members}

# Restart each member in turn (one of them leads) within its session
# timeout: it gets its own partitions back and nobody else moves.
for i in range(3):
    revoked = {m.instance: m.revocations for m in members}
    members[i].close()
    members[i] = Member(f"static-{i}")
    wait_for(f"static-{i} to get its partitions back", lambda: members[i].parts() == before[f"static-{i}"])
    for j, m in enumerate(members):
        if j != i:
            expect_equal(f"{m.instance} partitions", m.parts(), before[m.instance])
            expect_equal(f"{m.instance} revocations", m.revocations, revoked[m.instance])

# A second process claiming static-2 fences the first one.
intruder = Member("static-2")
wait_for("the old static-2 to be fenced", lambda: any(
    e in (KafkaError._FATAL, KafkaError._FENCED, KafkaError.FENCED_INSTANCE_ID) for e in members[2].errors))
wait_for("the new static-2 to own static-2's partitions", lambda: intruder.parts() == before["static-2"])
for m in (members[0], members[1], intruder):
    m.close()
members[2].stop.set()
print("static membership suite passed")
