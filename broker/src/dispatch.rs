//! The API table: for each API key, the versions we serve and the handler.
//! Handlers are small async functions from a typed request to a typed
//! response; this module decodes, calls, and frames the answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::api;
use crate::frame::{ChunkedBuf, FileSlice, Frame};
use crate::server::Broker;

pub type HandlerResult = anyhow::Result<Option<Frame>>;
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
type HandlerFn = fn(Arc<Broker>, RequestHeader, Bytes) -> HandlerFuture;

pub struct ApiEntry {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
    /// Listed in ApiVersions. Unadvertised entries only answer errors.
    pub advertised: bool,
    handler: HandlerFn,
}

/// Frames a response: size, header (at the version the API demands), body.
pub fn encode_response<R: Encodable>(
    header_version: i16,
    correlation_id: i32,
    version: i16,
    resp: &R,
) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    ResponseHeader::default().with_correlation_id(correlation_id).encode(&mut buf, header_version)?;
    resp.encode(&mut buf, version)?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// A handler's answer, framed for the wire.
pub trait Reply {
    fn frame(self, header_version: i16, correlation_id: i32, version: i16) -> anyhow::Result<Frame>;
}

impl<R: Encodable> Reply for R {
    fn frame(self, header_version: i16, correlation_id: i32, version: i16) -> anyhow::Result<Frame> {
        encode_response(header_version, correlation_id, version, &self).map(Frame::from)
    }
}

/// A response some of whose bytes are segment file ranges (`files`): those
/// go out with `sendfile` instead of being encoded.
pub struct WithFiles<R> {
    pub resp: R,
    pub files: Vec<FileSlice>,
}

impl<R: Encodable> Reply for WithFiles<R> {
    fn frame(self, header_version: i16, correlation_id: i32, version: i16) -> anyhow::Result<Frame> {
        let header = ResponseHeader::default().with_correlation_id(correlation_id);
        let size = header.compute_size(header_version)? + self.resp.compute_size(version)?;
        let mut buf = ChunkedBuf::new(&self.files);
        buf.put_i32(i32::try_from(size)?);
        header.encode(&mut buf, header_version)?;
        self.resp.encode(&mut buf, version)?;
        anyhow::ensure!(buf.len() == size + 4, "response encoded to {} bytes, sized {}", buf.len() - 4, size);
        Ok(buf.into_frame())
    }
}

/// Declares a table entry whose handler returns `Option<Response>` (None
/// means no response at all, as for acks=0 produce). With `legacy`, the
/// versions below the oldest kafka-protocol carries (Kafka 4 dropped them)
/// go to that hand codec in `api::legacy`, which calls the same handler.
macro_rules! api {
    ($key:ident, $min:expr, $max:expr, $req:ty, $handler:path) => {
        api!(@entry $key, $min, $max, $req, $handler, |_broker, header: RequestHeader, _body| async move {
            Err(anyhow::anyhow!("no codec for {:?} v{}", ApiKey::$key, header.request_api_version))
        })
    };
    ($key:ident, $min:expr, $max:expr, $req:ty, $handler:path, legacy: $legacy:path) => {
        api!(@entry $key, $min, $max, $req, $handler, $legacy)
    };
    (@entry $key:ident, $min:expr, $max:expr, $req:ty, $handler:path, $legacy:expr) => {
        ApiEntry {
            key: ApiKey::$key,
            min: $min,
            max: $max,
            advertised: true,
            handler: |broker, header, mut body| {
                Box::pin(async move {
                    let version = header.request_api_version;
                    let started = std::time::Instant::now();
                    let outcome = if version < <$req as kafka_protocol::protocol::Message>::VERSIONS.min {
                        $legacy(broker, header, body).await
                    } else {
                        let req = <$req as Decodable>::decode(&mut body, version).map_err(|e| {
                            anyhow::anyhow!("malformed {:?} v{} request: {e}", ApiKey::$key, version)
                        })?;
                        match $handler(broker, &header, req).await {
                            Some(resp) => {
                                let hv = ApiKey::$key.response_header_version(version);
                                Ok(Some(Reply::frame(resp, hv, header.correlation_id, version)?))
                            }
                            None => Ok(None),
                        }
                    };
                    metrics::histogram!("fjord_request_duration_seconds", "api" => stringify!($key))
                        .record(started.elapsed().as_secs_f64());
                    outcome
                })
            },
        }
    };
}

/// Declares an API we do not serve yet whose response has a top-level
/// error code: a well-formed request gets UNSUPPORTED_VERSION back instead
/// of a closed connection. Not advertised, so clients never pick it.
macro_rules! unsupported {
    ($key:ident, $req:ty, $resp:ty) => {
        ApiEntry {
            key: ApiKey::$key,
            min: <$req as kafka_protocol::protocol::Message>::VERSIONS.min,
            max: <$req as kafka_protocol::protocol::Message>::VERSIONS.max,
            advertised: false,
            handler: |_broker, header, mut body| {
                Box::pin(async move {
                    let version = header.request_api_version;
                    <$req as Decodable>::decode(&mut body, version)
                        .map_err(|e| anyhow::anyhow!("malformed {:?} v{} request: {e}", ApiKey::$key, version))?;
                    tracing::debug!(api = ?ApiKey::$key, version, "request for an API this broker does not serve");
                    let mut resp = <$resp>::default();
                    resp.error_code = kafka_protocol::error::ResponseError::UnsupportedVersion.code();
                    let hv = ApiKey::$key.response_header_version(version);
                    Ok(Some(encode_response(hv, header.correlation_id, version, &resp)?.into()))
                })
            },
        }
    };
}

pub fn table() -> &'static [ApiEntry] {
    static TABLE: OnceLock<Vec<ApiEntry>> = OnceLock::new();
    TABLE.get_or_init(|| {
        vec![
            api!(Produce, 3, 12, ProduceRequest, api::produce::handle),
            api!(Fetch, 4, 17, FetchRequest, api::fetch::handle),
            api!(ListOffsets, 0, 10, ListOffsetsRequest, api::list_offsets::handle, legacy: api::legacy::list_offsets),
            api!(Metadata, 0, 12, MetadataRequest, api::metadata::handle),
            api!(OffsetForLeaderEpoch, 2, 4, OffsetForLeaderEpochRequest, api::offset_for_leader_epoch::handle),
            api!(ApiVersions, 0, 4, ApiVersionsRequest, api::api_versions::handle),
            api!(CreateTopics, 0, 7, CreateTopicsRequest, api::admin::create_topics, legacy: api::legacy::create_topics),
            api!(DeleteTopics, 0, 6, DeleteTopicsRequest, api::admin::delete_topics, legacy: api::legacy::delete_topics),
            api!(DeleteRecords, 0, 2, DeleteRecordsRequest, api::admin::delete_records),
            api!(DescribeConfigs, 0, 4, DescribeConfigsRequest, api::configs::describe, legacy: api::legacy::describe_configs),
            api!(AlterConfigs, 0, 2, AlterConfigsRequest, api::configs::alter),
            api!(CreatePartitions, 0, 3, CreatePartitionsRequest, api::admin::create_partitions),
            api!(ElectLeaders, 0, 2, ElectLeadersRequest, api::admin::elect_leaders),
            api!(AlterPartitionReassignments, 0, 1, AlterPartitionReassignmentsRequest, api::reassign::alter),
            api!(ListPartitionReassignments, 0, 0, ListPartitionReassignmentsRequest, api::reassign::list),
            api!(IncrementalAlterConfigs, 0, 1, IncrementalAlterConfigsRequest, api::configs::incremental_alter),
            api!(DescribeCluster, 0, 2, DescribeClusterRequest, api::metadata::describe_cluster),
            api!(InitProducerId, 0, 5, InitProducerIdRequest, api::init_producer_id::handle),
            api!(FindCoordinator, 0, 6, FindCoordinatorRequest, api::groups::find_coordinator),
            api!(JoinGroup, 0, 9, JoinGroupRequest, api::groups::join_group),
            api!(SyncGroup, 0, 5, SyncGroupRequest, api::groups::sync_group),
            api!(Heartbeat, 0, 4, HeartbeatRequest, api::groups::heartbeat),
            api!(LeaveGroup, 0, 5, LeaveGroupRequest, api::groups::leave_group),
            api!(OffsetCommit, 0, 9, OffsetCommitRequest, api::groups::offset_commit, legacy: api::legacy::offset_commit),
            api!(OffsetFetch, 0, 9, OffsetFetchRequest, api::groups::offset_fetch, legacy: api::legacy::offset_fetch),
            api!(ListGroups, 0, 5, ListGroupsRequest, api::groups::list_groups),
            api!(DescribeGroups, 0, 6, DescribeGroupsRequest, api::groups::describe_groups),
            api!(DeleteGroups, 0, 2, DeleteGroupsRequest, api::groups::delete_groups),
            api!(OffsetDelete, 0, 0, OffsetDeleteRequest, api::groups::offset_delete),
            api!(ConsumerGroupHeartbeat, 0, 1, ConsumerGroupHeartbeatRequest, api::consumer_groups::heartbeat),
            api!(ConsumerGroupDescribe, 0, 1, ConsumerGroupDescribeRequest, api::consumer_groups::describe),
            // Transactions as Kafka 3.x serves them; the KIP-890 part 2
            // versions (per-transaction epoch bumps) are not advertised.
            api!(AddPartitionsToTxn, 0, 4, AddPartitionsToTxnRequest, api::txn::add_partitions_to_txn),
            api!(AddOffsetsToTxn, 0, 3, AddOffsetsToTxnRequest, api::txn::add_offsets_to_txn),
            api!(TxnOffsetCommit, 0, 3, TxnOffsetCommitRequest, api::txn::txn_offset_commit),
            api!(EndTxn, 0, 3, EndTxnRequest, api::txn::end_txn),
            api!(DescribeTransactions, 0, 0, DescribeTransactionsRequest, api::txn::describe_transactions),
            api!(ListTransactions, 0, 1, ListTransactionsRequest, api::txn::list_transactions),
            // No authorizer: SECURITY_DISABLED, as Kafka without one.
            api!(DescribeAcls, 0, 3, DescribeAclsRequest, api::acl::describe_acls, legacy: api::legacy::describe_acls),
            api!(CreateAcls, 0, 3, CreateAclsRequest, api::acl::create_acls, legacy: api::legacy::create_acls),
            api!(DeleteAcls, 0, 3, DeleteAclsRequest, api::acl::delete_acls, legacy: api::legacy::delete_acls),
            unsupported!(SaslHandshake, SaslHandshakeRequest, SaslHandshakeResponse),
            unsupported!(SaslAuthenticate, SaslAuthenticateRequest, SaslAuthenticateResponse),
            unsupported!(DescribeClientQuotas, DescribeClientQuotasRequest, DescribeClientQuotasResponse),
            unsupported!(
                DescribeUserScramCredentials,
                DescribeUserScramCredentialsRequest,
                DescribeUserScramCredentialsResponse
            ),
            unsupported!(
                GetTelemetrySubscriptions,
                GetTelemetrySubscriptionsRequest,
                GetTelemetrySubscriptionsResponse
            ),
            unsupported!(UpdateFeatures, UpdateFeaturesRequest, UpdateFeaturesResponse),
        ]
    })
}

/// The versions advertised by ApiVersions: exactly what the table serves.
pub fn supported_versions() -> Vec<ApiVersion> {
    let mut v: Vec<ApiVersion> = table()
        .iter()
        .filter(|e| e.advertised)
        .map(|e| ApiVersion::default().with_api_key(e.key as i16).with_min_version(e.min).with_max_version(e.max))
        .collect();
    v.sort_by_key(|a| a.api_key);
    v
}

/// Reads the request header and picks the handler. An error means the
/// connection should be closed (unknown API, unsupported version, garbage),
/// as Kafka does; ApiVersions alone answers a bad version with the list.
pub fn prepare(broker: &Arc<Broker>, frame: Bytes) -> Result<HandlerFuture, String> {
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Some(entry) = table().iter().find(|e| e.key as i16 == key) else {
        return Err(format!("unsupported API key {key} (v{version}, correlation id {correlation_id})"));
    };
    if version < entry.min || version > entry.max {
        if entry.key == ApiKey::ApiVersions {
            // KIP-511: answer in v0 with UNSUPPORTED_VERSION and our ranges, so
            // the client can retry with a version we speak.
            let resp = ApiVersionsResponse::default()
                .with_error_code(kafka_protocol::error::ResponseError::UnsupportedVersion.code())
                .with_api_keys(supported_versions());
            let bytes = encode_response(0, correlation_id, 0, &resp).map_err(|e| e.to_string())?;
            return Ok(Box::pin(async move { Ok(Some(bytes.into())) }));
        }
        return Err(format!(
            "unsupported version {version} of {:?} (serving {}..={})",
            entry.key, entry.min, entry.max
        ));
    }
    let needs_controller = matches!(entry.key, ApiKey::Metadata | ApiKey::InitProducerId);
    if needs_controller && broker.cluster.as_ref().is_some_and(|c| c.controller.lost_contact()) {
        // Its metadata may name leaders that have moved, and it cannot get producer ids from the
        // controller; a client keeps asking the broker that answers (librdkafka retried an
        // idempotent producer's InitProducerId here for a minute): closing the connection makes
        // the client ask another broker.
        return Err(format!("this node lost contact with the controller quorum; it cannot serve {:?}", entry.key));
    }
    let mut body = frame;
    let hv = entry.key.request_header_version(version);
    let header = RequestHeader::decode(&mut body, hv).map_err(|e| format!("malformed request header: {e}"))?;
    Ok((entry.handler)(broker.clone(), header, body))
}
