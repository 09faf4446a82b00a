"""One kafka-python group member in its own process: records consumed keys
and its assignment in files; SIGTERM closes it (leaving the group)."""

import signal
import sys

from kafka import ConsumerRebalanceListener, KafkaConsumer

from common import publish_assignment

bootstrap, topic, group, out = sys.argv[1:5]
consumed = open(out, "a", buffering=1)
assignment = set()
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))


def publish():
    publish_assignment(out, assignment)


class Listener(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked):
        assignment.difference_update(tp.partition for tp in revoked)
        publish()

    def on_partitions_assigned(self, assigned):
        assignment.update(tp.partition for tp in assigned)
        publish()


c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False,
                  session_timeout_ms=6000, heartbeat_interval_ms=300, max_poll_interval_ms=10000)
c.subscribe([topic], listener=Listener())
while not stop:
    batch = c.poll(timeout_ms=100)
    for _tp, msgs in batch.items():
        for m in msgs:
            consumed.write(m.key.decode() + "\n")
    if batch:
        try:
            c.commit()
        except Exception:  # a commit racing a rebalance: the records come again
            pass
c.close()
