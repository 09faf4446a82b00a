"""One consumer group member in its own process (so a test can SIGKILL it):
records each consumed key and its current assignment in files."""

import sys

from confluent_kafka import Consumer, KafkaException

from common import publish_assignment

bootstrap, topic, group, protocol, out = sys.argv[1:6]
conf = {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}
if protocol == "consumer":
    conf["group.protocol"] = "consumer"
else:
    # A short rebalance timeout (max.poll.interval.ms) bounds how long a
    # round waits for a member that will never rejoin.
    conf.update({"partition.assignment.strategy": protocol, "session.timeout.ms": 6000, "heartbeat.interval.ms": 300,
                 "max.poll.interval.ms": 10000})
consumed = open(out, "a", buffering=1)
assignment = set()


def publish():
    publish_assignment(out, assignment)


def on_assign(_c, parts):
    assignment.update(p.partition for p in parts)
    publish()


def on_revoke(_c, parts):
    assignment.difference_update(p.partition for p in parts)
    publish()


c = Consumer(conf)
c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
while True:
    m = c.poll(0.1)
    if m is None or m.error():
        continue
    consumed.write(m.key().decode() + "\n")
    try:
        c.commit(message=m, asynchronous=False)
    except KafkaException:
        pass  # a commit racing a rebalance: the record comes again
