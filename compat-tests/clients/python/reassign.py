"""Partition reassignments through kafka-python's admin client (AlterPartitionReassignments and
ListPartitionReassignments, KIP-455).

    python reassign.py BOOTSTRAP alter TOPIC P=R1,R2,.. [P=cancel ..]
        prints one line per partition: `P ok` or `P ERROR_NAME`
    python reassign.py BOOTSTRAP list [TOPIC]
        prints one line per partition in progress: `TOPIC P replicas=.. adding=.. removing=..`
"""
import sys

from kafka import KafkaAdminClient, TopicPartition


def ids(v):
    return ",".join(str(x) for x in v)


def main():
    bootstrap, action = sys.argv[1:3]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    try:
        if action == "alter":
            topic = sys.argv[3]
            wanted = {}
            for arg in sys.argv[4:]:
                p, target = arg.split("=")
                replicas = None if target == "cancel" else [int(r) for r in target.split(",") if r]
                wanted[TopicPartition(topic, int(p))] = replicas
            results = admin.alter_partition_reassignments(wanted, timeout_ms=30000)
            for tp in sorted(results, key=lambda tp: tp.partition):
                err = results[tp]
                print(f"{tp.partition} {'ok' if err is None else err.__name__}")
        elif action == "list":
            topics = {sys.argv[3]: list(range(100))} if len(sys.argv) > 3 else None
            ongoing = admin.list_partition_reassignments(topics, timeout_ms=30000)
            for tp in sorted(ongoing, key=lambda tp: (tp.topic, tp.partition)):
                r = ongoing[tp]
                print(f"{tp.topic} {tp.partition} replicas={ids(r['replicas'])} "
                      f"adding={ids(r['adding_replicas'])} removing={ids(r['removing_replicas'])}")
        else:
            sys.exit(f"unknown action {action!r}")
    finally:
        admin.close()


if __name__ == "__main__":
    main()
