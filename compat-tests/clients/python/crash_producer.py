"""Streams numbered records with acks=all and appends the number of every
acknowledged one to a file, until a stop file appears."""

import os
import sys

from confluent_kafka import Producer

bootstrap, topic, acked_path, stop_path = sys.argv[1:5]
acked = open(acked_path, "a", buffering=1)


def on_delivery(err, msg):
    if err is None:
        acked.write(msg.value().decode() + "\n")


p = Producer({
    "bootstrap.servers": bootstrap,
    "acks": "all",
    # Idempotence keeps retries across a broker crash free of duplicates and
    # in order, with five requests in flight.
    "enable.idempotence": True,
    "linger.ms": 2,
    "message.timeout.ms": 120000,
    "reconnect.backoff.ms": 20,
    "reconnect.backoff.max.ms": 200,
})
seq = 0
while not os.path.exists(stop_path):
    try:
        p.produce(topic, value=f"{seq:09d}".encode(), on_delivery=on_delivery)
        seq += 1
    except BufferError:
        p.poll(0.05)
    p.poll(0)
left = p.flush(120)
acked.close()
print(f"produced {seq}, unacknowledged at exit {left}")
