"""Reads a topic with confluent-kafka and compares it, record by record, to
the JSON lines another client wrote of what it produced; then deletes it."""

import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from common import check, expect_equal

bootstrap, topic, produced_file = sys.argv[1:4]
want = {}
for line in open(produced_file):
    r = json.loads(line)
    want.setdefault(r["partition"], []).append((r["offset"], r["key"], r["value"], sorted(r["headers"].items())))
admin = AdminClient({"bootstrap.servers": bootstrap})
# DeleteRecords may have moved a partition's start: expect what is left.
starts = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.earliest() for p in want})
for tp, fut in starts.items():
    low = fut.result(30).offset
    check(low <= 3, f"partition {tp.partition} starts at {low}")
    want[tp.partition] = [r for r in want[tp.partition] if r[0] >= low]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "fjord-read-back", "enable.auto.commit": False})
c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in want])
got = {p: [] for p in want}
total = sum(len(v) for v in want.values())
deadline = time.time() + 60
while sum(len(v) for v in got.values()) < total and time.time() < deadline:
    m = c.poll(1.0)
    if m is None:
        continue
    check(m.error() is None, f"consume error {m.error()}")
    headers = sorted((k, v.decode()) for k, v in (m.headers() or []))
    got[m.partition()].append((m.offset(), m.key().decode(), m.value().decode(), headers))
c.close()
for p in want:
    expect_equal(f"partition {p}", got[p], want[p])
admin.delete_topics([topic])[topic].result(30)
print("read back matched")
