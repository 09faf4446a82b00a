"""Checks that every acknowledged record is in the topic, in order, and that
the idempotent producer's retries across the crash wrote nothing twice."""

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
dupes = len(log) - len(set(log))
check(dupes == 0, f"{dupes} records were written twice")
check(log == sorted(log), "records are in the order they were produced")
present = set(log)
missing = [v for v in acked if v not in present]
check(not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}")
print(f"all {len(acked)} acknowledged records present in order ({len(log)} in the log)")
