"""Shared helpers of the Python client suites: the records every client
produces, and the checks made on what comes back."""

import os
import sys
import time
import uuid

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
PARTITIONS = 3
PER_CODEC = 60


def topic_name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def records():
    """(partition, key, value, headers) for every codec, in produce order."""
    out = []
    for codec in CODECS:
        for i in range(PER_CODEC):
            part = i % PARTITIONS
            key = f"{codec}-key-{i}".encode()
            # Values vary in size and repeat, so every codec really compresses.
            value = (f"{codec}-value-{i}-" * (1 + i % 9)).encode()
            headers = [("codec", codec.encode()), ("index", str(i).encode())]
            if i % 5 == 0:
                headers.append(("empty", b""))
            out.append((codec, part, key, value, headers))
    return out


def expect_equal(what, got, want):
    if got != want:
        print(f"MISMATCH in {what}:\n  got:  {got!r}\n  want: {want!r}", file=sys.stderr)
        sys.exit(1)


def check(cond, what):
    if not cond:
        print(f"CHECK FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def by_partition(recs):
    want = {p: [] for p in range(PARTITIONS)}
    for _codec, part, key, value, headers in recs:
        want[part].append((key, value, headers))
    return want


def wait_for(what, cond, timeout=60):
    """Polls `cond` until it holds, failing the suite after `timeout` s."""
    deadline = time.time() + timeout
    while not cond():
        check(time.time() < deadline, f"timed out waiting for {what}")
        time.sleep(0.05)


def covered_exactly_once(members, partitions):
    """Every partition is assigned to exactly one member, and each member has some."""
    seen = sorted(p for m in members for p in m.parts())
    return seen == list(range(partitions)) and all(m.parts() for m in members)


class GroupTopic:
    """A fresh topic for a group test, and the keys produced to it."""

    def __init__(self, bootstrap, prefix, partitions):
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic

        self.name = topic_name(prefix)
        self.group = f"group-{self.name}"
        self.partitions = partitions
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.admin.create_topics([NewTopic(self.name, num_partitions=partitions, replication_factor=1)])[self.name].result(30)
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        self.produced = set()

    def produce(self, tag, n):
        """n keyed records spread over every partition, acknowledged."""
        for i in range(n):
            key = f"{tag}-{i}"
            self.producer.produce(self.name, key=key.encode(), value=b"x" * 50, partition=i % self.partitions)
            self.produced.add(key)
        expect_equal("unflushed", self.producer.flush(30), 0)


def publish_assignment(out, partitions):
    """Atomically writes a member's current partitions for the suite to read."""
    with open(out + ".assign.tmp", "w") as f:
        f.write(" ".join(str(p) for p in sorted(partitions)))
    os.replace(out + ".assign.tmp", out + ".assign")
