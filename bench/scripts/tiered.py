#!/usr/bin/env python3
"""Tiered storage: what a month of events costs to keep, and what reading it back costs.

Starts an S3-compatible server (s3s-fs, as the tests do) and one Fjord node per storage mode,
writes the same realistic JSON events (tracking events of about 300 bytes, the shape the users'
SDKs send) to a topic with remote.storage.enable, waits until every closed segment is in the
bucket and gone locally, then:

1. Storage: bytes in the bucket for the same events, stored as the producers sent them
   uncompressed, with Fjord's archive compression (remote_storage_compression=zstd: 1 MiB
   chunks, each decodable alone), and sent zstd-compressed by the producer.
2. Reads, all in the same run against the same broker: a topic held locally (hot), the
   tiered topic from an empty chunk cache (cold: every chunk is a ranged GET), and again with
   the cache filled (cached). Throughput of a consumer reading from offset 0 to the end, and
   the time to its first record.

    .venv/bin/python bench/scripts/tiered.py target/release/fjord [EVENTS]

Prints progress and the tables, and writes tiered-reads.svg (read throughput per mode) in the
current directory.
"""
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

_spec = importlib.util.spec_from_file_location(
    "cluster_vs_single", os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster-vs-single.py"))
cvs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cvs)

BUCKET = "fjord-bench"
ACCESS, SECRET = "bench-access", "bench-secret-key-0123456789"
PARTITIONS = 3


def event(i):
    return json.dumps({
        "event_id": f"evt-{i:010d}",
        "type": ["page_view", "click", "add_to_cart", "purchase", "signup"][i % 5],
        "user_id": f"u-{(i * 7919) % 100_000:06d}",
        "session_id": f"s-{(i * 104729) % 1_000_000:07d}",
        "ts": 1_700_000_000_000 + i * 13,
        "context": {"ip": f"10.{i % 256}.{(i // 256) % 256}.{i % 97}", "ua": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5)",
                    "locale": ["en-US", "de-DE", "fr-FR", "ja-JP"][i % 4]},
        "properties": {"path": f"/products/{(i * 31) % 5000}", "price": round((i % 1000) * 0.37, 2),
                       "currency": "EUR", "referrer": ["google", "newsletter", "direct", "ads"][i % 4]},
    }).encode()


def s3s_fs():
    cached = os.path.expanduser("~/.cache/fjord/tools/bin/s3s-fs")
    return cached if os.path.exists(cached) else "s3s-fs"


def admin_get(addr, path):
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
        return json.loads(r.read())


def start_broker(binary, work, name, endpoint, compression):
    port, admin = cvs.free_port(), f"127.0.0.1:{cvs.free_port()}"
    data = os.path.join(work, name)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET, AWS_EC2_METADATA_DISABLED="true")
    args = ["--listen", f"127.0.0.1:{port}", "--admin-listen", admin, "--remote-storage-enable", "true",
            "--s3-bucket", BUCKET, "--s3-endpoint", endpoint, "--s3-prefix", name,
            "--remote-storage-compression", compression, "--remote-log-manager-task-interval-ms", "200",
            "--log-retention-check-interval-ms", "200", "--fsync", "never"]
    log = open(data + ".log", "a")
    proc = subprocess.Popen([binary, "--data-dir", data] + args, stdout=subprocess.DEVNULL, stderr=log, env=env)
    bootstrap = f"127.0.0.1:{port}"
    return proc, bootstrap, admin, cvs.wait_for(bootstrap, 1)


def produce(bootstrap, topic, events, compression):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 256 * 1024,
                  "compression.type": compression, "acks": "all"})
    for i in range(events):
        while True:
            try:
                p.produce(topic, value=event(i), partition=i % PARTITIONS)
                break
            except BufferError:
                p.poll(0.1)
        if i % 100_000 == 0:
            print(f"  {topic}: {i}/{events} events written", flush=True)
            p.poll(0)
    p.flush(120)


def wait_tiered(admin, topic, deadline=300):
    end = time.time() + deadline
    while time.time() < end:
        parts = admin_get(admin, f"/v1/partitions?topic={topic}")
        remote = [p["local"]["remote"] for p in parts]
        if all(r["upload_lag_segments"] == 0 and r["segments"] > 0 for r in remote) and all(
                p["local"]["log_start_offset"] > 0 for p in parts):
            return parts
        time.sleep(0.5)
    sys.exit(f"{topic}: segments were not copied and trimmed in time")


def consume_all(bootstrap, topic, label):
    """Reads every partition from offset 0 to the end; (bytes/s, records, first record in ms)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{label}-{time.time()}",
                  "enable.auto.commit": False, "fetch.max.bytes": 16 << 20, "auto.offset.reset": "error"})
    admin = AdminClient({"bootstrap.servers": bootstrap})
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS)}
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    t0 = time.time()
    first = None
    done = {p: ends[p] == 0 for p in range(PARTITIONS)}
    n = size = 0
    while not all(done.values()):
        m = c.poll(1.0)
        if m is None:
            if time.time() - t0 > 600:
                sys.exit(f"{label}: reading stalled")
            continue
        if m.error():
            sys.exit(f"{label}: {m.error()}")
        if first is None:
            first = (time.time() - t0) * 1000
        n += 1
        size += len(m.value())
        if m.offset() + 1 >= ends[m.partition()]:
            done[m.partition()] = True
    secs = time.time() - t0
    c.close()
    del admin
    print(f"  {label}: {n} records, {size / secs / 1e6:.1f} MB/s, first record after {first:.0f} ms", flush=True)
    return size / secs, n, first


def bars(rows, path, title):
    w, h, pad = 560, 260, 40
    top = max(v for _, v in rows) or 1
    bw = (w - 2 * pad) / len(rows)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<text x="{pad}" y="20">{title}</text>']
    for i, (label, v) in enumerate(rows):
        bh = (h - 2 * pad - 20) * v / top
        x = pad + i * bw + 10
        out.append(f'<rect x="{x:.1f}" y="{h - pad - bh:.1f}" width="{bw - 20:.1f}" height="{bh:.1f}" fill="#1f77b4"/>')
        out.append(f'<text x="{x:.1f}" y="{h - pad - bh - 4:.1f}">{v:.1f}</text>')
        out.append(f'<text x="{x:.1f}" y="{h - pad + 16}">{label}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def main():
    binary = sys.argv[1]
    events = int(sys.argv[2]) if len(sys.argv) > 2 else 600_000
    work = tempfile.mkdtemp(prefix="fjord-tiered-bench-")
    root = os.path.join(work, "s3")
    os.makedirs(os.path.join(root, BUCKET))
    s3_port = cvs.free_port()
    procs = [subprocess.Popen([s3s_fs(), "--host", "127.0.0.1", "--port", str(s3_port), "--access-key", ACCESS,
                               "--secret-key", SECRET, root], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    endpoint = f"http://127.0.0.1:{s3_port}"
    # About 16 segments per partition: all but the active one end up only in the bucket.
    segment = max(1 << 20, events * 330 // PARTITIONS // 16)
    configs = {"remote.storage.enable": "true", "segment.bytes": str(segment), "local.retention.bytes": "1",
               "retention.ms": "-1"}
    try:
        time.sleep(0.5)
        stored = {}
        # 1. Storage, per mode: (broker archive compression, producer compression).
        for name, archive, codec in [("plain", "none", "none"), ("archived", "zstd", "none"),
                                     ("producer-zstd", "none", "zstd")]:
            print(f"{name}: writing {events} events", flush=True)
            proc, bootstrap, admin_addr, admin = start_broker(binary, work, name, endpoint, archive)
            procs.append(proc)
            # Batches the producer compressed take about a tenth of the room: smaller segments,
            # so as many of them roll.
            cfg = dict(configs, **({"segment.bytes": str(segment // 10)} if codec != "none" else {}))
            admin.create_topics([NewTopic("events", PARTITIONS, 1, config=cfg)])["events"].result(30)
            produce(bootstrap, "events", events, codec)
            parts = wait_tiered(admin_addr, "events")
            remote = sum(p["local"]["remote"]["size_bytes"] for p in parts)
            local_tail = sum(p["local"]["size_bytes"] for p in parts)
            stored[name] = (remote, local_tail)
            print(f"  {name}: {remote / 1e6:.1f} MB in the bucket, {local_tail / 1e6:.1f} MB left locally", flush=True)
            if name != "archived":
                proc.terminate()
                proc.wait()
                procs.remove(proc)
            else:
                kept = (proc, bootstrap, admin_addr, admin)
        # 2. Reads on the archived broker: a local topic of the same events, then the tiered one
        # after a restart (the chunk cache starts empty), then again (cached).
        proc, bootstrap, admin_addr, admin = kept
        admin.create_topics([NewTopic("hot", PARTITIONS, 1)])["hot"].result(30)
        produce(bootstrap, "hot", events, "none")
        hot = consume_all(bootstrap, "hot", "hot (local segments)")
        proc.terminate()
        proc.wait()
        procs.remove(proc)
        proc, bootstrap, admin_addr, admin = start_broker(binary, work, "archived", endpoint, "zstd")
        procs.append(proc)
        cvs.wait_for_leaders(admin, "events", PARTITIONS)
        cold = consume_all(bootstrap, "events", "cold (bucket, empty cache)")
        cached = consume_all(bootstrap, "events", "cached (bucket, chunk cache)")
        raw = stored["plain"][0]
        print("\n| stored as | bytes in the bucket | of plain |\n|---|---:|---:|")
        for name in ["plain", "archived", "producer-zstd"]:
            print(f"| {name} | {stored[name][0] / 1e6:.1f} MB | {stored[name][0] / raw:.3f} |")
        print("\n| read | MB/s | of hot | first record |\n|---|---:|---:|---:|")
        for label, (bps, _n, first) in [("hot (local)", hot), ("cold (bucket)", cold), ("cached (bucket)", cached)]:
            print(f"| {label} | {bps / 1e6:.1f} | {bps / hot[0]:.2f} | {first:.0f} ms |")
        bars([("hot", hot[0] / 1e6), ("cold", cold[0] / 1e6), ("cached", cached[0] / 1e6)], "tiered-reads.svg",
             "read throughput from offset 0, MB/s (same run)")
        print("wrote tiered-reads.svg")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
