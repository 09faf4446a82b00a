"""A group member is killed with SIGKILL: the survivors take its partitions
once its session times out, and no record is lost."""

import os
import signal
import subprocess
import sys
import tempfile

from common import GroupTopic, check, wait_for

bootstrap, protocol = sys.argv[1], sys.argv[2]
PARTITIONS = 6
gt = GroupTopic(bootstrap, f"kill-{protocol}", PARTITIONS)
topic, group, admin, produced = gt.name, gt.group, gt.admin, gt.produced



work = tempfile.mkdtemp()
here = os.path.dirname(os.path.abspath(__file__))


def spawn(i):
    out = os.path.join(work, f"m{i}")
    p = subprocess.Popen([sys.executable, os.path.join(here, "group_member.py"), bootstrap, topic, group, protocol, out])
    return p, out


def assignment(out):
    try:
        text = open(out + ".assign").read().split()
    except FileNotFoundError:
        return []
    return [int(x) for x in text]


def consumed(outs):
    got = set()
    for o in outs:
        if os.path.exists(o):
            got.update(line.strip() for line in open(o))
    return got


def covered(outs):
    parts = sorted(p for o in outs for p in assignment(o))
    return parts == list(range(PARTITIONS)) and all(assignment(o) for o in outs)


gt.produce("before", 300)
members = [spawn(i) for i in range(3)]
outs = [o for _, o in members]
try:
    wait_for("three members sharing six partitions", lambda: covered(outs))
    wait_for("the first records consumed", lambda: produced <= consumed(outs))
    victim, victim_out = members[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivors = outs[1:]
    wait_for("the survivors to take over every partition", lambda: covered(survivors), timeout=90)
    gt.produce("after", 300)
    wait_for("every record consumed", lambda: produced <= consumed(outs), timeout=90)
    check(produced <= consumed(outs), "no record lost")
finally:
    for p, _ in members:
        if p.poll() is None:
            p.kill()
            p.wait()
print(f"kill suite ({protocol}) passed")
