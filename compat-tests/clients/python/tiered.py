"""Tiered storage through real clients (compat-tests/tests/tiered_storage.rs).

  tiered.py produce BOOTSTRAP TOPIC N CONFIGS_JSON [PAUSE_MS]
      creates TOPIC (one partition, CONFIGS_JSON as its configs) and writes, with confluent-kafka:
      N/2 events, an aborted transaction, a committed one, then N/2 more. Every event carries
      the timestamp BASE_TS + i seconds. With PAUSE_MS, waits that long after every 50 events
      are delivered (so a fault can land while it writes).
  tiered.py read BOOTSTRAP TOPIC N CLIENT ISOLATION [UPTO]
      reads the topic from offset 0 with CLIENT (confluent, kafka-python, aiokafka) at ISOLATION
      (read_committed or read_uncommitted) and checks every value, in order (those below offset
      UPTO only, when given).
  tiered.py expect - - N ISOLATION
      prints the values a reader at ISOLATION gets, one per line (for kcat and kafkajs).
  tiered.py delete_records BOOTSTRAP TOPIC N OFFSET
      DeleteRecords up to OFFSET (in the bucket's part): the low watermark, ListOffsets earliest
      and a consumer reset from offset 0 all go to OFFSET.
  tiered.py timestamps BOOTSTRAP TOPIC N [UPTO]
      ListOffsets earliest, by the timestamps of events 0 .. N/2 (data that by then is only in
      the bucket), and the max timestamp (unless UPTO is given), with confluent-kafka's
      AdminClient.
"""

import asyncio
import json
import os
import sys
import time

from common import check, expect_equal

# Event i carries BASE_TS + i seconds. The test passes a recent BASE_TS (TIERED_BASE_TS): with
# timestamps years old, the broker would expire the idempotent producer's state at every
# retention pass (producer.id.expiration.ms counts from the batches' timestamps, as in Kafka).
BASE_TS = int(os.environ.get("TIERED_BASE_TS", "1700000000000"))
TXN = 20


def event(i):
    # JSON events of a realistic size (~300 bytes): what the users' trackers send.
    return json.dumps(
        {
            "event_id": f"evt-{i:08d}",
            "type": ["page_view", "click", "signup", "purchase"][i % 4],
            "user": f"user-{i % 977}",
            "session": f"sess-{i // 50}",
            "ts": BASE_TS + i * 1000,
            "props": {"path": f"/products/{i % 113}", "referrer": "https://example.com/campaign", "n": i},
        }
    ).encode()


def expected(n, committed):
    half = n // 2
    out = [event(i) for i in range(half)]
    if not committed:
        out += [f"aborted-{j}".encode() for j in range(TXN)]
    out += [f"committed-{j}".encode() for j in range(TXN)]
    out += [event(i) for i in range(half, n)]
    return out


def retried(call, attempts=6):
    """A transactional call, called again while librdkafka says a retry resumes it (a
    coordinator moving after a node was killed)."""
    from confluent_kafka import KafkaException

    for attempt in range(attempts):
        try:
            return call()
        except KafkaException as e:
            err = e.args[0]
            if attempt + 1 == attempts or not err.retriable():
                raise
            print(f"retrying after {err}", file=sys.stderr)


def produce(bootstrap, topic, n, configs, pause_ms=0):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, config=configs)])[topic].result(30)
    # Small batches, so the small segments of the test roll often.
    p = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0, "batch.size": 4096}
    )
    half = n // 2

    def paced(i):
        if pause_ms and i % 50 == 49:
            check(p.flush(60) == 0, "delivered")
            time.sleep(pause_ms / 1000)

    for i in range(half):
        p.produce(topic, key=f"k{i}".encode(), value=event(i), timestamp=BASE_TS + i * 1000)
        p.poll(0)
        paced(i)
    check(p.flush(60) == 0, "first half delivered")
    for abort, prefix in [(True, "aborted"), (False, "committed")]:
        t = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{topic}-{prefix}"})
        retried(lambda: t.init_transactions(30))
        t.begin_transaction()
        for j in range(TXN):
            t.produce(topic, value=f"{prefix}-{j}".encode(), timestamp=BASE_TS + half * 1000)
        # Sent before the abort: librdkafka drops what an abort finds still queued.
        check(t.flush(60) == 0, f"{prefix} transaction sent")
        if abort:
            retried(lambda: t.abort_transaction(30))
        else:
            retried(lambda: t.commit_transaction(30))
    for i in range(half, n):
        p.produce(topic, key=f"k{i}".encode(), value=event(i), timestamp=BASE_TS + i * 1000)
        p.poll(0)
        paced(i)
    check(p.flush(60) == 0, "second half delivered")
    print(f"produced {n} events and two transactions of {TXN}")


def read_confluent(bootstrap, topic, want, isolation):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"tiered-{isolation}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "auto.offset.reset": "error",
        }
    )
    c.assign([TopicPartition(topic, 0, 0)])
    got = []
    deadline = time.time() + 120
    while len(got) < want and time.time() < deadline:
        m = c.poll(1.0)
        if m is None:
            continue
        check(m.error() is None, f"consume error {m.error()}")
        got.append(m.value())
    c.close()
    return got


def read_kafka_python(bootstrap, topic, want, isolation):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level=isolation,
        auto_offset_reset="none",
        consumer_timeout_ms=120_000,
    )
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek(tp, 0)
    got = []
    for m in c:
        got.append(m.value)
        if len(got) >= want:
            break
    c.close()
    return got


def read_aiokafka(bootstrap, topic, want, isolation):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run():
        c = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation, auto_offset_reset="none"
        )
        await c.start()
        try:
            tp = TopicPartition(topic, 0)
            c.assign([tp])
            c.seek(tp, 0)
            got = []
            deadline = time.time() + 120
            while len(got) < want and time.time() < deadline:
                batches = await c.getmany(tp, timeout_ms=1000)
                for m in batches.get(tp, []):
                    got.append(m.value)
            return got
        finally:
            await c.stop()

    return asyncio.run(run())


def read(bootstrap, topic, n, client, isolation, upto=None):
    want = expected(n, isolation == "read_committed")
    if upto is not None:
        # Only offsets below UPTO (a topic restored from the bucket: the lost node's tail was
        # never copied). Offsets are dense from 0: the first half, then the two transactions
        # (each with its marker), then the rest.
        half = n // 2
        check(upto > half + 2 * (TXN + 1), f"offset {upto} is past both transactions")
        below = upto - 2 - (TXN if isolation == "read_committed" else 0)
        want = want[:below]
    reader = {"confluent": read_confluent, "kafka-python": read_kafka_python, "aiokafka": read_aiokafka}[client]
    got = reader(bootstrap, topic, len(want), isolation)
    expect_equal(f"{client} {isolation}: {len(got)} values read of {len(want)}", got, want)
    print(f"{client} {isolation}: read {len(got)} values from offset 0")


def timestamps(bootstrap, topic, n, upto=None):
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient({"bootstrap.servers": bootstrap})
    tp = TopicPartition(topic, 0)
    earliest = admin.list_offsets({tp: OffsetSpec.earliest()})[tp].result(30).offset
    expect_equal("earliest offset", earliest, 0)
    # Events 0 .. N/2 are the first offsets of the log: event i is at offset i.
    for i in [0, 1, n // 7, n // 3, n // 2 - 1]:
        info = admin.list_offsets({tp: OffsetSpec.for_timestamp(BASE_TS + i * 1000)})[tp].result(30)
        expect_equal(f"offset of timestamp {BASE_TS + i * 1000}", (info.offset, info.timestamp), (i, BASE_TS + i * 1000))
        # Between two events: the next one.
        info = admin.list_offsets({tp: OffsetSpec.for_timestamp(BASE_TS + i * 1000 + 1)})[tp].result(30)
        expect_equal(f"offset after timestamp {BASE_TS + i * 1000}", info.offset, i + 1)
    # The largest timestamp (ListOffsets -3): the last event's. (Not on a restored topic: all
    # of it is in the bucket, where the transaction markers' wall-clock timestamps are the
    # largest a copy records.)
    if upto is None:
        info = admin.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(30)
        expect_equal("max timestamp", info.timestamp, BASE_TS + (n - 1) * 1000)
    print("timestamps found in remote data")


def first_from(bootstrap, topic, start):
    """The first record a consumer assigned at START gets (one out of range resets to the
    earliest offset)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "tiered-deleted", "enable.auto.commit": False,
         "auto.offset.reset": "earliest"}
    )
    c.assign([TopicPartition(topic, 0, start)])
    first = None
    deadline = time.time() + 60
    while first is None and time.time() < deadline:
        m = c.poll(1.0)
        if m is not None and m.error() is None:
            first = m
    c.close()
    check(first is not None, f"a record from offset {start}")
    return (first.offset(), first.value())


def delete_records(bootstrap, topic, n, offset):
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    # What is at OFFSET before the deletion: in a cluster, Raft's own entries take offsets too,
    # so offset i need not hold event i.
    kept = first_from(bootstrap, topic, offset)
    expect_equal("the record at the cut", kept[0], offset)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    tp = TopicPartition(topic, 0, offset)
    low = admin.delete_records([tp])[tp].result(30).low_watermark
    expect_equal("low watermark after DeleteRecords", low, offset)
    tp = TopicPartition(topic, 0)
    earliest = admin.list_offsets({tp: OffsetSpec.earliest()})[tp].result(30).offset
    expect_equal("earliest offset after DeleteRecords", earliest, offset)
    # A consumer asking for offset 0 is out of range and resets to the new start.
    expect_equal("first record after DeleteRecords", first_from(bootstrap, topic, 0), kept)
    print(f"records below {offset} deleted, the bucket's included")


def main():
    cmd, bootstrap, topic, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if cmd == "produce":
        produce(bootstrap, topic, n, json.loads(sys.argv[5]), int(sys.argv[6]) if len(sys.argv) > 6 else 0)
    elif cmd == "read":
        read(bootstrap, topic, n, sys.argv[5], sys.argv[6], int(sys.argv[7]) if len(sys.argv) > 7 else None)
    elif cmd == "delete_records":
        delete_records(bootstrap, topic, n, int(sys.argv[5]))
    elif cmd == "expect":
        sys.stdout.write("".join(v.decode() + "\n" for v in expected(n, sys.argv[5] == "read_committed")))
    elif cmd == "timestamps":
        timestamps(bootstrap, topic, n, int(sys.argv[5]) if len(sys.argv) > 5 else None)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
