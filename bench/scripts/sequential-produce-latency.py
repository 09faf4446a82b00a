#!/usr/bin/env python3
"""Acknowledgement latency of one record at a time (acks=all), with
kafka-python: a client with no batching or pipelining of its own, to tell
the broker's latency from a batching client's.

    .venv/bin/python bench/scripts/sequential-produce-latency.py HOST:PORT [RECORDS]

Creates topic `latency-probe` (16 partitions) if it is missing.
"""
import sys
import time

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError


def main():
    bootstrap = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    try:
        KafkaAdminClient(bootstrap_servers=bootstrap).create_topics([NewTopic("latency-probe", 16, 1)])
    except TopicAlreadyExistsError:
        pass
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    producer.send("latency-probe", b"warm-up").get(timeout=30)
    took = []
    for i in range(count):
        start = time.perf_counter()
        producer.send("latency-probe", b"x" * 1024, partition=i % 16).get(timeout=30)
        took.append(time.perf_counter() - start)
    took.sort()
    at = lambda q: took[min(len(took) - 1, int(len(took) * q))] * 1000
    print(f"{count} records: p50 {at(0.5):.2f} p99 {at(0.99):.2f} p99.9 {at(0.999):.2f} max {took[-1] * 1000:.2f} ms")


if __name__ == "__main__":
    main()
