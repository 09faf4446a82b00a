"""Checks that every acknowledged record is in the topic, first copies in
acknowledgement order (retries after a crash may add duplicates, never
gaps)."""

import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from common import check

bootstrap, topic, acked_path = sys.argv[1:4]
acked = [line.strip() for line in open(acked_path) if line.strip()]
check(len(acked) > 0, "some records were acknowledged")
admin = AdminClient({"bootstrap.servers": bootstrap})
end = list(admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.latest()}).values())[0].result(30).offset
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "fjord-crash-verify", "enable.auto.commit": False})
c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
log = []
deadline = time.time() + 120
while len(log) < end and time.time() < deadline:
    m = c.poll(1.0)
    if m is None:
        continue
    check(m.error() is None, f"consume error {m.error()}")
    check(m.offset() == len(log), f"offset {m.offset()} follows {len(log)}")
    log.append(m.value().decode())
c.close()
check(len(log) == end, f"read {len(log)} of {end} records")
first = {}
for i, v in enumerate(log):
    first.setdefault(v, i)
missing = [v for v in acked if v not in first]
check(not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}")
positions = [first[v] for v in acked]
check(positions == sorted(positions), "acknowledged records are in order")
print(f"all {len(acked)} acknowledged records present in order ({len(log)} in the log)")
