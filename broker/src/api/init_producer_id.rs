//! InitProducerId for idempotent producers: a fresh producer id at epoch 0.
//! Transactional ids need the transaction coordinator, not served yet.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;

use crate::server::Broker;

pub async fn handle(
    broker: Arc<Broker>,
    _h: &RequestHeader,
    req: InitProducerIdRequest,
) -> Option<InitProducerIdResponse> {
    let mut resp = mk!(InitProducerIdResponse { producer_id: ProducerId(-1), producer_epoch: -1 });
    if req.transactional_id.is_some() {
        resp.error_code = ResponseError::InvalidRequest.code();
        return Some(resp);
    }
    let b = broker.clone();
    match tokio::task::spawn_blocking(move || b.topics.allocate_producer_id()).await {
        Ok(Ok(id)) => {
            resp.producer_id = ProducerId(id);
            resp.producer_epoch = 0;
        }
        _ => resp.error_code = ResponseError::CoordinatorNotAvailable.code(),
    }
    Some(resp)
}
