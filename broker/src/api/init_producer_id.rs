//! InitProducerId: a fresh producer id at epoch 0 for idempotent producers;
//! with a transactional id, the transaction coordinator's id and the next
//! epoch (which fences older instances).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;

use crate::coordinator::txn::Caller;
use crate::server::Broker;

pub async fn handle(
    broker: Arc<Broker>,
    h: &RequestHeader,
    req: InitProducerIdRequest,
) -> Option<InitProducerIdResponse> {
    let mut resp = mk!(InitProducerIdResponse { producer_id: ProducerId(-1), producer_epoch: -1 });
    if let Some(id) = &req.transactional_id {
        if id.0.is_empty() {
            resp.error_code = ResponseError::InvalidRequest.code();
            return Some(resp);
        }
        if req.enable_2_pc {
            // KIP-939 two-phase commit with an external coordinator is not served.
            resp.error_code = ResponseError::UnsupportedVersion.code();
            return Some(resp);
        }
        let expected = (req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
        let caller = Caller { knows_fenced: h.request_api_version >= 4 };
        match broker.txns.init_producer(&id.0, req.transaction_timeout_ms, expected, caller).await {
            Ok((pid, epoch)) => {
                resp.producer_id = ProducerId(pid);
                resp.producer_epoch = epoch;
            }
            Err(e) => resp.error_code = e.code(),
        }
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
