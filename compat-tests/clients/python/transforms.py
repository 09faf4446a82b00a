"""Inputs and expected outputs of the transform examples (transforms/examples), with
confluent-kafka (librdkafka) as the producer and the read_committed consumer.

  transforms.py topics BOOTSTRAP SPEC_JSON
      Creates topics: {"name": [partitions, {configs}], ...}.
  transforms.py produce BOOTSTRAP TOPIC N KIND [FROM]
      Produces events FROM (default 0) .. N-1 of KIND (events: JSON events; raw: JSON events with some invalid ones
      mixed in; users: the lookup table's records, N ignored) with an idempotent producer.
  transforms.py check BOOTSTRAP EXAMPLE N
      Reads every output topic of EXAMPLE to its end, read_committed, and compares what is
      there with what the example must write for the N events produced: each expected output
      record exactly once, nothing else.
  transforms.py count BOOTSTRAP TOPIC N
      Reads TOPIC to its end read_committed: every value "v-<i>" for i < N exactly once.
  transforms.py stream BOOTSTRAP TOPIC N [FROM]
      Produces values v-FROM .. v-(N-1) (FROM defaults to 0), keyed, acks=all, idempotent, 200 at a time with a
      flush between (so a broker killed meanwhile leaves records in flight).
"""

import json
import sys
import time
from collections import Counter

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from common import check, expect_equal

TYPES = ["page_view", "click", "signup", "purchase"]
USERS = {
    "user-0": {"name": "Ada", "plan": "pro", "country": "NO"},
    "user-1": {"name": "Brian", "plan": "free", "country": "SE"},
    "user-2": {"name": "Chen", "plan": "team", "country": "DK"},
    "user-3": {"name": "Dara", "plan": "free", "country": "IS"},
}
# user-4 was in the table and deleted (a tombstone); user-5 and user-6 never were.
GONE = "user-4"


def event(i):
    return {
        "event_id": f"evt-{i:06d}",
        "type": TYPES[i % 4],
        "user": f"user-{i % 7}",
        "ts": 1_700_000_000_000 + i,
        "email": f"person{i}@example.com",
        "context": {"ip": f"10.0.{i % 256}.{i % 200}", "agent": "sdk/1.2", "email": f"alt{i}@example.com"},
        "props": {"path": f"/p/{i % 13}", "n": i},
    }


def raw(i):
    """Every 5th event is invalid: not JSON (i % 10 == 0), or missing a required field."""
    if i % 10 == 0:
        return b"not json {" + str(i).encode()
    e = event(i)
    if i % 5 == 0:
        del e["user"]
    return json.dumps(e).encode()


def key(i):
    return f"user-{i % 7}".encode()


def create_topics(bootstrap, spec):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(name, num_partitions=p, replication_factor=-1, config=cfg) for name, (p, cfg) in spec.items()]
    for name, f in admin.create_topics(new, operation_timeout=30).items():
        f.result(60)


def producer(bootstrap):
    return Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5})


def produce(bootstrap, topic, n, kind, start=0):
    p = producer(bootstrap)
    errors = []

    def done(err, _msg):
        if err is not None:
            errors.append(err)

    if kind == "users":
        for uid, attrs in USERS.items():
            p.produce(topic, key=uid.encode(), value=json.dumps(attrs).encode(), on_delivery=done)
        p.produce(topic, key=GONE.encode(), value=json.dumps({"name": "Eve"}).encode(), on_delivery=done)
        p.produce(topic, key=GONE.encode(), value=None, on_delivery=done)
    else:
        for i in range(start, n):
            value = json.dumps(event(i)).encode() if kind == "events" else raw(i)
            p.produce(topic, key=key(i), value=value, timestamp=1_700_000_000_000 + i, on_delivery=done)
            p.poll(0)
    left = p.flush(60)
    check(left == 0 and not errors, f"every record delivered ({left} left, errors {errors})")
    print(f"produced to {topic}")


def read_all(bootstrap, topic):
    """Every record of every partition of `topic` up to its end, read_committed:
    [(partition, key, value, headers, timestamp)]."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{topic}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    md = c.list_topics(topic, timeout=30)
    parts = sorted(md.topics[topic].partitions)
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    at_end = set()
    out = []
    idle = 0
    while len(at_end) < len(parts):
        m = c.poll(1.0)
        if m is None:
            idle += 1
            check(idle < 60, f"{topic}: no end of partition after 60 s")
            continue
        if m.error():
            if m.error().code() == -191:  # _PARTITION_EOF
                at_end.add(m.partition())
                continue
            check(False, f"{topic}: {m.error()}")
        out.append((m.partition(), m.key(), m.value(), m.headers() or [], m.timestamp()[1]))
    c.close()
    return out


def parsed(records):
    """A multiset of (key, JSON value as canonical text) from records."""
    return Counter((k, json.dumps(json.loads(v), sort_keys=True)) for _p, k, v, _h, _t in records)


def canon(k, obj):
    return (k, json.dumps(obj, sort_keys=True))


def redact(v, fields):
    if isinstance(v, dict):
        return {k: (("***" if isinstance(x, str) else None) if k in fields else redact(x, fields)) for k, x in v.items()}
    if isinstance(v, list):
        return [redact(x, fields) for x in v]
    return v


def check_example(bootstrap, example, n):
    events = [(key(i), event(i)) for i in range(n)]
    if example == "identity":
        got = read_all(bootstrap, "identity-out")
        expect_equal("identity count", len(got), n)
        # Keys, values and timestamps as produced.
        want = Counter((key(i), json.dumps(event(i)).encode(), 1_700_000_000_000 + i) for i in range(n))
        expect_equal("identity records", Counter((k, v, t) for _p, k, v, _h, t in got), want)
    elif example == "filter":
        got = parsed(read_all(bootstrap, "purchases"))
        want = Counter(canon(k, e) for k, e in events if e["type"] == "purchase")
        expect_equal("filtered events", got, want)
    elif example == "enrich":
        got = parsed(read_all(bootstrap, "enriched"))
        want = Counter(canon(k, dict(e, user_info=USERS.get(e["user"]))) for k, e in events)
        expect_equal("enriched events", got, want)
    elif example == "redact":
        got = parsed(read_all(bootstrap, "redacted"))
        fields = {"email", "ip"}
        want = Counter(canon(k, redact(e, fields)) for k, e in events)
        expect_equal("redacted events", got, want)
        for _k, text in got:
            check("example.com" not in text and "10.0." not in text, f"nothing personal left: {text}")
    elif example == "route":
        for topic, kinds in [("page_view", {"page_view"}), ("click", {"click"}), ("route-rest", {"signup", "purchase"})]:
            got = parsed(read_all(bootstrap, topic))
            want = Counter(canon(k, e) for k, e in events if e["type"] in kinds)
            expect_equal(f"events routed to {topic}", got, want)
    elif example == "validate":
        valid = read_all(bootstrap, "valid")
        dead = read_all(bootstrap, "dead-letter")
        want_valid = Counter((key(i), raw(i)) for i in range(n) if i % 5 != 0)
        want_dead = Counter((key(i), raw(i)) for i in range(n) if i % 5 == 0)
        expect_equal("valid events", Counter((k, v) for _p, k, v, _h, _t in valid), want_valid)
        expect_equal("dead letters", Counter((k, v) for _p, k, v, _h, _t in dead), want_dead)
        for _p, _k, v, h, _t in dead:
            reasons = [x for hk, x in h if hk == "error"]
            check(len(reasons) == 1 and reasons[0], f"a dead letter says why: {v!r} {h!r}")
    else:
        sys.exit(f"unknown example {example}")
    print(f"{example}: outputs as expected for {n} events")


def stream(bootstrap, topic, n, start=0, pause_ms=0):
    """Produces v-start .. v-(n-1), 200 at a time; with `pause_ms`, pausing after each 200, so a
    test can act while input is still arriving."""
    p = producer(bootstrap)
    errors = []

    def done(err, _msg):
        if err is not None:
            errors.append(err)

    for i in range(start, n):
        p.produce(topic, key=f"k-{i % 50}".encode(), value=f"v-{i}".encode(), on_delivery=done)
        p.poll(0)
        if i % 200 == 199:
            p.flush(120)
            if pause_ms:
                time.sleep(pause_ms / 1000)
    left = p.flush(120)
    check(left == 0 and not errors, f"every record delivered ({left} left, errors {errors})")
    print(f"streamed {n} records to {topic}")


def count(bootstrap, topic, n):
    got = Counter(v.decode() for _p, _k, v, _h, _t in read_all(bootstrap, topic))
    dup = {v: c for v, c in got.items() if c > 1}
    missing = [i for i in range(n) if f"v-{i}" not in got]
    extra = [v for v in got if not v.startswith("v-") or int(v[2:]) >= n]
    check(not dup, f"no output twice: {list(dup.items())[:10]}")
    check(not missing, f"every input's output: {len(missing)} missing, first {missing[:10]}")
    check(not extra, f"nothing else: {extra[:10]}")
    print(f"{topic}: each of {n} outputs exactly once")


def main():
    cmd, bootstrap = sys.argv[1], sys.argv[2]
    if cmd == "topics":
        create_topics(bootstrap, json.loads(sys.argv[3]))
    elif cmd == "produce":
        produce(bootstrap, sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6]) if len(sys.argv) > 6 else 0)
    elif cmd == "check":
        check_example(bootstrap, sys.argv[3], int(sys.argv[4]))
    elif cmd == "stream":
        start = int(sys.argv[5]) if len(sys.argv) > 5 else 0
        pause_ms = int(sys.argv[6]) if len(sys.argv) > 6 else 0
        stream(bootstrap, sys.argv[3], int(sys.argv[4]), start, pause_ms)
    elif cmd == "count":
        count(bootstrap, sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
