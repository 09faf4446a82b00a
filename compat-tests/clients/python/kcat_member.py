"""Runs `kcat -G` as a group member and turns what it prints into the
consumed-keys and assignment files the membership suite reads. Start it
in its own session: a SIGKILL of the group kills kcat too."""

import re
import signal
import subprocess
import sys
import threading

from common import publish_assignment

bootstrap, topic, group, out = sys.argv[1:5]
consumed = open(out, "a", buffering=1)
assignment = set()
kcat = subprocess.Popen(
    ["kcat", "-u", "-b", bootstrap, "-G", group, topic, "-f", "%k\\n", "-X", "auto.offset.reset=earliest",
     "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=300", "-X", "auto.commit.interval.ms=100"],
    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
signal.signal(signal.SIGTERM, lambda *_: kcat.terminate())


def publish():
    publish_assignment(out, assignment)


def read_rebalances():
    for line in kcat.stderr:
        parts = {int(p) for p in re.findall(r"\[(\d+)\]", line)}
        if "assigned:" in line:
            assignment.update(parts)
            publish()
        elif "revoked:" in line:
            assignment.difference_update(parts)
            publish()


threading.Thread(target=read_rebalances, daemon=True).start()
for line in kcat.stdout:
    consumed.write(line)
kcat.wait()
