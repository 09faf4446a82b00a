"""confluent-kafka (librdkafka) transactions: committed records are visible
to read_committed consumers and aborted ones never are (while
read_uncommitted sees both); a second producer with the same
transactional.id fences the first, whose open transaction is aborted.

usage: txn_suite.py BOOTSTRAP"""

import sys

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from common import check, expect_equal, topic_name

bootstrap = sys.argv[1]
PARTITIONS = 3
admin = AdminClient({"bootstrap.servers": bootstrap})


def new_topic(prefix):
    name = topic_name(prefix)
    admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)])[name].result(30)
    return name


def txn_producer(txn_id):
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "transaction.timeout.ms": 60000})
    p.init_transactions(30)
    return p


def read_all(topic, isolation):
    """Every value of the topic (per partition, in order) as `isolation` sees it."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{topic}-{isolation}",
                  "isolation.level": isolation, "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got = {p: [] for p in range(PARTITIONS)}
    eof = set()
    while len(eof) < PARTITIONS:
        m = c.poll(15)
        check(m is not None, f"{isolation} read of {topic} reaches the end")
        if m.error():
            check(m.error().code() == -191, f"consume error {m.error()}")
            eof.add(m.partition())
            continue
        got[m.partition()].append(m.value().decode())
    c.close()
    return got


def send(p, topic, tag, n):
    vals = []
    for i in range(n):
        v = f"{tag}-{i}"
        p.produce(topic, value=v.encode(), partition=i % PARTITIONS)
        vals.append(v)
    return vals


def split(vals):
    out = {p: [] for p in range(PARTITIONS)}
    for i, v in enumerate(vals):
        out[int(v.rsplit("-", 1)[1]) % PARTITIONS].append(v)
    return out


def merge(*parts):
    out = {p: [] for p in range(PARTITIONS)}
    for part in parts:
        for p, vs in part.items():
            out[p].extend(vs)
    return out


# Interleaved commits and aborts.
topic = new_topic("txn-visibility")
p = txn_producer(f"vis-{topic}")
batches = []
for n, (tag, commit) in enumerate([("c1", True), ("a1", False), ("c2", True), ("a2", False), ("c3", True)]):
    p.begin_transaction()
    vals = send(p, topic, tag, 30 + n)
    p.flush()
    if commit:
        p.commit_transaction(30)
    else:
        p.abort_transaction(30)
    batches.append((split(vals), commit))
committed = merge(*[b for b, c in batches if c])
everything = merge(*[b for b, _ in batches])
expect_equal("read_committed sees exactly the committed transactions", read_all(topic, "read_committed"), committed)
expect_equal("read_uncommitted sees every record", read_all(topic, "read_uncommitted"), everything)
print("visibility: ok")

# Zombie fencing: two producers share one transactional.id.
topic = new_topic("txn-zombie")
txn_id = f"zombie-{topic}"
zombie = txn_producer(txn_id)
zombie.begin_transaction()
zombie_vals = send(zombie, topic, "zombie", 6)
zombie.flush()
successor = txn_producer(txn_id)  # fences the zombie and aborts its transaction
successor.begin_transaction()
ok_vals = send(successor, topic, "successor", 6)
successor.commit_transaction(30)
fenced = None
try:
    zombie.produce(topic, value=b"zombie-late", partition=0)
    zombie.commit_transaction(30)
except KafkaException as e:
    fenced = e.args[0]
check(fenced is not None, "the zombie cannot commit")
check(fenced.fatal() or fenced.txn_requires_abort(), f"the zombie's error is fatal or abortable: {fenced}")
print(f"zombie fenced with: {fenced}")
expect_equal("read_committed sees only the successor", read_all(topic, "read_committed"), split(ok_vals))
uncommitted = read_all(topic, "read_uncommitted")
check(all(v in sum(uncommitted.values(), []) for v in zombie_vals), "the zombie's aborted writes are in the log")
check("zombie-late" not in sum(uncommitted.values(), []), "nothing the zombie sent after fencing was written")
print("fencing: ok")
