#!/usr/bin/env python3
"""Start-up time of a broker with many partitions: from process start to the
first answered Metadata request, after a clean stop (SIGTERM: marker and
recovery-point checkpoint, no scans) and after a crash (SIGKILL: every active
segment scanned), each as a ratio to an empty broker's start-up in the same
run. Needs confluent-kafka (the project venv has it).

    .venv/bin/python bench/scripts/startup-time.py --broker target/release/fjord \
        [--partitions 10000] [--topics 100] [--kib 16] [--trials 3] [--data-parent .]
"""
import argparse
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import tempfile
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metadata_answered(port, deadline):
    """Sends Metadata v4 for no topics until one is answered."""
    client = b"startup-bench"
    body = struct.pack(">hhih", 3, 4, 1, len(client)) + client + struct.pack(">i?", 0, False)
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
                s.sendall(struct.pack(">i", len(body)) + body)
                head = s.recv(8, socket.MSG_WAITALL)
                if len(head) == 8 and struct.unpack(">ii", head)[1] == 1:
                    return
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError("no Metadata answer")


class Broker:
    def __init__(self, binary, data_dir, extra):
        self.binary, self.data_dir, self.extra = binary, data_dir, extra
        self.port = free_port()
        self.proc = None

    def start(self):
        """Starts the broker; returns seconds to the first Metadata answer."""
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [self.binary, "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data_dir, *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metadata_answered(self.port, t0 + 600)
        return time.monotonic() - t0

    def rss_file_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, sig):
        self.proc.send_signal(sig)
        self.proc.wait()


def fill(port, partitions, topics, kib):
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
    per_topic = partitions // topics
    names = [f"startup-{i}" for i in range(topics)]
    for f in admin.create_topics([NewTopic(n, per_topic, 1) for n in names], operation_timeout=60).values():
        f.result()
    p = Producer({"bootstrap.servers": f"127.0.0.1:{port}", "linger.ms": 50, "acks": 1,
                  "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 2_000_000})
    value = os.urandom(1024)
    for _ in range(kib):
        for n in names:
            for part in range(per_topic):
                while True:
                    try:
                        p.produce(n, value, partition=part)
                        break
                    except BufferError:
                        p.poll(0.1)
        p.poll(0)
    if p.flush(300) != 0:
        raise RuntimeError("produce did not finish")


def trials(broker, n, stop_sig):
    """Median start-up time of `n` starts, and the broker's mapped resident
    pages a few seconds after the last one (the cap is enforced every 200 ms)."""
    times = []
    for _ in range(n):
        times.append(broker.start())
        time.sleep(3)
        rss = broker.rss_file_mib()
        broker.stop(stop_sig)
    return statistics.median(times), times, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default="target/release/fjord")
    ap.add_argument("--partitions", type=int, default=10_000)
    ap.add_argument("--topics", type=int, default=100)
    ap.add_argument("--kib", type=int, default=16, help="KiB produced to each partition")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--data-parent", default=".")
    ap.add_argument("--broker-arg", action="append", default=[])
    a = ap.parse_args()
    top = tempfile.mkdtemp(dir=a.data_parent, prefix="startup-bench-")
    try:
        empty = Broker(a.broker, os.path.join(top, "empty"), a.broker_arg)
        empty_s, empty_all, empty_rss = trials(empty, a.trials, signal.SIGTERM)

        full = Broker(a.broker, os.path.join(top, "full"), a.broker_arg)
        full.start()
        t = time.monotonic()
        fill(full.port, a.partitions, a.topics, a.kib)
        filled = time.monotonic() - t
        full.stop(signal.SIGTERM)
        clean_s, clean_all, clean_rss = trials(full, a.trials, signal.SIGTERM)
        # A crash before each measured start: kill -9 one running broker
        # first, then every measured one.
        full.start()
        full.stop(signal.SIGKILL)
        crash_s, crash_all, crash_rss = trials(full, a.trials, signal.SIGKILL)
        du = subprocess.run(["du", "-sh", "--apparent-size", full.data_dir], capture_output=True, text=True)
        print(f"{a.partitions} partitions in {a.topics} topics, {a.kib} KiB each "
              f"(filled in {filled:.1f} s; data dir {du.stdout.split()[0] if du.stdout else '?'} apparent)")
        print(f"{'start-up':16} {'median s':>9} {'x empty':>8} {'RssFile MiB':>12}  trials (s)")
        for name, med, all_, rss in [("empty broker", empty_s, empty_all, empty_rss),
                                     ("clean restart", clean_s, clean_all, clean_rss),
                                     ("after kill -9", crash_s, crash_all, crash_rss)]:
            print(f"{name:16} {med:9.3f} {med / empty_s:8.1f} {rss:12.0f}  {' '.join(f'{x:.3f}' for x in all_)}")
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
