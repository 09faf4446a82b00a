"""ElectLeaders through confluent-kafka's AdminClient (librdkafka): one election of the given
type over the named partitions of a topic; prints one line per partition, `<partition> ok` or
`<partition> <error name>: <message>`.

    python elect_leaders.py BOOTSTRAP TOPIC preferred|unclean PARTITION...
"""
import sys

from confluent_kafka import ElectionType, TopicPartition
from confluent_kafka.admin import AdminClient


def main():
    bootstrap, topic, kind = sys.argv[1], sys.argv[2], sys.argv[3]
    partitions = [TopicPartition(topic, int(p)) for p in sys.argv[4:]]
    election = ElectionType.PREFERRED if kind == "preferred" else ElectionType.UNCLEAN
    admin = AdminClient({"bootstrap.servers": bootstrap})
    results = admin.elect_leaders(election, partitions).result(timeout=60)
    for tp in sorted(results, key=lambda t: t.partition):
        err = results[tp]
        if err is None:
            print(f"{tp.partition} ok")
        else:
            e = err.args[0] if isinstance(err, Exception) and err.args else err
            name = e.name() if hasattr(e, "name") else str(e)
            text = e.str() if hasattr(e, "str") else str(e)
            print(f"{tp.partition} {name}: {text}")


if __name__ == "__main__":
    main()
