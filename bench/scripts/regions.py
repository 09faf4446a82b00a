#!/usr/bin/env python3
"""Three regions on one machine: a 3-node cluster whose nodes sit in regions us, eu and ap,
30 ms apart one way (a delaying proxy on every node-to-node link, and in front of the eu and
ap nodes for clients, who are in us). Measures, with librdkafka (confluent-kafka):

1. acks=all publish latency from a producer in us, for a topic whose leaders are spread over
   the regions (placement's default) and for one pinned to us (`leader.preferred.racks=us`):
   a pinned leader costs one round trip to the nearest other region, a remote one two more.
2. The bytes a consumer in ap makes cross regions reading that topic: from the leader (no
   `client.rack`), and from its own region's replica (`client.rack=ap`, KIP-392, the brokers
   run the rack-aware selector).

    .venv/bin/python bench/scripts/regions.py target/release/fjord [SECONDS] [RATE]

Prints progress once a second and the tables at the end, and writes regions-latency.svg
(publish latency by percentile, spread against pinned) in the current directory.
"""
import asyncio
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

_spec = importlib.util.spec_from_file_location(
    "cluster_vs_single", os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster-vs-single.py"))
cvs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cvs)

REGIONS = ["us", "eu", "ap"]
ONE_WAY = 0.030
PARTITIONS = 6
RECORD = b"r" * 1024


class Proxies:
    """TCP proxies on one asyncio loop in a thread: each forwards to its target, delivering every
    chunk `delay` after it arrived (order kept), and counts the bytes it carried."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.bytes = {}

    def start(self, name, target_port, delay):
        port = cvs.free_port()
        self.bytes[name] = 0

        async def pipe(reader, writer):
            queue = asyncio.Queue()

            async def deliver():
                while True:
                    due, chunk = await queue.get()
                    if chunk is None:
                        break
                    wait = due - self.loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    writer.write(chunk)
                    await writer.drain()
                writer.close()

            task = asyncio.ensure_future(deliver())
            try:
                while True:
                    chunk = await reader.read(1 << 16)
                    if not chunk:
                        break
                    self.bytes[name] += len(chunk)
                    queue.put_nowait((self.loop.time() + delay, chunk))
            except ConnectionError:
                pass
            queue.put_nowait((0, None))
            await task

        async def accept(reader, writer):
            try:
                r2, w2 = await asyncio.open_connection("127.0.0.1", target_port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, w2), pipe(r2, writer), return_exceptions=True)

        async def serve():
            return await asyncio.start_server(accept, "127.0.0.1", port)

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result()
        return port

    def total(self, prefix):
        return sum(v for k, v in self.bytes.items() if k.startswith(prefix))


def fetched_bytes(metrics_port):
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith("fjord_fetched_bytes_total "):
            return float(line.split()[1])
    return 0.0


def start_cluster(binary, work, proxies):
    listen = [cvs.free_port() for _ in REGIONS]
    cluster = [cvs.free_port() for _ in REGIONS]
    metrics = [cvs.free_port() for _ in REGIONS]
    # Node-to-node links: each direction through its own delaying proxy.
    link = {(a, b): proxies.start(f"link {a}->{b}", cluster[b], ONE_WAY)
            for a in range(3) for b in range(3) if a != b}
    # Clients are in us: the eu and ap nodes are reached through a delaying proxy.
    advertised = [listen[0]] + [proxies.start(f"client->{REGIONS[i]}", listen[i], ONE_WAY) for i in (1, 2)]
    procs = []
    for i, region in enumerate(REGIONS):
        voters = ",".join(f"{j + 1}@127.0.0.1:{cluster[j] if j == i else link[(i, j)]}" for j in range(3))
        procs.append(cvs.start(binary, os.path.join(work, f"node{i + 1}"), [
            "--node-id", str(i + 1), "--listen", f"127.0.0.1:{listen[i]}",
            "--advertised-listener", f"127.0.0.1:{advertised[i]}",
            "--cluster-listen", f"127.0.0.1:{cluster[i]}", "--controller-quorum-voters", voters,
            "--broker-rack", region, "--admin-listen", f"127.0.0.1:{metrics[i]}",
            "--replica-selector-class", "rack-aware", "--leader-imbalance-check-interval-seconds", "1"]))
    bootstrap = ",".join(f"127.0.0.1:{p}" for p in advertised)
    return procs, bootstrap, metrics


def wait_leaders(admin, topic, want=None, deadline=90):
    """Waits until every partition of `topic` has its 3 replicas in sync and is led by `want`,
    or by its preferred replica (the balancer moves it there within a second or two)."""
    end = time.time() + deadline
    state = None
    while time.time() < end:
        t = admin.list_topics(topic, timeout=5).topics.get(topic)
        state = t and {i: (p.leader, p.isrs) for i, p in t.partitions.items()}
        if t and len(t.partitions) == PARTITIONS and all(
                p.leader >= 1 and len(p.isrs) == 3 and p.leader == (want or p.replicas[0])
                for p in t.partitions.values()):
            return [(p.leader, p.replicas[0]) for _, p in sorted(t.partitions.items())]
        time.sleep(0.2)
    sys.exit(f"{topic}: leaders not settled; partition: (leader, isr): {state}")


def publish(bootstrap, topic, seconds, rate, proxies):
    """acks=all at `rate` records/s for `seconds`; returns sorted latencies (ms) and the bytes
    the node-to-node links carried meanwhile."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 0})
    # Warm up: connections to every leader and the producer id, outside the measurement.
    for partition in range(PARTITIONS):
        p.produce(topic, RECORD, partition=partition)
    p.flush(60)
    links_before = proxies.total("link")
    latencies, failed = [], []

    def done(sent):
        def cb(err, _msg):
            if err is None:
                latencies.append((time.monotonic() - sent) * 1000)
            else:
                failed.append(err)
        return cb

    start = time.monotonic()
    n = 0
    for second in range(seconds):
        while n < rate * (second + 1):
            due = start + n / rate
            now = time.monotonic()
            if due > now:
                # Waiting in poll, so acknowledgements are timed when they arrive.
                p.poll(due - now)
            p.produce(topic, RECORD, partition=n % PARTITIONS, on_delivery=done(time.monotonic()))
            p.poll(0)
            n += 1
        print(f"  [{second + 1:>3}s] {topic}: {len(latencies)} acknowledged", flush=True)
    p.flush(60)
    if failed:
        sys.exit(f"{len(failed)} records failed: {failed[:3]}")
    return sorted(latencies), proxies.total("link") - links_before


def consume_all(bootstrap, topic, count, rack):
    conf = {"bootstrap.servers": bootstrap, "group.id": f"regions-{rack or 'leader'}", "enable.auto.commit": False}
    if rack:
        conf["client.rack"] = rack
    c = Consumer(conf)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    n, end = 0, time.time() + 180
    while n < count and time.time() < end:
        for m in c.consume(500, timeout=1):
            if m.error() is None:
                n += 1
    c.close()
    if n < count:
        sys.exit(f"read {n} of {count} records")


def pct(values, q):
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    binary = sys.argv[1]
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    rate = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    work = tempfile.mkdtemp(prefix="fjord-regions-")
    proxies = Proxies()
    procs = []
    try:
        procs, bootstrap, metrics = start_cluster(binary, work, proxies)
        admin = cvs.wait_for(bootstrap, 3, deadline=90)
        for f in admin.create_topics([NewTopic("spread", PARTITIONS, 3),
                                      NewTopic("pinned", PARTITIONS, 3, config={"leader.preferred.racks": "us"})
                                      ]).values():
            f.result(60)
        spread_leaders = wait_leaders(admin, "spread")
        wait_leaders(admin, "pinned", want=1)
        print(f"leaders of 'spread': nodes {[l for l, _ in spread_leaders]}; of 'pinned': all node 1 (us)")
        results = {}
        for topic in ("spread", "pinned"):
            print(f"publishing to '{topic}' from us, {rate}/s for {seconds} s:")
            results[topic] = publish(bootstrap, topic, seconds, rate, proxies)
        count = seconds * rate + PARTITIONS  # with the warm-up records
        reads = {}
        for label, rack in (("from the leader (no client.rack)", None), ("from its region's replica (client.rack=ap)", "ap")):
            before = [fetched_bytes(m) for m in metrics]
            print(f"a consumer in ap reads 'pinned' {label}")
            consume_all(bootstrap, "pinned", count, rack)
            served = [fetched_bytes(m) - b for m, b in zip(metrics, before)]
            reads[label] = served
        print()
        print("| topic (producer in us) | publish p50 ms | p99 ms | p99.9 ms | node-to-node bytes per record |")
        print("|---|---|---|---|---|")
        for topic, (lat, link_bytes) in results.items():
            name = "leaders spread over us, eu, ap" if topic == "spread" else "leaders pinned to us"
            print(f"| {name} | {pct(lat, 0.5):.1f} | {pct(lat, 0.99):.1f} | {pct(lat, 0.999):.1f} | {link_bytes / len(lat):.0f} |")
        print()
        print("| consumer in ap reads 'pinned' | record bytes served from us | from eu | from ap (local) | crossing regions |")
        print("|---|---|---|---|---|")
        for label, served in reads.items():
            cross = served[0] + served[1]
            print(f"| {label} | {served[0] / 1e6:.1f} MB | {served[1] / 1e6:.1f} MB | {served[2] / 1e6:.1f} MB | {cross / 1e6:.1f} MB |")
        series = [(f"{t}: p50 {pct(l, 0.5):.0f} ms", [pct(l, q / 100) for q in range(0, 100)])
                  for t, (l, _) in results.items()]
        cvs.svg(series, "regions-latency.svg", title="acks=all publish latency (ms) by percentile, producer in us",
                x_label="percentile")
        print("wrote regions-latency.svg")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
