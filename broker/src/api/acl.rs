//! ACLs without an authorizer, as Kafka behaves with no `authorizer.class.name`:
//! the ACL APIs answer SECURITY_DISABLED, and every operation on a resource is
//! allowed, which is what "authorized operations" report when a client asks.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::DeleteAclsFilterResult;
use kafka_protocol::messages::*;

use super::metadata::str;
use crate::server::Broker;

/// The schema default of every `*_authorized_operations` field: the client
/// did not ask for them.
pub const NOT_REQUESTED: i32 = i32::MIN;

// Kafka's AclOperation codes (org.apache.kafka.common.acl.AclOperation).
const READ: u8 = 3;
const WRITE: u8 = 4;
const CREATE: u8 = 5;
const DELETE: u8 = 6;
const ALTER: u8 = 7;
const DESCRIBE: u8 = 8;
const CLUSTER_ACTION: u8 = 9;
const DESCRIBE_CONFIGS: u8 = 10;
const ALTER_CONFIGS: u8 = 11;
const IDEMPOTENT_WRITE: u8 = 12;

/// The 32-bit field Kafka sends: bit `code` set for each allowed operation.
const fn bits(ops: &[u8]) -> i32 {
    let mut v = 0i32;
    let mut i = 0;
    while i < ops.len() {
        v |= 1 << ops[i];
        i += 1;
    }
    v
}

// The operations that apply to each resource type (Kafka's
// AclEntry.supportedOperations); with no authorizer all of them are allowed.
pub const TOPIC_OPERATIONS: i32 =
    bits(&[READ, WRITE, CREATE, DESCRIBE, DELETE, ALTER, DESCRIBE_CONFIGS, ALTER_CONFIGS]);
pub const GROUP_OPERATIONS: i32 = bits(&[READ, DESCRIBE, DELETE]);
pub const CLUSTER_OPERATIONS: i32 =
    bits(&[CREATE, CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE, ALTER, DESCRIBE]);

/// `ops` when the client asked for them, the "not requested" value otherwise.
pub fn if_requested(asked: bool, ops: i32) -> i32 {
    if asked {
        ops
    } else {
        NOT_REQUESTED
    }
}

fn security_disabled() -> (i16, Option<kafka_protocol::protocol::StrBytes>) {
    (ResponseError::SecurityDisabled.code(), Some(str("No Authorizer is configured on the broker")))
}

pub async fn describe_acls(
    _broker: Arc<Broker>,
    _h: &RequestHeader,
    _req: DescribeAclsRequest,
) -> Option<DescribeAclsResponse> {
    let (code, message) = security_disabled();
    Some(mk!(DescribeAclsResponse { error_code: code, error_message: message }))
}

/// One result per creation, each SECURITY_DISABLED.
pub async fn create_acls(
    _broker: Arc<Broker>,
    _h: &RequestHeader,
    req: CreateAclsRequest,
) -> Option<CreateAclsResponse> {
    let (code, message) = security_disabled();
    let results = req
        .creations
        .iter()
        .map(|_| mk!(AclCreationResult { error_code: code, error_message: message.clone() }))
        .collect();
    Some(mk!(CreateAclsResponse { results: results }))
}

/// One result per filter, each SECURITY_DISABLED with no matching ACLs.
pub async fn delete_acls(
    _broker: Arc<Broker>,
    _h: &RequestHeader,
    req: DeleteAclsRequest,
) -> Option<DeleteAclsResponse> {
    let (code, message) = security_disabled();
    let results = req
        .filters
        .iter()
        .map(|_| mk!(DeleteAclsFilterResult { error_code: code, error_message: message.clone() }))
        .collect();
    Some(mk!(DeleteAclsResponse { filter_results: results }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_bits_match_kafka() {
        // The values Kafka 3.9 returns with no authorizer (bit n = AclOperation code n).
        assert_eq!(TOPIC_OPERATIONS, 0b1101_1111_1000);
        assert_eq!(GROUP_OPERATIONS, (1 << 3) | (1 << 6) | (1 << 8));
        assert_eq!(CLUSTER_OPERATIONS, 0b1_1111_1010_0000);
        assert_eq!(if_requested(false, TOPIC_OPERATIONS), i32::MIN);
    }
}
