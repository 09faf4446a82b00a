"""Follower fetching (KIP-392) through confluent-kafka (librdkafka).

    python follower_reads.py BOOTSTRAP TOPIC produce FIRST COUNT
        writes records FIRST..FIRST+COUNT-1 (1 KiB each, numbered) to partition 0, acks=all
    python follower_reads.py BOOTSTRAP TOPIC consume RACK COUNT
        reads partition 0 from the beginning with client.rack=RACK until COUNT records are in,
        checking that record i is number i (nothing lost, repeated or out of order); prints
        `read <n>` every 100 records and `done <COUNT>` at the end
"""
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

SIZE = 1024


def value(i):
    return f"{i:08d}".encode().ljust(SIZE, b".")


def produce(bootstrap, topic, first, count):
    failed = []
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                  "enable.idempotence": True})
    for i in range(first, first + count):
        p.produce(topic, value(i), partition=0,
                  on_delivery=lambda err, _m: err and failed.append(err))
        p.poll(0)
    p.flush(60)
    if failed or len(p) != 0:
        sys.exit(f"not acknowledged: {failed[:3]}, {len(p)} in flight")
    print(f"produced {count}", flush=True)


def consume(bootstrap, topic, rack, count):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"follower-reads-{rack}",
                  "client.rack": rack, "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    n = 0
    deadline = time.monotonic() + 120
    while n < count:
        if time.monotonic() > deadline:
            sys.exit(f"only {n} of {count} records read")
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            print(f"consume error: {m.error()}", file=sys.stderr, flush=True)
            continue
        if m.value() != value(n):
            sys.exit(f"record {n} at offset {m.offset()} is {m.value()[:8]!r}")
        n += 1
        if n % 100 == 0:
            print(f"read {n}", flush=True)
    c.close()
    print(f"done {n}", flush=True)


def main():
    bootstrap, topic, action = sys.argv[1:4]
    if action == "produce":
        produce(bootstrap, topic, int(sys.argv[4]), int(sys.argv[5]))
    elif action == "consume":
        consume(bootstrap, topic, sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit(f"unknown action {action!r}")


if __name__ == "__main__":
    main()
