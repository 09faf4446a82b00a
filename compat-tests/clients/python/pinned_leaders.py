"""leader.preferred.racks through confluent-kafka's AdminClient (librdkafka): creates a topic
pinned to racks, or changes the pinning of an existing one (IncrementalAlterConfigs), then
prints the value DescribeConfigs gives back as `leader.preferred.racks=<value>`.

    python pinned_leaders.py BOOTSTRAP TOPIC create RACKS PARTITIONS REPLICATION_FACTOR
    python pinned_leaders.py BOOTSTRAP TOPIC alter RACKS
"""
import sys

from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   NewTopic)

KEY = "leader.preferred.racks"


def main():
    bootstrap, topic, action, racks = sys.argv[1:5]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    if action == "create":
        partitions, rf = int(sys.argv[5]), int(sys.argv[6])
        new = NewTopic(topic, num_partitions=partitions, replication_factor=rf, config={KEY: racks})
        admin.create_topics([new])[topic].result(timeout=60)
    elif action == "alter":
        resource.add_incremental_config(
            ConfigEntry(KEY, racks, incremental_operation=AlterConfigOpType.SET))
        admin.incremental_alter_configs([resource])[resource].result(timeout=60)
    else:
        sys.exit(f"unknown action {action!r}")
    described = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    entries = list(described.values())[0].result(timeout=60)
    print(f"{KEY}={entries[KEY].value}")


if __name__ == "__main__":
    main()
