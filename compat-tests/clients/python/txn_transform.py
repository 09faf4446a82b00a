"""A consume-transform-produce loop with exactly-once semantics: records of
the input topic are uppercased into the output topic, and the input offsets
are committed in the same transaction (send_offsets_to_transaction). It
exits 0 once every input record is processed and committed; the test kills
it (and the broker) with SIGKILL at random points and starts it again.

usage: txn_transform.py BOOTSTRAP INPUT OUTPUT GROUP TRANSACTIONAL_ID"""

import faulthandler
import os
import signal
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

bootstrap, src, dst, group, txn_id = sys.argv[1:6]

# A supervisor that finds this loop hung sends SIGUSR1 first: every thread's stack goes to
# stderr, so the log says which call never returned.
faulthandler.register(signal.SIGUSR1, all_threads=True)

consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": group,
    "enable.auto.commit": False,
    "isolation.level": "read_committed",
    "auto.offset.reset": "earliest",
})
producer = Producer({
    "bootstrap.servers": bootstrap,
    "transactional.id": txn_id,
    "transaction.timeout.ms": 30000,
    "linger.ms": 5,
    # librdkafka 2.16 decommissions brokers when it re-bootstraps after losing
    # them all, and send_offsets_to_transaction() then waits forever on the
    # decommissioned group coordinator, past its timeout (librdkafka issues
    # #5511, #5456). A single broker that restarts triggers exactly that;
    # without re-bootstrap the client simply reconnects.
    "metadata.recovery.strategy": "none",
    **({"debug": os.environ["TXN_DEBUG"]} if os.environ.get("TXN_DEBUG") else {}),
})
# Fences any earlier instance and aborts its open transaction before the
# committed offsets are read.
producer.init_transactions(60)

meta = consumer.list_topics(src, timeout=30)
parts = [TopicPartition(src, p) for p in sorted(meta.topics[src].partitions)]
consumer.assign(parts)
ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in parts}


def rewind():
    committed = consumer.committed(parts, timeout=30)
    for tp in committed:
        consumer.seek(TopicPartition(src, tp.partition, tp.offset if tp.offset >= 0 else 0))


def done():
    committed = consumer.committed(parts, timeout=30)
    return all(tp.offset >= ends[tp.partition] for tp in committed)


# A loop that reads nothing while its committed offsets are short of the end has stalled (the
# consumer's fetch state after a leader or coordinator moved): it says where it stands and exits
# non-zero, and the harness starts a new instance, which resumes from the committed offsets.
STALL_SECS = 20
last_progress = time.monotonic()

while True:
    msgs = consumer.consume(200, timeout=0.5)
    errors = [m.error() for m in msgs if m.error() is not None]
    if errors:
        print(f"consume errors: {errors[:3]}", file=sys.stderr, flush=True)
    msgs = [m for m in msgs if m.error() is None]
    if not msgs:
        if done():
            print("all input processed", flush=True)
            sys.exit(0)
        # Read to the end of a partition whose log ends in control batches (a transaction
        # marker, or a Raft leader's first entry on Fjord): the position is past them but the
        # committed offset is not, and nothing is left to read that would move it. Commit the
        # positions alone, as Kafka Streams does.
        positions = [tp for tp in consumer.position(parts) if tp.offset >= 0]
        committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=30)}
        read = {tp.partition: tp.offset for tp in positions}
        if all(read.get(p, committed[p]) >= e for p, e in ends.items()):
            try:
                producer.begin_transaction()
                producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 10)
                producer.commit_transaction(30)
            except KafkaException as e:
                print(f"offsets-only transaction failed: {e.args[0]}", file=sys.stderr, flush=True)
                try:
                    producer.abort_transaction(30)
                except KafkaException:
                    sys.exit(3)
            continue
        if time.monotonic() - last_progress > STALL_SECS:
            committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=30)}
            positions = {tp.partition: tp.offset for tp in consumer.position(parts)}
            print(f"stalled: nothing read for {STALL_SECS} s; committed {committed}, positions "
                  f"{positions}, ends {ends}", file=sys.stderr, flush=True)
            sys.exit(4)
        continue
    last_progress = time.monotonic()
    try:
        producer.begin_transaction()
        for m in msgs:
            producer.produce(dst, key=m.key(), value=m.value().upper(), partition=m.partition())
        producer.send_offsets_to_transaction(consumer.position(parts), consumer.consumer_group_metadata(), 10)
        producer.commit_transaction(30)
    except KafkaException as e:
        err = e.args[0]
        print(f"transaction failed: {err}", file=sys.stderr, flush=True)
        if err.txn_requires_abort() or err.retriable():
            try:
                producer.abort_transaction(30)
                rewind()
                continue
            except KafkaException as again:
                err = again.args[0]
        # Fatal (e.g. fenced after a timeout): the harness starts a new instance.
        print(f"fatal: {err}", file=sys.stderr, flush=True)
        sys.exit(3)
