#!/usr/bin/env python3
"""WASM transforms inside the broker against the same work done by a client beside it.

Starts one release broker (with its admin API) on a temp data dir and measures, in the same
run, two ways of turning a topic of JSON events into another:

- wasm: a transform deployed with fjordctl (transforms/examples: `identity`, which copies every
  record, and `enrich`, which adds each event's user's attributes from a lookup table on a
  compacted `users` topic), running beside the input partitions' leaders;
- client loop: a Python (confluent-kafka) consume-transform-produce process doing the same work
  exactly once: read_committed consumer, transactional producer, the consumed offsets sent in
  each transaction (send_offsets_to_transaction), one transaction per batch of at most 500
  records; for enrichment, a dict of the users topic loaded when it starts.

1. Throughput: EVENTS events (JSON tracking events of about 300 bytes keyed by user id, the
   shape tiered.py writes, with the user id in a `user` field as the enrich example reads it;
   partitioned by murmur2 of the key, as Java clients and the transforms' outputs do) are
   written to a 3-partition topic first; then each of the four (client loop and wasm, for
   identity and for enrich) starts from the earliest offset, and the time from its start (the
   process spawned, or `fjordctl transform deploy`) until its committed input offset reaches the
   end of every partition gives records/s. Broker and client-loop CPU over the same interval
   give the CPU each record took.
2. Added latency: each of the four again, alone and caught up on an empty topic, while events
   are produced at a fixed rate (RATE/s for SECONDS s), each carrying its send time in a header;
   a read_committed consumer of the input and of the output records send -> consumed latency per
   record. The input's own latency is the floor: what a consumer of the input sees without
   anything in between.

    export CARGO_TARGET_DIR=/root/.cache/fjord/target
    cargo build --release -p fjord-broker --bin fjord -p fjord-cli --bin fjordctl
    CARGO_TARGET_DIR=/root/.cache/fjord/wasm-target transforms/examples/build.sh
    .venv/bin/python bench/scripts/transforms.py [--events 500000] [--users 5000] [--rate 2000] [--seconds 20]

Prints progress once a second and the tables at the end, and writes transforms-latency.svg
(send -> output latency CDF of each) and transforms-throughput.svg (input records committed over
time) to --out (default bench/results/).

The same file is the client loop: `transforms.py --loop identity|enrich --bootstrap ... --input
... --output ... --group ... --txn-id ...` (the benchmark starts it as a process of its own).
"""
import argparse
import importlib.util
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from confluent_kafka import (OFFSET_BEGINNING, OFFSET_END, Consumer, ConsumerGroupTopicPartitions, KafkaException,
                             Producer, TopicPartition)
from confluent_kafka.admin import NewTopic

_spec = importlib.util.spec_from_file_location(
    "cluster_vs_single", os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster-vs-single.py"))
cvs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cvs)

PARTITIONS = 3
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", "/root/.cache/fjord/target")
WASM = "/root/.cache/fjord/wasm-target/wasm32-wasip1/release"
# One transaction per batch of at most this many records (the transform's own per-call limit).
LOOP_BATCH = 500
SENT = "sent_ns"  # the header carrying an event's send time (time.time_ns(), decimal)
SEQ = "seq"  # the header numbering the events of the latency runs
WARMUP = "warmup"
# The order the four run in; each mode's display name.
MODES = [("loop-identity", "client loop, identity"), ("wasm-identity", "wasm identity"),
         ("loop-enrich", "client loop, enrich"), ("wasm-enrich", "wasm enrich")]


def user_id(i, users):
    return f"u-{(i * 7919) % users:06d}"


def event(i, users):
    return json.dumps({
        "event_id": f"evt-{i:010d}",
        "type": ["page_view", "click", "add_to_cart", "purchase", "signup"][i % 5],
        "user": user_id(i, users),
        "session_id": f"s-{(i * 104729) % 1_000_000:07d}",
        "ts": 1_700_000_000_000 + i * 13,
        "context": {"ip": f"10.{i % 256}.{(i // 256) % 256}.{i % 97}", "ua": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5)",
                    "locale": ["en-US", "de-DE", "fr-FR", "ja-JP"][i % 4]},
        "properties": {"path": f"/products/{(i * 31) % 5000}", "price": round((i % 1000) * 0.37, 2),
                       "currency": "EUR", "referrer": ["google", "newsletter", "direct", "ads"][i % 4]},
    }).encode()


def user_attributes(u):
    return json.dumps({
        "name": f"User {u}", "email": f"user{u}@example.com", "tier": ["free", "plus", "pro", "enterprise"][u % 4],
        "country": ["DE", "FR", "US", "JP", "BR"][u % 5], "signup_ts": 1_600_000_000_000 + u * 86_400_000,
        "segments": [["new", "returning"][u % 2], ["mobile", "desktop", "tablet"][u % 3]],
    }).encode()


# ---------------------------------------------------------------------------------------------
# The client loop (its own process)

def enrich(value, users):
    """What transforms/examples/enrich does, in Python: the user's attributes as `user_info`."""
    ev = json.loads(value)
    if not isinstance(ev, dict):
        raise ValueError("the event is not a JSON object")
    user = ev.get("user")
    if isinstance(user, bool) or not isinstance(user, (str, int, float)):
        user = None
    ev["user_info"] = users.get(str(user)) if user is not None else None
    return json.dumps(ev, separators=(",", ":")).encode()


def load_users(bootstrap, topic):
    """The users topic read whole: user id -> attributes (parsed), tombstones applied."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    users = {}
    left = {p for p, e in ends.items() if e > 0}
    while left:
        for m in c.consume(1000, 1.0):
            if m.error():
                continue
            if m.value() is None:
                users.pop(m.key().decode(), None)
            else:
                users[m.key().decode()] = json.loads(m.value())
            if m.offset() + 1 >= ends[m.partition()]:
                left.discard(m.partition())
    c.close()
    return users


def client_loop(a):
    users = load_users(a.bootstrap, a.users_topic) if a.loop == "enrich" else None
    work = (lambda v: v) if users is None else (lambda v: v if v is None else enrich(v, users))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": a.group, "isolation.level": "read_committed",
                  "enable.auto.commit": False, "auto.offset.reset": a.reset})
    # murmur2: the partition the transform (Kafka's default partitioner) picks for the same key.
    p = Producer({"bootstrap.servers": a.bootstrap, "transactional.id": a.txn_id, "linger.ms": 5,
                  "partitioner": "murmur2_random"})
    p.init_transactions(30)
    parts = c.list_topics(a.input, timeout=10).topics[a.input].partitions
    c.assign([TopicPartition(a.input, q) for q in parts])  # from the group's committed offsets
    print("ready", flush=True)
    while not stop:
        first = c.poll(0.2)
        if first is None:
            continue
        # Whatever else has arrived, without waiting: the transform's fetches do not wait either.
        batch = [m for m in [first] + c.consume(LOOP_BATCH - 1, 0) if not m.error()]
        if not batch:
            continue
        positions = {}
        p.begin_transaction()
        for m in batch:
            _, ts = m.timestamp()
            while True:
                try:
                    p.produce(a.output, work(m.value()), key=m.key(), headers=m.headers() or [], timestamp=ts)
                    break
                except BufferError:
                    p.poll(0.01)
            positions[m.partition()] = m.offset() + 1
        p.send_offsets_to_transaction([TopicPartition(a.input, q, o) for q, o in positions.items()],
                                      c.consumer_group_metadata())
        p.commit_transaction()
    c.close()


# ---------------------------------------------------------------------------------------------
# The benchmark

def admin_get(addr, path):
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=10) as r:
        return json.loads(r.read())


def cpu_seconds(pid):
    """utime + stime of a process (and its waited-for children), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, a, work):
        self.a = a
        self.work = work
        self.procs = []

    def start_broker(self):
        port, self.admin_addr = cvs.free_port(), f"127.0.0.1:{cvs.free_port()}"
        data = os.path.join(self.work, "node")
        log = open(data + ".log", "w")
        self.broker = subprocess.Popen(
            [self.a.broker, "--data-dir", data, "--listen", f"127.0.0.1:{port}", "--admin-listen", self.admin_addr]
            + self.a.broker_arg, stdout=subprocess.DEVNULL, stderr=log)
        self.procs.append(self.broker)
        self.bootstrap = f"127.0.0.1:{port}"
        self.admin = cvs.wait_for(self.bootstrap, 1)

    def create(self, topics, config=None):
        for f in self.admin.create_topics([NewTopic(t, PARTITIONS, 1, config=config or {}) for t in topics]).values():
            f.result(30)
        for t in topics:
            cvs.wait_for_leaders(self.admin, t, PARTITIONS)

    def view(self, name):
        """The admin API's view of a transform; a transform that is not running ends the benchmark."""
        view = admin_get(self.admin_addr, f"/v1/transforms/{name}")
        if view["state"] != "running":
            sys.exit(f"{name}: {view['state']}: {view.get('error')}")
        return view

    def fjordctl(self, *args):
        out = subprocess.run([self.a.fjordctl, "--admin-url", f"http://{self.admin_addr}", "--brokers", self.bootstrap,
                              "transform", *args], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"fjordctl transform {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout

    def deploy(self, name, kind, input, output, start):
        args = ["deploy", name, "--input", input, "--output", output,
                "--module", os.path.join(self.a.modules, f"{kind}.wasm"), "--from", start]
        if kind == "enrich":
            args += ["--lookup", "users"]
        self.fjordctl(*args)

    def spawn_loop(self, kind, input, output, group, reset):
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--loop", kind, "--bootstrap", self.bootstrap, "--input", input,
             "--output", output, "--group", group, "--txn-id", f"{group}-txn", "--reset", reset],
            stdout=subprocess.PIPE, stderr=open(os.path.join(self.work, f"{group}.log"), "w"), text=True)
        self.procs.append(proc)
        return proc

    def stop_loop(self, proc):
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.procs.remove(proc)

    def produce_backlog(self):
        a = self.a
        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 20, "batch.size": 256 * 1024,
                      "partitioner": a.partitioner})
        for u in range(a.users):
            p.produce("users", user_attributes(u), key=f"u-{u:06d}")
            p.poll(0)
        p.flush(60)
        print(f"users: {a.users} users' attributes written (compacted topic)", flush=True)
        t0 = time.time()
        for i in range(a.events):
            uid = user_id(i, a.users)
            while True:
                try:
                    p.produce("events", event(i, a.users), key=uid)
                    break
                except BufferError:
                    p.poll(0.1)
            if i % 50_000 == 0:
                print(f"events: {i}/{a.events} written", flush=True)
                p.poll(0)
        p.flush(120)
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "unused"})
        self.ends = {q: c.get_watermark_offsets(TopicPartition("events", q), timeout=10)[1] for q in range(PARTITIONS)}
        c.close()
        size = sum(len(event(i, a.users)) for i in range(0, a.events, max(1, a.events // 1000)))
        self.event_bytes = size / len(range(0, a.events, max(1, a.events // 1000)))
        print(f"events: {sum(self.ends.values())} written in {time.time() - t0:.1f} s "
              f"(about {self.event_bytes:.0f} bytes each), per partition {list(self.ends.values())}", flush=True)

    def throughput(self, mode, label, r):
        """Runs `mode` over the backlog from the earliest offset, as round `r` (fresh output topic,
        group and transform name): records/s, seconds, CPU and the timeline of records committed."""
        kind = mode.split("-")[1]
        name, output = f"{mode}-{r}", f"{mode}-out-{r}"
        total = sum(self.ends.values())
        broker_cpu0 = cpu_seconds(self.broker.pid)
        t0 = time.time()
        # Progress: the input offsets committed in the consumer group the work commits to, read
        # the same way for both (without waiting for a transaction in flight: the admin API's
        # view waits for it, which would see the end late by up to its retries). The transform's
        # view is checked every second (a paused transform ends the benchmark) and at the end.
        if mode.startswith("wasm"):
            self.deploy(name, kind, "events", output, "earliest")
            deployed = time.time() - t0
            group = f"__fjord.transform.{name}.{self.view(name)['id']}"
        else:
            group = f"{name}-group"
            proc = self.spawn_loop(kind, "events", output, group, "earliest")
            deployed = None
        request = [ConsumerGroupTopicPartitions(group, [TopicPartition("events", q) for q in range(PARTITIONS)])]

        def committed():
            if not mode.startswith("wasm") and proc.poll() is not None:
                sys.exit(f"{name}: the client loop exited with {proc.returncode} (see {self.work}/{group}.log)")
            try:
                got = self.admin.list_consumer_group_offsets(request, require_stable=False)[group].result(10)
            except KafkaException:
                return None
            return {tp.partition: tp.offset if tp.offset >= 0 else None for tp in got.topic_partitions}
        timeline = []  # (seconds since start, records committed)
        next_report = t0 + 1
        last = done = 0
        best = {q: 0 for q in self.ends}  # an answer without an offset keeps the last one
        slowest = 0.0  # the longest progress query: how late the end may be seen
        while True:
            asked = time.time()
            c = committed()
            now = time.time()
            slowest = max(slowest, now - asked)
            for q, o in (c or {}).items():
                if o is not None and q in best:
                    best[q] = max(best[q], min(o, self.ends[q]))
            done = sum(best.values())
            timeline.append((now - t0, done))
            if done >= total:
                break
            if now >= next_report:
                if mode.startswith("wasm"):
                    self.view(name)
                print(f"  {label}: {now - t0:5.1f}s {done:9d}/{total} committed ({done - last} since the last line)",
                      flush=True)
                last = done
                next_report += 1
            if now - t0 > self.a.timeout:
                sys.exit(f"{name}: not done after {self.a.timeout} s")
            time.sleep(0.05)
        secs = time.time() - t0
        broker_cpu = cpu_seconds(self.broker.pid) - broker_cpu0
        client_cpu = 0.0
        if mode.startswith("wasm"):
            view = self.view(name)
            at = {p["partition"]: p["committed_offset"] for p in view["partitions"]}
            if any(at.get(q) != e for q, e in self.ends.items()):
                sys.exit(f"{name}: the admin API shows committed offsets {at}, the input ends at {self.ends}")
            self.fjordctl("delete", name)
        else:
            client_cpu = cpu_seconds(proc.pid)
            self.stop_loop(proc)
        self.check_output(name, output, kind)
        rate = total / secs
        # Past the start (process, connections, lookup table, deploy): the rate between 10% and
        # 90% committed.
        t10 = next(t for t, v in timeline if v >= total * 0.1)
        t90 = next(t for t, v in timeline if v >= total * 0.9)
        first = next(t for t, v in timeline if v > 0)
        steady = total * 0.8 / max(t90 - t10, 1e-3)
        extra = f", deployed in {deployed:.2f} s" if deployed is not None else ""
        print(f"  {label}: {total} records in {secs:.1f} s = {rate:,.0f} records/s ({steady:,.0f}/s from 10% to 90%, "
              f"first commit seen after {first:.1f} s); CPU broker {broker_cpu:.1f} s, client {client_cpu:.1f} s{extra}; "
              f"slowest progress query {slowest:.2f} s", flush=True)
        return {"rate": rate, "steady": steady, "secs": secs, "first": first, "broker_cpu": broker_cpu,
                "client_cpu": client_cpu, "timeline": timeline, "deploy": deployed}

    def check_output(self, name, topic, kind):
        """A few output records, read back: the work was done (an enriched event has its user's
        attributes)."""
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "unused", "isolation.level": "read_committed"})
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        msgs = []
        deadline = time.time() + 10
        while len(msgs) < 5 and time.time() < deadline:
            msgs += [m for m in c.consume(5, 1.0) if not m.error()]
        c.close()
        if not msgs:
            sys.exit(f"{name}: nothing in {topic}")
        for m in msgs:
            ev = json.loads(m.value())
            if kind == "enrich" and not (isinstance(ev.get("user_info"), dict) and ev["user_info"].get("name")):
                sys.exit(f"{name}: not enriched: {m.value()[:200]}")
            if kind == "identity" and "user_info" in ev:
                sys.exit(f"{name}: {m.value()[:200]}")

    def latency(self):
        """All four at once, each on its own input topic (`MODE-live`), started at its end and
        caught up; events go to one at a time at the fixed rate, in slices that rotate through
        the four (so each sees the machine's load of the whole phase). Per mode: (input latencies,
        output latencies, records sent), in ms, sorted."""
        a = self.a
        loops = {}
        for mode, label in MODES:
            kind = mode.split("-")[1]
            if mode.startswith("wasm"):
                self.deploy(f"{mode}-live", kind, f"{mode}-live", f"{mode}-live-out", "latest")
            else:
                loops[mode] = self.spawn_loop(kind, f"{mode}-live", f"{mode}-live-out", f"{mode}-live-group", "latest")
        for mode, proc in loops.items():
            if proc.stdout.readline().strip() != "ready":
                sys.exit(f"{mode}: the client loop did not start (see {self.work})")
        outputs = {f"{m}-live-out": m for m, _ in MODES}
        inputs = {f"{m}-live": m for m, _ in MODES}
        lat_in = {m: [] for m, _ in MODES}
        lat_out = {m: [] for m, _ in MODES}
        # Where the time goes: the live topics stamp records with their append time
        # (LogAppendTime), so each output record gives send -> input appended -> output appended
        # -> consumed. seq -> input append ms; per mode, (seq, sent ns, output append ms, consumed ns).
        in_append = {}
        stages = {m: [] for m, _ in MODES}
        warm = set()
        stop = []
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "unused", "isolation.level": "read_committed",
                      "enable.auto.commit": False, "fetch.wait.max.ms": 100})
        c.assign([TopicPartition(t, q, OFFSET_END) for t in inputs for q in range(PARTITIONS)]
                 + [TopicPartition(t, q, OFFSET_BEGINNING) for t in outputs for q in range(PARTITIONS)])

        def consume():
            while not stop:
                m = c.poll(0.1)
                if m is None or m.error():
                    continue
                now = time.time_ns()
                headers = dict(m.headers() or [])
                if WARMUP in headers:
                    if m.topic() in outputs:
                        warm.add(outputs[m.topic()])
                    continue
                if SENT in headers:
                    sent = int(headers[SENT])
                    ms = (now - sent) / 1e6
                    seq = int(headers[SEQ])
                    if m.topic() in outputs:
                        lat_out[outputs[m.topic()]].append(ms)
                        stages[outputs[m.topic()]].append((seq, sent, m.timestamp()[1], now))
                    else:
                        lat_in[inputs[m.topic()]].append(ms)
                        in_append[seq] = m.timestamp()[1]

        reader = threading.Thread(target=consume)
        reader.start()
        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 1, "partitioner": a.partitioner})
        labels = dict(MODES)
        n = 1_000_000_000
        try:
            # Warm up: until a record has gone all the way through each (the transform or loop has
            # its position, its connections, its lookup table), then a second of the rate each.
            deadline = time.time() + 60
            while len(warm) < len(MODES):
                if time.time() > deadline:
                    sys.exit(f"no output within 60 s from {[m for m, _ in MODES if m not in warm]}")
                for mode, _ in MODES:
                    if mode not in warm:
                        p.produce(f"{mode}-live", event(n, a.users), key=user_id(n, a.users), headers=[(WARMUP, b"1")])
                        n += 1
                p.flush(5)
                time.sleep(0.2)
            for mode, _ in MODES:
                for _ in range(a.rate):
                    p.produce(f"{mode}-live", event(n, a.users), key=user_id(n, a.users), headers=[(WARMUP, b"1")])
                    n += 1
                    p.poll(0)
                    time.sleep(1 / a.rate)
            p.flush(10)
            time.sleep(1)
            per_slice = int(a.rate * a.seconds / a.rounds)
            for r in range(a.rounds):
                for mode, _ in MODES[r % len(MODES):] + MODES[:r % len(MODES)]:
                    before = len(lat_out[mode])
                    t0 = time.time()
                    next_report = t0 + 1
                    for j in range(per_slice):
                        wait = t0 + j / a.rate - time.time()
                        if wait > 0:
                            time.sleep(wait)
                        p.produce(f"{mode}-live", event(n, a.users), key=user_id(n, a.users),
                                  headers=[(SEQ, str(n).encode()), (SENT, str(time.time_ns()).encode())])
                        n += 1
                        p.poll(0)
                        if time.time() >= next_report:
                            recent = sorted(lat_out[mode][-a.rate:])
                            p50 = f"{cvs.pct(recent, 0.5):.1f} ms" if recent else "-"
                            print(f"  round {r + 1}/{a.rounds}, {labels[mode]}: {time.time() - t0:3.0f}s sent {j + 1}, "
                                  f"through {len(lat_out[mode]) - before}, recent p50 {p50}", flush=True)
                            next_report += 1
                    p.flush(30)
                    # Everything through before the next one starts.
                    deadline = time.time() + 30
                    while len(lat_out[mode]) - before < per_slice and time.time() < deadline:
                        time.sleep(0.05)
                    got = sorted(lat_out[mode][before:])
                    if got:
                        print(f"  round {r + 1}/{a.rounds}, {labels[mode]}: {len(got)}/{per_slice} through, "
                              f"p50 {cvs.pct(got, 0.5):.1f} ms, p99 {cvs.pct(got, 0.99):.1f} ms", flush=True)
        finally:
            stop.append(1)
            reader.join()
            c.close()
        for mode, proc in loops.items():
            self.stop_loop(proc)
        for mode, _ in MODES:
            if mode.startswith("wasm"):
                self.fjordctl("delete", f"{mode}-live")
        count = per_slice * a.rounds
        split = {}
        for mode, _ in MODES:
            rows = [(in_append[seq] - sent / 1e6, out_ts - in_append[seq], now / 1e6 - out_ts)
                    for seq, sent, out_ts, now in stages[mode] if seq in in_append]
            split[mode] = [sorted(r[k] for r in rows) for k in range(3)]
        return {m: (sorted(lat_in[m]), sorted(lat_out[m]), count, split[m]) for m, _ in MODES}


# ---------------------------------------------------------------------------------------------
# Plots (hand-written SVG, as the other scripts draw theirs)

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#7f7f7f"]
DASHES = ["", "", "6 3", "6 3", "2 3"]


def cdf_svg(series, path, title):
    """One line per series: the fraction of records (y, on a scale of nines so the tail shows) with
    at most x ms of latency (x on a log scale)."""
    w, h, pad, left = 720, 380, 40, 56
    legend = 24 + 16 * len(series)  # below the plot
    lo = max(0.1, min(s[0] for _, s in series if s))
    hi = max(s[-1] for _, s in series if s)
    lx0, lx1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    nines = 4  # the top of the plot: 0.9999
    x = lambda v: left + (w - left - pad) * (math.log10(max(v, 10 ** lx0)) - lx0) / max(1, lx1 - lx0)
    y = lambda f: h - pad - (h - 2 * pad) * min(nines, -math.log10(max(1 - f, 10 ** -nines))) / nines
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + legend}" font-family="sans-serif" '
           'font-size="12">', f'<rect width="{w}" height="{h + legend}" fill="white"/>',
           f'<text x="{left}" y="20">{title}</text>']
    for d in range(lx0, lx1 + 1):
        px = x(10 ** d)
        out.append(f'<line x1="{px:.1f}" y1="{pad}" x2="{px:.1f}" y2="{h - pad}" stroke="#ddd"/>')
        out.append(f'<text x="{px - 8:.1f}" y="{h - pad + 16}">{10 ** d:g}</text>')
    for f in (0, 0.5, 0.9, 0.99, 0.999, 0.9999):
        out.append(f'<line x1="{left}" y1="{y(f):.1f}" x2="{w - pad}" y2="{y(f):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="4" y="{y(f) + 4:.1f}">p{f * 100:g}</text>')
    for k, (label, s) in enumerate(series):
        if not s:
            continue
        n = len(s)
        # Every record near the top (the tail), a sample of the rest.
        idx = sorted(set(range(0, n, max(1, n // 400))) | set(range(max(0, n - 400), n)))
        pts = [(x(s[i]), y(i / n)) for i in idx] + [(x(s[-1]), y(1))]
        dash = f' stroke-dasharray="{DASHES[k]}"' if DASHES[k] else ""
        out.append(f'<polyline fill="none" stroke="{COLORS[k]}" stroke-width="2"{dash} points="'
                   + " ".join(f"{px:.1f},{py:.1f}" for px, py in pts) + '"/>')
        out.append(f'<line x1="{left}" y1="{h + 12 + 16 * k}" x2="{left + 30}" y2="{h + 12 + 16 * k}" '
                   f'stroke="{COLORS[k]}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{left + 38}" y="{h + 16 + 16 * k}">{label}</text>')
    out.append(f'<text x="{w // 2 - 80}" y="{h - 8}">send -> consumed, ms (log scale)</text></svg>')
    with open(path, "w") as f:
        f.write("\n".join(out))


def progress_svg(series, path, title):
    """Records committed (y) over seconds since the start (x), one line per series."""
    w, h, pad, left = 720, 360, 40, 64
    legend = 24 + 16 * len(series)  # below the plot
    top = max(v for _, s in series for _, v in s) or 1
    end = max(t for _, s in series for t, _ in s) or 1
    x = lambda t: left + (w - left - pad) * t / end
    y = lambda v: h - pad - (h - 2 * pad) * v / top
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + legend}" font-family="sans-serif" '
           'font-size="12">', f'<rect width="{w}" height="{h + legend}" fill="white"/>',
           f'<text x="{left}" y="20">{title}</text>']
    for i in range(0, 5):
        v = top * i / 4
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{w - pad}" y2="{y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="4" y="{y(v) + 4:.1f}">{v:,.0f}</text>')
    tick = max(1, round(end / 8))
    for t in range(0, int(end) + 1, tick):
        out.append(f'<text x="{x(t) - 4:.1f}" y="{h - pad + 16}">{t}</text>')
    for k, (label, s) in enumerate(series):
        dash = f' stroke-dasharray="{DASHES[k]}"' if DASHES[k] else ""
        out.append(f'<polyline fill="none" stroke="{COLORS[k]}" stroke-width="2"{dash} points="'
                   + " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in s) + '"/>')
        out.append(f'<line x1="{left}" y1="{h + 12 + 16 * k}" x2="{left + 30}" y2="{h + 12 + 16 * k}" '
                   f'stroke="{COLORS[k]}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{left + 38}" y="{h + 16 + 16 * k}">{label}</text>')
    out.append(f'<text x="{w // 2 - 20}" y="{h - 8}">seconds</text></svg>')
    with open(path, "w") as f:
        f.write("\n".join(out))


# ---------------------------------------------------------------------------------------------

def find_fjordctl():
    for build in ("release", "debug"):
        path = os.path.join(TARGET, build, "fjordctl")
        if os.path.exists(path):
            return path
    return os.path.join(TARGET, "release", "fjordctl")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", default=os.path.join(TARGET, "release", "fjord"))
    ap.add_argument("--fjordctl", default=find_fjordctl())
    ap.add_argument("--modules", default=WASM, help="where identity.wasm and enrich.wasm are")
    ap.add_argument("--events", type=int, default=500_000, help="events written first, for throughput")
    ap.add_argument("--users", type=int, default=5_000, help="users in the lookup table")
    ap.add_argument("--rate", type=int, default=2_000, help="events/s during the latency runs")
    ap.add_argument("--seconds", type=int, default=20, help="seconds of events at --rate through each")
    ap.add_argument("--rounds", type=int, default=3,
                    help="throughput runs of each, and slices of each's latency run, taken in turn")
    ap.add_argument("--partitioner", default="murmur2_random",
                    help="librdkafka partitioner of the events' producers: murmur2_random (the Java client's "
                         "default, which the transforms' outputs use too) or consistent_random (librdkafka's)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds any one throughput run may take")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    ap.add_argument("--broker-arg", action="append", default=[], help="a flag for the broker (repeatable)")
    ap.add_argument("--data-parent", default=None, help="where the broker's temp data dir goes")
    # The client loop's own arguments (see the module's doc).
    ap.add_argument("--loop", choices=["identity", "enrich"], help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--group", help=argparse.SUPPRESS)
    ap.add_argument("--txn-id", help=argparse.SUPPRESS)
    ap.add_argument("--reset", default="earliest", help=argparse.SUPPRESS)
    ap.add_argument("--users-topic", default="users", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.loop:
        return client_loop(a)

    for what, path, build in [
            ("broker", a.broker, "cargo build --release -p fjord-broker --bin fjord"),
            ("fjordctl", a.fjordctl, "cargo build --release -p fjord-cli --bin fjordctl"),
            ("identity module", os.path.join(a.modules, "identity.wasm"),
             "CARGO_TARGET_DIR=/root/.cache/fjord/wasm-target transforms/examples/build.sh"),
            ("enrich module", os.path.join(a.modules, "enrich.wasm"),
             "CARGO_TARGET_DIR=/root/.cache/fjord/wasm-target transforms/examples/build.sh")]:
        if not os.path.exists(path):
            sys.exit(f"no {what} at {path}: build it with `{build}`")
    os.makedirs(a.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="fjord-transforms-bench-", dir=a.data_parent)
    b = Bench(a, work)
    finished = False
    try:
        b.start_broker()
        print(f"broker {a.broker} on {b.bootstrap}, admin API on {b.admin_addr}, data in {work}", flush=True)
        b.create(["events"] + [f"{m}-out-{r}" for m, _ in MODES for r in range(a.rounds)])
        b.create([f"{m}-live" for m, _ in MODES] + [f"{m}-live-out" for m, _ in MODES],
                 {"message.timestamp.type": "LogAppendTime"})
        b.create(["users"], {"cleanup.policy": "compact"})
        b.produce_backlog()
        tput = {m: [] for m, _ in MODES}
        for r in range(a.rounds):
            print(f"throughput, round {r + 1}/{a.rounds}: each reads the {a.events} events from the earliest offset",
                  flush=True)
            for mode, label in MODES:
                tput[mode].append(b.throughput(mode, label, r))
        print(f"added latency: {a.rate} events/s, {a.seconds} s through each in {a.rounds} slices, one at a time, "
              "each caught up", flush=True)
        lat = b.latency()
        finished = True
    finally:
        for p in b.procs:
            p.terminate()
        for p in b.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if finished:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work} (the broker's and the client loops' logs)", file=sys.stderr)

    total = a.events
    med = statistics.median
    rng = lambda xs: f"{min(xs):.2f}–{max(xs):.2f}"
    print(f"\n{total} events of about {b.event_bytes:.0f} bytes, {PARTITIONS} partitions, {a.users} users, "
          f"{a.rounds} rounds; records/s from the start (process spawned, or deploy) until every input offset is "
          "committed, median of the rounds; the ratio is each round's wasm ÷ the same round's client loop:\n")
    print("| work | client loop records/s | wasm transform records/s | wasm ÷ client loop (rounds) | "
          "10%–90% committed: client loop | wasm | wasm ÷ client loop | "
          "CPU µs per record: client loop (its process + broker) | wasm (broker) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind in ("identity", "enrich"):
        lp, wa = tput[f"loop-{kind}"], tput[f"wasm-{kind}"]
        ratio = [w["rate"] / l["rate"] for w, l in zip(wa, lp)]
        steady = [w["steady"] / l["steady"] for w, l in zip(wa, lp)]
        lp_client = med([x["client_cpu"] for x in lp]) / total * 1e6
        lp_broker = med([x["broker_cpu"] for x in lp]) / total * 1e6
        wa_cpu = med([x["broker_cpu"] for x in wa]) / total * 1e6
        print(f"| {kind} | {med([x['rate'] for x in lp]):,.0f} | {med([x['rate'] for x in wa]):,.0f} | "
              f"**{med(ratio):.2f}** ({rng(ratio)}) | {med([x['steady'] for x in lp]):,.0f} | "
              f"{med([x['steady'] for x in wa]):,.0f} | {med(steady):.2f} ({rng(steady)}) | "
              f"{lp_client + lp_broker:.1f} ({lp_client:.1f} + {lp_broker:.1f}) | {wa_cpu:.1f} |")
    print(f"\n{a.rate} events/s, {a.seconds} s through each (slices of {a.seconds / a.rounds:g} s in turn); "
          "send -> consumed by a read_committed consumer, ms:\n")
    print("| path | p50 | p99 | p99.9 | max | added to the input's p50 / p99 | through |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    every_in = sorted(v for mode, _ in MODES for v in lat[mode][0])
    for mode, label in MODES:
        _lin, lout, count, _split = lat[mode]
        print(f"| {label} | {cvs.pct(lout, 0.5):.1f} | {cvs.pct(lout, 0.99):.1f} | {cvs.pct(lout, 0.999):.1f} | "
              f"{lout[-1]:.1f} | {cvs.pct(lout, 0.5) - cvs.pct(every_in, 0.5):.1f} / "
              f"{cvs.pct(lout, 0.99) - cvs.pct(every_in, 0.99):.1f} | {len(lout)}/{count} |")
    print(f"| the input itself (all four) | {cvs.pct(every_in, 0.5):.1f} | {cvs.pct(every_in, 0.99):.1f} | "
          f"{cvs.pct(every_in, 0.999):.1f} | {every_in[-1]:.1f} | | |")
    for kind in ("identity", "enrich"):
        lp, wa = lat[f"loop-{kind}"][1], lat[f"wasm-{kind}"][1]
        print(f"{kind}: wasm ÷ client loop latency p50 {cvs.pct(wa, 0.5) / cvs.pct(lp, 0.5):.2f}, "
              f"p99 {cvs.pct(wa, 0.99) / cvs.pct(lp, 0.99):.2f}")
    print("\nWhere it goes, from the broker's append times (LogAppendTime, whole ms), p50 / p99 ms of each step:\n")
    print("| path | send -> input appended | input appended -> output appended (read, work, write) | "
          "output appended -> consumed (commit, read_committed fetch) |")
    print("|---|---:|---:|---:|")
    for mode, label in MODES:
        cells = " | ".join(f"{cvs.pct(x, 0.5):.0f} / {cvs.pct(x, 0.99):.0f}" if x else "-" for x in lat[mode][3])
        print(f"| {label} | {cells} |")
    series = [(f"{label}: p50 {cvs.pct(lat[m][1], 0.5):.0f}, p99 {cvs.pct(lat[m][1], 0.99):.0f} ms", lat[m][1])
              for m, label in MODES]
    series.append((f"the input itself: p50 {cvs.pct(every_in, 0.5):.0f}, p99 {cvs.pct(every_in, 0.99):.0f} ms",
                   every_in))
    cdf_svg(series, os.path.join(a.out, "transforms-latency.svg"),
            f"send -> read_committed consumer, {a.rate} events/s: fraction of records within x ms")
    # The round whose rate is its mode's median.
    typical = {m: sorted(tput[m], key=lambda x: x["rate"])[len(tput[m]) // 2] for m, _ in MODES}
    progress_svg([(f"{label}: {typical[m]['rate']:,.0f}/s", typical[m]["timeline"]) for m, label in MODES],
                 os.path.join(a.out, "transforms-throughput.svg"),
                 f"{total} events: input records committed since the start (each one's median round)")
    print(f"wrote {os.path.join(a.out, 'transforms-latency.svg')} and transforms-throughput.svg")


if __name__ == "__main__":
    main()
