#!/usr/bin/env python3
"""Failover on a 3-node cluster: an idempotent acks=all producer writes at a
steady rate into partitions replicated on every node, the leader of
partition 0 is SIGKILLed mid-run, and the script reports how long that
partition acknowledged nothing (from the kill to the first acknowledgement
of a record sent after it), next to the publish latency at the steady rate
measured before the kill in the same run.

    .venv/bin/python bench/scripts/cluster-failover.py target/release/fjord [RATE] [SECONDS_BEFORE] [SECONDS_AFTER]

Prints progress once a second and writes cluster-failover.svg (acknowledged
records per 100 ms of partition 0 and of the other partitions, the kill
marked) in the current directory.
"""
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import time

from confluent_kafka import Producer

# The cluster helpers of the throughput script.
_spec = importlib.util.spec_from_file_location(
    "cluster_vs_single", os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster-vs-single.py"))
cvs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cvs)

PARTITIONS = 3
BUCKET = 0.1


def leader_of(admin, topic, partition):
    return admin.list_topics(topic, timeout=5).topics[topic].partitions[partition].leader


def main():
    binary = sys.argv[1]
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    before = float(sys.argv[3]) if len(sys.argv) > 3 else 10
    after = float(sys.argv[4]) if len(sys.argv) > 4 else 15
    work = tempfile.mkdtemp(prefix="fjord-failover-bench-")
    procs = {}
    try:
        clients = [cvs.free_port() for _ in range(3)]
        cluster = [cvs.free_port() for _ in range(3)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, c in enumerate(cluster))
        for i in range(3):
            procs[i + 1] = cvs.start(binary, os.path.join(work, f"n{i + 1}"), [
                "--node-id", str(i + 1), "--listen", f"127.0.0.1:{clients[i]}",
                "--cluster-listen", f"127.0.0.1:{cluster[i]}", "--controller-quorum-voters", voters,
                "--broker-rack", f"r{i + 1}"])
        bootstrap = ",".join(f"127.0.0.1:{c}" for c in clients)
        admin = cvs.wait_for(bootstrap, 3)
        cvs.create(admin, "failover", PARTITIONS, 3)
        cvs.wait_for_leaders(admin, "failover", PARTITIONS)
        p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                      "linger.ms": 2, "message.timeout.ms": 60000,
                      "reconnect.backoff.ms": 20, "reconnect.backoff.max.ms": 500,
                      "retry.backoff.ms": 20, "retry.backoff.max.ms": 500,
                      "topic.metadata.refresh.interval.ms": 1000})
        sent_at = []  # (partition, send time, ack time or None)
        errors = [0]

        def on_delivery(k):
            def done(err, _msg):
                if err is None:
                    sent_at[k][2] = time.perf_counter()
                else:
                    errors[0] += 1
            return done

        start = time.perf_counter()
        kill_at = start + before
        end = kill_at + after
        killed = None
        next_report = start + 1
        i = 0
        print(f"{rate} records/s into {PARTITIONS} partitions (RF 3); SIGKILL of partition 0's leader at {before:.0f} s")
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            # Paced: the records due by now, then wait for the next tick.
            due = int((now - start) * rate)
            while i < due:
                part = i % PARTITIONS
                sent_at.append([part, time.perf_counter(), None])
                try:
                    p.produce("failover", b"x" * 512, partition=part, on_delivery=on_delivery(i))
                except BufferError:
                    p.poll(0.01)
                    continue
                i += 1
            if killed is None and now >= kill_at:
                killed = leader_of(admin, "failover", 0)
                procs[killed].send_signal(signal.SIGKILL)
                procs[killed].wait()
                kill_time = time.perf_counter()
                print(f"  {now - start:5.1f}s: SIGKILL node {killed}, leader of partition 0", flush=True)
            if now >= next_report:
                acked = sum(1 for s in sent_at if s[2] is not None)
                print(f"  {now - start:5.1f}s: {i} sent, {acked} acknowledged", flush=True)
                next_report += 1
            p.poll(0.002)
        p.flush(60)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)

    steady = sorted((a - s) * 1000 for part, s, a in sent_at if a is not None and s < kill_time - 1)
    after_kill = [(s, a) for part, s, a in sent_at if part == 0 and s >= kill_time and a is not None]
    first_ack = min(a for _, a in after_kill) if after_kill else None
    # Partition 0 acknowledged nothing from the kill until then.
    outage = (first_ack - kill_time) * 1000 if first_ack else float("inf")
    others = sorted((a - s) * 1000 for part, s, a in sent_at if part != 0 and a is not None and s >= kill_time)
    lost = sum(1 for _, _, a in sent_at if a is None)
    print(f"steady state before the kill: publish latency ms p50 {cvs.pct(steady, 0.5):.1f} "
          f"p99 {cvs.pct(steady, 0.99):.1f} p99.9 {cvs.pct(steady, 0.999):.1f}")
    print(f"partition 0 acknowledged nothing for {outage:.0f} ms after its leader's SIGKILL "
          f"({outage / cvs.pct(steady, 0.99):.1f}x the steady p99)")
    if others:
        print(f"the other partitions after the kill: p50 {cvs.pct(others, 0.5):.1f} ms, p99 {cvs.pct(others, 0.99):.1f} ms")
    print(f"{len(sent_at)} sent, {len(sent_at) - lost} acknowledged, {errors[0]} delivery errors")

    n = int((end - start) / BUCKET) + 1
    series = [("partition 0", [0] * n), ("partitions 1-2", [0] * n)]
    for part, _, a in sent_at:
        if a is not None and a < end:
            series[0 if part == 0 else 1][1][int((a - start) / BUCKET)] += 1
    cvs.svg(series, "cluster-failover.svg", title="acks=all records acknowledged per 100 ms",
            x_label="100 ms steps", marks=[(int((kill_time - start) / BUCKET), f"SIGKILL node {killed}")])
    print("wrote cluster-failover.svg (acknowledged records per 100 ms)")
    if lost or errors[0]:
        sys.exit(1)


if __name__ == "__main__":
    main()
