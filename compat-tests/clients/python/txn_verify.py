"""Checks the transform's output: read_committed sees every input record,
uppercased, exactly once and in input order per partition.

usage: txn_verify.py BOOTSTRAP INPUT OUTPUT"""

import sys

from confluent_kafka import Consumer, TopicPartition

from common import check, expect_equal

bootstrap, src, dst = sys.argv[1:4]


def read(topic, isolation):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"verify-{topic}", "isolation.level": isolation,
                  "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    n = len(c.list_topics(topic, timeout=30).topics[topic].partitions)
    c.assign([TopicPartition(topic, p, 0) for p in range(n)])
    got = {p: [] for p in range(n)}
    eof = set()
    while len(eof) < n:
        m = c.poll(15)
        check(m is not None, f"reading {topic} reaches the end")
        if m.error():
            check(m.error().code() == -191, f"consume error {m.error()}")
            eof.add(m.partition())
            continue
        got[m.partition()].append(m.value())
    c.close()
    return got


inputs = read(src, "read_uncommitted")
outputs = read(dst, "read_committed")
raw = read(dst, "read_uncommitted")
want = {p: [v.upper() for v in vs] for p, vs in inputs.items()}
expect_equal("committed output is the input, exactly once", outputs, want)
total = sum(len(v) for v in want.values())
extra = sum(len(v) for v in raw.values()) - total
check(extra >= 0, "the log holds at least the committed output")
print(f"{total} records exactly once; {extra} aborted records hidden from read_committed")
