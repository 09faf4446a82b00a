"""ACLs with confluent-kafka's AdminClient against a broker with no
authorizer: the ACL calls fail with SECURITY_DISABLED, and the authorized
operations of the cluster, a topic and a group are every operation Kafka
defines for that kind of resource."""

import sys

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType, AdminClient,
                                   NewTopic, ResourcePatternType, ResourceType)

from common import check, expect_equal

bootstrap = sys.argv[1]
admin = AdminClient({"bootstrap.servers": bootstrap})
topic, group = "acl-suite", "acl-suite-group"


def security_disabled(future, what):
    try:
        future.result(30)
    except KafkaException as e:
        expect_equal(f"{what} error", e.args[0].code(), KafkaError.SECURITY_DISABLED)
        return
    check(False, f"{what} must fail with SECURITY_DISABLED")


binding = AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:alice", "*",
                     AclOperation.READ, AclPermissionType.ALLOW)
any_filter = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                              AclOperation.ANY, AclPermissionType.ANY)
# librdkafka drops DescribeAcls' top-level error (against Kafka too): it
# reports no ACLs. The raw wire test checks that error code.
expect_equal("described ACLs", admin.describe_acls(any_filter).result(30), [])
for f in admin.create_acls([binding]).values():
    security_disabled(f, "create_acls")
for f in admin.delete_acls([any_filter]).values():
    security_disabled(f, "delete_acls")

admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
c.close()

O = AclOperation
cluster = admin.describe_cluster(include_authorized_operations=True).result(30)
expect_equal("cluster operations", set(cluster.authorized_operations),
             {O.CREATE, O.CLUSTER_ACTION, O.DESCRIBE_CONFIGS, O.ALTER_CONFIGS, O.IDEMPOTENT_WRITE, O.ALTER, O.DESCRIBE})
described = admin.describe_topics(TopicCollection([topic]), include_authorized_operations=True)[topic].result(30)
expect_equal("topic operations", set(described.authorized_operations),
             {O.READ, O.WRITE, O.CREATE, O.DELETE, O.ALTER, O.DESCRIBE, O.DESCRIBE_CONFIGS, O.ALTER_CONFIGS})
g = admin.describe_consumer_groups([group], include_authorized_operations=True)[group].result(30)
expect_equal("group operations", set(g.authorized_operations), {O.READ, O.DESCRIBE, O.DELETE})
# Not asked, not given.
cluster = admin.describe_cluster().result(30)
check(not cluster.authorized_operations, "no cluster operations unless asked")
print("acl suite passed")
