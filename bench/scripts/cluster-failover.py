#!/usr/bin/env python3
"""Failover on a 3-node cluster: an idempotent acks=all producer writes at a
steady rate into partitions replicated on every node while the leader of
partition 0 is SIGKILLed again and again (restarted after each kill, and back
in sync before the next). For each kill the script measures how long that
partition acknowledged nothing: from the kill to the first acknowledgement of
a record sent after it. It reports their p50, p99 and maximum next to the
publish latency at the steady rate between kills, in the same run.

    .venv/bin/python bench/scripts/cluster-failover.py target/release/fjord [RATE] [KILLS] [STEADY_SECONDS]

Prints progress at each kill and writes cluster-failover.svg (acknowledged
records per 100 ms of partition 0 and of the other partitions, the kills
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


def in_sync(admin, topic, partition, replicas):
    """Whether every node is up and partition's ISR holds all `replicas`."""
    try:
        md = admin.list_topics(topic, timeout=2)
        return len(md.brokers) == replicas and len(md.topics[topic].partitions[partition].isrs) == replicas
    except Exception:  # a node still starting
        return False


def main():
    binary = sys.argv[1]
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    kills = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    steady_secs = float(sys.argv[4]) if len(sys.argv) > 4 else 4
    work = tempfile.mkdtemp(prefix="fjord-failover-bench-")
    procs = {}
    args = {}
    try:
        clients = [cvs.free_port() for _ in range(3)]
        cluster = [cvs.free_port() for _ in range(3)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, c in enumerate(cluster))
        for i in range(3):
            args[i + 1] = (os.path.join(work, f"n{i + 1}"), [
                "--node-id", str(i + 1), "--listen", f"127.0.0.1:{clients[i]}",
                "--cluster-listen", f"127.0.0.1:{cluster[i]}", "--controller-quorum-voters", voters,
                "--broker-rack", f"r{i + 1}"])
            procs[i + 1] = cvs.start(binary, *args[i + 1])
        bootstrap = ",".join(f"127.0.0.1:{c}" for c in clients)
        admin = cvs.wait_for(bootstrap, 3)
        cvs.create(admin, "failover", PARTITIONS, 3)
        cvs.wait_for_leaders(admin, "failover", PARTITIONS)
        p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                      "linger.ms": 2, "message.timeout.ms": 120000,
                      "reconnect.backoff.ms": 20, "reconnect.backoff.max.ms": 500,
                      "retry.backoff.ms": 20, "retry.backoff.max.ms": 500,
                      "topic.metadata.refresh.interval.ms": 1000})
        sent_at = []  # (partition, send time, ack time or None)
        errors = [0]

        # The first record of partition 0 sent after the current kill, and when the first such
        # record was acknowledged.
        watch = {"from": None, "first_ack": None}

        def on_delivery(k):
            def done(err, _msg):
                if err is None:
                    t = time.perf_counter()
                    sent_at[k][2] = t
                    if (sent_at[k][0] == 0 and watch["from"] is not None and k >= watch["from"]
                            and watch["first_ack"] is None):
                        watch["first_ack"] = t
                else:
                    errors[0] += 1
            return done

        start = time.perf_counter()
        kill_times = []  # (time, node)
        outages = []  # ms per kill
        # Phases: "steady" until the next kill, "down" until partition 0 acknowledges a record
        # sent after the kill, "rejoin" until the killed node is back in the ISR.
        phase, phase_end, next_check = "steady", start + steady_secs, start
        i = 0
        print(f"{rate} records/s into {PARTITIONS} partitions (RF 3); {kills} SIGKILLs of partition 0's leader, "
              f"{steady_secs:.0f} s of steady writes between them")
        while True:
            now = time.perf_counter()
            # Paced: the records due by now, then wait for the next tick.
            due = int((now - start) * rate)
            while i < due:
                part = i % PARTITIONS
                sent_at.append([part, time.perf_counter(), None])
                try:
                    p.produce("failover", b"x" * 512, partition=part, on_delivery=on_delivery(i))
                except BufferError:
                    sent_at.pop()
                    p.poll(0.01)
                    continue
                if phase == "down" and part == 0 and watch["from"] is None:
                    watch["from"] = i
                i += 1
            if phase == "steady" and now >= phase_end:
                if len(kill_times) == kills:
                    break
                victim = leader_of(admin, "failover", 0)
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                kill_times.append((time.perf_counter(), victim))
                phase = "down"
                watch["from"], watch["first_ack"] = None, None
            elif phase == "down":
                kill_time, victim = kill_times[-1]
                if watch["first_ack"] is not None:
                    outages.append((watch["first_ack"] - kill_time) * 1000)
                    print(f"  kill {len(kill_times):2}: node {victim} led partition 0; it acknowledged nothing for "
                          f"{outages[-1]:.0f} ms", flush=True)
                    procs[victim] = cvs.start(binary, args[victim][0], args[victim][1])
                    phase = "rejoin"
                elif now - kill_time > 30:
                    sys.exit(f"kill {len(kill_times)}: partition 0 acknowledged nothing for 30 s")
            elif phase == "rejoin" and now >= next_check:
                next_check = now + 0.2
                if in_sync(admin, "failover", 0, 3):
                    phase, phase_end = "steady", now + steady_secs
            p.poll(0.002)
        end = time.perf_counter()
        p.flush(120)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)

    # Steady: records sent in the steady phases, away from any kill.
    def near_kill(t):
        return any(k - 1 <= t <= k + 3 for k, _ in kill_times)

    steady = sorted((a - s) * 1000 for _, s, a in sent_at if a is not None and not near_kill(s))
    out = sorted(outages)
    lost = sum(1 for _, _, a in sent_at if a is None)
    print(f"steady publish latency between kills: p50 {cvs.pct(steady, 0.5):.1f} ms, "
          f"p99 {cvs.pct(steady, 0.99):.1f} ms")
    print(f"partition 0 without acknowledgements after each of {len(out)} kills: p50 {cvs.pct(out, 0.5):.0f} ms, "
          f"p99 {cvs.pct(out, 0.99):.0f} ms, max {out[-1]:.0f} ms")
    print(f"{len(sent_at)} sent, {len(sent_at) - lost} acknowledged, {errors[0]} delivery errors")

    n = int((end - start) / BUCKET) + 1
    series = [("partition 0", [0] * n), ("partitions 1-2", [0] * n)]
    for part, _, a in sent_at:
        if a is not None and a < end:
            series[0 if part == 0 else 1][1][int((a - start) / BUCKET)] += 1
    cvs.svg(series, "cluster-failover.svg", title="acks=all records acknowledged per 100 ms",
            x_label="100 ms steps", marks=[(int((k - start) / BUCKET), f"kill {j + 1}") for j, (k, _) in enumerate(kill_times)])
    print("wrote cluster-failover.svg (acknowledged records per 100 ms, the kills marked)")
    if lost or errors[0]:
        sys.exit(1)


if __name__ == "__main__":
    main()
