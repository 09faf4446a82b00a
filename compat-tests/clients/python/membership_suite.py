"""Group membership changes with any client: three members share six
partitions; one is killed with SIGKILL, one leaves cleanly, a new one
joins. Each time the members left cover every partition exactly once, and
no record is lost. argv[2] names the client: a librdkafka assignor
(range, ...), "consumer" (KIP-848), "kafka-python", "kafkajs" or "kcat"."""

import os
import signal
import subprocess
import sys
import tempfile

from common import GroupTopic, check, wait_for

bootstrap, protocol = sys.argv[1], sys.argv[2]
PARTITIONS = 6
gt = GroupTopic(bootstrap, f"members-{protocol}", PARTITIONS)
topic, group, admin, produced = gt.name, gt.group, gt.admin, gt.produced



work = tempfile.mkdtemp()
here = os.path.dirname(os.path.abspath(__file__))


def spawn(i):
    out = os.path.join(work, f"m{i}")
    if protocol == "kafka-python":
        cmd = [sys.executable, os.path.join(here, "kp_member.py"), bootstrap, topic, group, out]
    elif protocol == "kcat":
        cmd = [sys.executable, os.path.join(here, "kcat_member.py"), bootstrap, topic, group, out]
    elif protocol == "kafkajs":
        cmd = ["node", os.path.join(here, "..", "node", "kafkajs_member.js"), bootstrap, topic, group, out]
    else:
        cmd = [sys.executable, os.path.join(here, "group_member.py"), bootstrap, topic, group, protocol, out]
    # Own session, so a kill reaches any helper process (kcat) too.
    p = subprocess.Popen(cmd, start_new_session=True, cwd=os.path.join(here, "..", "node"))
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
    victim, _ = members[0]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    wait_for("the survivors to take over every partition", lambda: covered(outs[1:]), timeout=90)
    gt.produce("after-kill", 300)
    wait_for("every record consumed after the kill", lambda: produced <= consumed(outs), timeout=90)
    leaver, _ = members[1]
    os.killpg(leaver.pid, signal.SIGTERM)
    leaver.wait(60)
    wait_for("the last member to take every partition", lambda: covered(outs[2:]), timeout=90)
    gt.produce("after-leave", 300)
    wait_for("every record consumed after the leave", lambda: produced <= consumed(outs), timeout=90)
    members.append(spawn(3))
    outs.append(members[-1][1])
    wait_for("the new member to get a share", lambda: covered(outs[2:]), timeout=90)
    gt.produce("after-join", 300)
    wait_for("every record consumed after the join", lambda: produced <= consumed(outs), timeout=90)
    check(produced <= consumed(outs), "no record lost")
finally:
    for p, _ in members:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
print(f"membership suite ({protocol}) passed")
