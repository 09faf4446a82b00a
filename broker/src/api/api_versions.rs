//! ApiVersions: advertises exactly the API versions the dispatch table serves.

use std::sync::Arc;

use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, RequestHeader};

use crate::dispatch::supported_versions;
use crate::server::Broker;

pub async fn handle(_broker: Arc<Broker>, _h: &RequestHeader, _req: ApiVersionsRequest) -> Option<ApiVersionsResponse> {
    Some(ApiVersionsResponse::default().with_api_keys(supported_versions()))
}
