#!/usr/bin/env python3
"""acks=all produce on a 3-node cluster (replication factor 3) as a ratio of
one node's, measured back to back in the same run, with librdkafka
(confluent-kafka): throughput and publish latency (send -> acknowledgement).

    .venv/bin/python bench/scripts/cluster-vs-single.py target/release/fjord [SECONDS] [PARTITIONS]

Starts the broker binary itself: first one node, then three nodes on
loopback (each a controller voter), each on fresh data dirs under a temp dir.
Prints progress once a second and the comparison at the end, and writes
cluster-vs-single.svg (acknowledged records per second over time, both runs)
beside the current directory's results.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

RECORD = b"x" * 1024


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, data_dir, args):
    log = open(data_dir + ".log", "w")
    return subprocess.Popen([binary, "--data-dir", data_dir] + args, stdout=subprocess.DEVNULL, stderr=log)


def wait_for(bootstrap, brokers, deadline=60):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    end = time.time() + deadline
    while time.time() < end:
        try:
            md = admin.list_topics(timeout=2)
            if len(md.brokers) == brokers and md.controller_id >= 0:
                return admin
        except Exception:  # not up yet
            pass
        time.sleep(0.2)
    sys.exit(f"{bootstrap}: {brokers} brokers did not come up")


def wait_for_leaders(admin, topic, partitions, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        t = admin.list_topics(topic, timeout=2).topics.get(topic)
        if t and len(t.partitions) == partitions and all(p.leader >= 0 for p in t.partitions.values()):
            return
        time.sleep(0.1)
    sys.exit(f"{topic}: no leader for every partition")


def create(admin, topic, partitions, replicas):
    for f in admin.create_topics([NewTopic(topic, partitions, replicas)]).values():
        f.result(30)


def run(bootstrap, topic, partitions, seconds, label):
    """Produces as fast as librdkafka takes records for `seconds`; returns
    (records/s per second, sorted latencies in ms)."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 5, "batch.size": 1 << 20, "queue.buffering.max.messages": 200000})
    latencies = []
    per_second = []
    acked = [0]

    def on_delivery(sent):
        def done(err, _msg):
            if err is None:
                acked[0] += 1
                latencies.append((time.perf_counter() - sent) * 1000)
        return done

    start = time.time()
    next_report = start + 1
    last = 0
    i = 0
    while time.time() - start < seconds:
        sent = time.perf_counter()
        try:
            p.produce(topic, RECORD, partition=i % partitions, on_delivery=on_delivery(sent))
            i += 1
        except BufferError:
            p.poll(0.005)
        p.poll(0)
        if time.time() >= next_report:
            per_second.append(acked[0] - last)
            last = acked[0]
            print(f"  {label}: {len(per_second):3d}s {per_second[-1]:8d} records/s acknowledged", flush=True)
            next_report += 1
    p.flush(60)
    latencies.sort()
    return per_second, latencies


def pct(sorted_ms, q):
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * q))]


def svg(series, path, title="acks=all records/s acknowledged over time", x_label="seconds", marks=()):
    """One polyline per series (a value per point in time); `marks` are (point, label) drawn as
    vertical lines."""
    w, h, pad = 640, 320, 40
    top = max(max(s) for _, s in series) or 1
    n = max(len(s) for _, s in series)
    colors = ["#1f77b4", "#d62728"]
    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<text x="{pad}" y="20">{title} (peak {top})</text>']
    for k, (label, s) in enumerate(series):
        pts = " ".join(f"{pad + (w - 2 * pad) * x / max(1, n - 1):.1f},{h - pad - (h - 2 * pad) * y / top:.1f}"
                       for x, y in enumerate(s))
        lines.append(f'<polyline fill="none" stroke="{colors[k]}" stroke-width="2" points="{pts}"/>')
        lines.append(f'<text x="{w - 200}" y="{40 + 16 * k}" fill="{colors[k]}">{label}</text>')
    for x, label in marks:
        px = pad + (w - 2 * pad) * x / max(1, n - 1)
        lines.append(f'<line x1="{px:.1f}" y1="{pad}" x2="{px:.1f}" y2="{h - pad}" stroke="#555" stroke-dasharray="4"/>')
        lines.append(f'<text x="{px + 4:.1f}" y="{pad + 12}" fill="#555">{label}</text>')
    lines.append(f'<text x="{pad}" y="{h - 10}">{x_label}</text></svg>')
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    binary = sys.argv[1]
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    partitions = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    work = tempfile.mkdtemp(prefix="fjord-cluster-bench-")
    procs = []
    try:
        port = free_port()
        procs.append(start(binary, os.path.join(work, "single"), ["--listen", f"127.0.0.1:{port}"]))
        admin = wait_for(f"127.0.0.1:{port}", 1)
        create(admin, "bench", partitions, 1)
        wait_for_leaders(admin, "bench", partitions)
        print("one node, replication factor 1:")
        single = run(f"127.0.0.1:{port}", "bench", partitions, seconds, "single")
        for p in procs:
            p.terminate()
            p.wait()
        procs.clear()

        clients = [free_port() for _ in range(3)]
        cluster = [free_port() for _ in range(3)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, c in enumerate(cluster))
        for i in range(3):
            procs.append(start(binary, os.path.join(work, f"n{i + 1}"), [
                "--node-id", str(i + 1), "--listen", f"127.0.0.1:{clients[i]}",
                "--cluster-listen", f"127.0.0.1:{cluster[i]}", "--controller-quorum-voters", voters,
                "--broker-rack", f"r{i + 1}"]))
        bootstrap = ",".join(f"127.0.0.1:{c}" for c in clients)
        admin = wait_for(bootstrap, 3)
        create(admin, "bench", partitions, 3)
        wait_for_leaders(admin, "bench", partitions)
        print("three nodes, replication factor 3:")
        three = run(bootstrap, "bench", partitions, seconds, "cluster")
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)

    def summary(label, result):
        per_second, lat = result
        steady = sorted(per_second[1:] or per_second)
        median = steady[len(steady) // 2]
        print(f"{label:>8}: median {median:8d} records/s; publish latency ms p50 {pct(lat, 0.5):.1f} "
              f"p99 {pct(lat, 0.99):.1f} p99.9 {pct(lat, 0.999):.1f}")
        return median

    print(f"{partitions} partitions, 1 KiB records, acks=all, idempotent, {seconds} s each:")
    a = summary("single", single)
    b = summary("cluster", three)
    print(f"cluster / single throughput: {b / a:.2f}" if a else "single node acknowledged nothing")
    svg([("one node, RF 1", single[0]), ("three nodes, RF 3", three[0])], "cluster-vs-single.svg")
    print("wrote cluster-vs-single.svg")


if __name__ == "__main__":
    main()
