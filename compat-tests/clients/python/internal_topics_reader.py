"""Reads __consumer_offsets and __transaction_state as raw records, the way
lag monitors and Kafka's formatters do, and decodes them with a decoder
written here from Apache Kafka's JSON schemas (OffsetCommitKey/Value,
GroupMetadataKey/Value, TransactionLogKey/Value). A commit made by one
client and a transaction made by another must read back field by field.

Usage: internal_topics_reader.py BOOTSTRAP"""

import struct
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.admin import AdminClient, NewTopic

from common import check, expect_equal, wait_for

INTERNAL_PARTITIONS = 50  # offsets.topic.num.partitions, transaction.state.log.num.partitions


class Buf:
    """Big-endian reader of Kafka's non-flexible encoding."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        check(self.pos + n <= len(self.data), f"record ends early at {self.pos}+{n} of {len(self.data)}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt):
        return struct.unpack(">" + fmt, self.take(struct.calcsize(">" + fmt)))[0]

    def string(self):
        n = self.unpack("h")
        return None if n < 0 else self.take(n).decode()

    def bytes(self):
        n = self.unpack("i")
        return None if n < 0 else self.take(n)

    def array(self, item):
        n = self.unpack("i")
        return None if n < 0 else [item() for _ in range(n)]

    def end(self):
        expect_equal("bytes left after the last field", len(self.data) - self.pos, 0)


def java_hash(s):
    """Java's String.hashCode (ASCII names here), as Kafka places keys."""
    h = 0
    for ch in s:
        h = (h * 31 + ord(ch)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= (1 << 31) else h


def partition_for(key):
    return (java_hash(key) & 0x7FFFFFFF) % INTERNAL_PARTITIONS


def read_all(bootstrap, topic, partition):
    """Every (key, value) of one partition, from its start to its end."""
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "raw-reader-" + uuid.uuid4().hex[:8],
        "enable.auto.commit": False,
    })
    low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
    out = []
    deadline = time.time() + 30
    pos = low
    while pos < high:
        check(time.time() < deadline, f"reading {topic}-{partition} stalled at {pos} of {high}")
        m = c.poll(0.5)
        if m is None:
            continue
        check(m.error() is None, f"fetch error {m.error()}")
        out.append((m.key(), m.value()))
        pos = m.offset() + 1
    c.close()
    return out


def decode_offsets_record(key, value):
    k = Buf(key)
    kv = k.unpack("h")
    if kv in (0, 1):
        rec = {"type": "offset", "key_version": kv, "group": k.string(), "topic": k.string(), "partition": k.unpack("i")}
        k.end()
        if value is None:
            return rec | {"value": None}
        v = Buf(value)
        vv = v.unpack("h")
        check(vv in (1, 3), f"OffsetCommitValue version {vv} (Kafka 3.9-4.x write 3, or 1 with an expire timestamp)")
        val = {"version": vv, "offset": v.unpack("q")}
        val["leader_epoch"] = v.unpack("i") if vv >= 3 else -1
        val["metadata"] = v.string()
        val["commit_timestamp"] = v.unpack("q")
        if vv == 1:
            val["expire_timestamp"] = v.unpack("q")
        v.end()
        return rec | {"value": val}
    if kv == 2:
        rec = {"type": "group", "key_version": kv, "group": k.string()}
        k.end()
        if value is None:
            return rec | {"value": None}
        v = Buf(value)
        vv = v.unpack("h")
        expect_equal("GroupMetadataValue version", vv, 3)
        val = {
            "version": vv,
            "protocol_type": v.string(),
            "generation": v.unpack("i"),
            "protocol": v.string(),
            "leader": v.string(),
            "current_state_timestamp": v.unpack("q"),
        }

        def member():
            return {
                "member_id": v.string(),
                "group_instance_id": v.string(),
                "client_id": v.string(),
                "client_host": v.string(),
                "rebalance_timeout": v.unpack("i"),
                "session_timeout": v.unpack("i"),
                "subscription": v.bytes(),
                "assignment": v.bytes(),
            }

        val["members"] = v.array(member)
        v.end()
        return rec | {"value": val}
    return {"type": "other", "key_version": kv}


def decode_txn_record(key, value):
    k = Buf(key)
    expect_equal("TransactionLogKey version", k.unpack("h"), 0)
    rec = {"transactional_id": k.string()}
    k.end()
    if value is None:
        return rec | {"value": None}
    v = Buf(value)
    vv = v.unpack("h")
    expect_equal("TransactionLogValue version", vv, 0)
    val = {
        "producer_id": v.unpack("q"),
        "producer_epoch": v.unpack("h"),
        "timeout_ms": v.unpack("i"),
        "status": v.unpack("b"),
        "partitions": v.array(lambda: (v.string(), v.array(lambda: v.unpack("i")))),
        "last_update_ms": v.unpack("q"),
        "start_ms": v.unpack("q"),
    }
    v.end()
    return rec | {"value": val}


def consumer_subscription_topics(data):
    """ConsumerProtocolSubscription: version, then topics [string] (what
    the embedded client sent; later versions add fields after these)."""
    b = Buf(data)
    b.unpack("h")
    return b.array(b.string)


def consumer_assignment(data):
    """ConsumerProtocolAssignment: version, then [topic, [partition]]."""
    b = Buf(data)
    b.unpack("h")
    return b.array(lambda: (b.string(), b.array(lambda: b.unpack("i"))))


def main():
    bootstrap = sys.argv[1]
    topic = "lag-" + uuid.uuid4().hex[:8]
    group = "lag-group-" + uuid.uuid4().hex[:8]
    txn_id = "lag-txn-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(20)
    started_ms = int(time.time() * 1000)

    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(5):
        p.produce(topic, value=f"v{i}".encode(), partition=0)
    p.flush(20)

    # One client commits as a member of a classic group.
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "client.id": "offsets-schema-client",
        "session.timeout.ms": 10000,
        "max.poll.interval.ms": 60000,
        "partition.assignment.strategy": "range",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    c.subscribe([topic])
    seen = []

    def consumed_five():
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            seen.append(m)
        return len(seen) >= 5

    wait_for("5 records", consumed_five)
    c.commit(offsets=[TopicPartition(topic, 0, 5, "lag-check")], asynchronous=False)

    # Another commits a transaction.
    tp = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "transaction.timeout.ms": 30000})
    tp.init_transactions(20)
    tp.begin_transaction()
    tp.produce(topic, value=b"in-txn", partition=0)
    tp.commit_transaction(20)
    done_ms = int(time.time() * 1000) + 1

    # A third reads both internal topics raw and decodes them.
    offsets = [decode_offsets_record(k, v) for k, v in read_all(bootstrap, "__consumer_offsets", partition_for(group))]
    commits = [r for r in offsets if r["type"] == "offset" and r["group"] == group]
    check(commits, f"no offset commit of {group} in {offsets}")
    last = commits[-1]
    expect_equal("offset key version", last["key_version"], 1)
    expect_equal("offset key", (last["topic"], last["partition"]), (topic, 0))
    expect_equal("offset value version", last["value"]["version"], 3)
    expect_equal("committed offset", last["value"]["offset"], 5)
    # confluent-kafka sends the metadata C string with its NUL terminator
    # (and cuts it there when reading it back); the record holds what it sent.
    expect_equal("commit metadata", last["value"]["metadata"], "lag-check\0")
    check(started_ms <= last["value"]["commit_timestamp"] <= done_ms, f"commit timestamp {last['value']}")

    groups = [r for r in offsets if r["type"] == "group" and r["group"] == group and r["value"]]
    check(groups, f"no group metadata of {group} in {offsets}")
    g = groups[-1]["value"]
    expect_equal("protocol type", g["protocol_type"], "consumer")
    expect_equal("protocol", g["protocol"], "range")
    check(g["generation"] >= 1, f"generation {g['generation']}")
    check(started_ms <= g["current_state_timestamp"] <= done_ms, f"state timestamp {g}")
    expect_equal("members", len(g["members"]), 1)
    m = g["members"][0]
    expect_equal("leader", g["leader"], m["member_id"])
    expect_equal("client id", m["client_id"], "offsets-schema-client")
    expect_equal("instance id", m["group_instance_id"], None)
    check(m["client_host"].startswith("/"), f"client host {m['client_host']}")
    expect_equal("timeouts", (m["rebalance_timeout"], m["session_timeout"]), (60000, 10000))
    expect_equal("subscription", consumer_subscription_topics(m["subscription"]), [topic])
    expect_equal("assignment", consumer_assignment(m["assignment"]), [(topic, [0])])

    txn = [decode_txn_record(k, v) for k, v in read_all(bootstrap, "__transaction_state", partition_for(txn_id))]
    states = [r["value"] for r in txn if r["transactional_id"] == txn_id]
    check(states, f"no state of {txn_id} in {txn}")
    statuses = [s["status"] for s in states]
    # Kafka's TransactionState ids: Empty 0, Ongoing 1, PrepareCommit 2, CompleteCommit 4.
    expect_equal("transaction states", statuses, [0, 1, 2, 4])
    expect_equal("one producer id", len({s["producer_id"] for s in states}), 1)
    expect_equal("timeout", {s["timeout_ms"] for s in states}, {30000})
    expect_equal("Empty has null partitions", states[0]["partitions"], None)
    expect_equal("partitions of the open transaction", states[1]["partitions"], [(topic, [0])])
    check(states[1]["start_ms"] >= started_ms, f"start timestamp {states[1]}")
    expect_equal("partitions after the commit", states[3]["partitions"], [])
    c.close()
    print("suite passed")


if __name__ == "__main__":
    main()
