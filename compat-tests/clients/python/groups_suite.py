"""confluent-kafka consumer groups against Fjord: three members share a
six-partition topic (every partition exactly once), a member leaves and a
new one joins, committed offsets carry the group across the changes, and no
record is lost."""

import sys
import threading

from confluent_kafka import Consumer, KafkaError, KafkaException

from common import GroupTopic, check, covered_exactly_once, expect_equal, wait_for

bootstrap, strategy = sys.argv[1], sys.argv[2]
PARTITIONS = 6
RETRIABLE_COMMIT = (KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
                    KafkaError._STATE, KafkaError._ASSIGNMENT_LOST, KafkaError._NO_OFFSET)
gt = GroupTopic(bootstrap, f"groups-{strategy}", PARTITIONS)
topic, group, admin, produced = gt.name, gt.group, gt.admin, gt.produced



class Member:
    def __init__(self, name):
        self.name = name
        self.assignment = set()
        self.consumed = []
        self.stop = threading.Event()
        conf = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": name,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
        if strategy.startswith("consumer-"):
            # KIP-848: the broker assigns; timeouts are the broker's too.
            conf.update({"group.protocol": "consumer", "group.remote.assignor": strategy.split("-", 1)[1]})
        else:
            conf.update({"partition.assignment.strategy": strategy, "session.timeout.ms": 6000,
                         "heartbeat.interval.ms": 300})
        self.c = Consumer(conf)
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
gt.produce("first", 300)
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
if strategy in ("cooperative-sticky", "consumer-uniform"):
    for m in members:
        check(before[m.name] <= m.parts(), f"{m.name} kept its partitions in a cooperative rebalance")
gt.produce("second", 300)
wait_for("records after the leave consumed", lambda: all_consumed(members))

# A new member joins and gets a share.
members.append(Member("m3"))
wait_for("three members again", lambda: covered_exactly_once(members, PARTITIONS))
gt.produce("third", 300)
wait_for("records after the join consumed", lambda: all_consumed(members))

desc = admin.describe_consumer_groups([group])[group].result(30)
wait_for("a stable group", lambda: str(admin.describe_consumer_groups([group])[group].result(30).state).split(".")[-1].upper() == "STABLE")
desc = admin.describe_consumer_groups([group])[group].result(30)
expect_equal("group members", len(desc.members), 3)
for m in members:
    m.leave()
print(f"groups suite ({strategy}) passed")
