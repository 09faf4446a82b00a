"""Idempotent producer behind a proxy that loses Produce responses: every
record is acknowledged, and each partition holds each record exactly once,
in the order it was produced.

usage: idempotent_lossy.py BOOTSTRAP TOPIC COUNT PARTITIONS"""

import sys

from confluent_kafka import Consumer, Producer, TopicPartition

from common import check, expect_equal

bootstrap, topic, count, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

producer = Producer({
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 2,
    "batch.num.messages": 20,
    "message.timeout.ms": 120000,
    "reconnect.backoff.ms": 10,
    "reconnect.backoff.max.ms": 100,
})
failures = []
acked = 0


def on_delivery(err, _msg):
    global acked
    if err is not None:
        failures.append(str(err))
    else:
        acked += 1


sent = {p: [] for p in range(partitions)}
for i in range(count):
    p = i % partitions
    value = f"record-{i}".encode()
    sent[p].append(value)
    while True:
        try:
            producer.produce(topic, value=value, partition=p, on_delivery=on_delivery)
            break
        except BufferError:
            producer.poll(0.1)
    producer.poll(0)
check(producer.flush(120) == 0, "every record delivered within the timeout")
expect_equal("delivery failures", failures, [])
expect_equal("acknowledged", acked, count)

consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{topic}", "enable.partition.eof": True,
                     "auto.offset.reset": "earliest"})
consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
got = {p: [] for p in range(partitions)}
eof = set()
while len(eof) < partitions:
    m = consumer.poll(10)
    check(m is not None, "records arrive")
    if m.error():
        check(m.error().code() == -191, f"consume error {m.error()}")
        eof.add(m.partition())
        continue
    got[m.partition()].append(m.value())
consumer.close()
for p in range(partitions):
    expect_equal(f"partition {p}: every record once, in order", got[p], sent[p])
print(f"{count} records, none duplicated or lost")
