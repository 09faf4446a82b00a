//! Request versions Kafka 3.9 served that kafka-protocol 0.18 no longer
//! carries (Kafka 4 dropped them, KIP-896): ListOffsets v0, OffsetCommit
//! v0–1, OffsetFetch v0, CreateTopics v0–1, DeleteTopics v0,
//! DescribeConfigs v0 and the ACL APIs' v0.
//!
//! Each is a small hand codec: the legacy request is decoded into the
//! modern request struct (what the old version lacks filled in as Kafka
//! did), the same handler as every other version answers it, and the
//! modern response is written back in the legacy layout. Where a legacy
//! layout is byte for byte that of a version kafka-protocol still carries
//! (Kafka's schemas say so, e.g. "Version 1 is the same as version 0"),
//! kafka-protocol encodes it at that version. Old schemas are frozen, so
//! none of this changes as the protocol moves on.

mod acl;
mod admin;
mod codec;
mod offsets;

pub use acl::{create_acls, delete_acls, describe_acls};
pub use admin::{create_topics, delete_topics, describe_configs};
pub use offsets::{list_offsets, offset_commit, offset_fetch};

use kafka_protocol::messages::RequestHeader;

use crate::dispatch::HandlerResult;
use codec::Writer;

/// Frames the response to `header`: the legacy body `body` writes, after
/// response header v0. A handler that answers nothing (shutdown) sends
/// nothing.
fn reply<R>(
    header: &RequestHeader,
    resp: Option<R>,
    body: impl FnOnce(&mut Writer, &R) -> anyhow::Result<()>,
) -> HandlerResult {
    let Some(resp) = resp else { return Ok(None) };
    let mut w = Writer::response(header.correlation_id);
    body(&mut w, &resp)?;
    Ok(Some(w.finish().into()))
}

/// The error that closes the connection on a request that does not parse.
fn malformed(api: &'static str, header: &RequestHeader) -> impl FnOnce(anyhow::Error) -> anyhow::Error {
    let version = header.request_api_version;
    move |e| anyhow::anyhow!("malformed {api} v{version} request: {e:#}")
}
