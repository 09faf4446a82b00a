//! OffsetForLeaderEpoch: where a leader epoch ended in a partition's log, so
//! a consumer can tell whether the records it read are still there (KIP-320).

use std::sync::Arc;

use kafka_protocol::messages::offset_for_leader_epoch_response::{EpochEndOffset, OffsetForLeaderTopicResult};
use kafka_protocol::messages::*;

use crate::leadership::{end_offset_for, Leadership};
use crate::server::Broker;

pub async fn handle(
    broker: Arc<Broker>,
    _h: &RequestHeader,
    req: OffsetForLeaderEpochRequest,
) -> Option<OffsetForLeaderEpochResponse> {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.topic.0.to_string();
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut r = mk!(EpochEndOffset { partition: p.partition, leader_epoch: -1, end_offset: -1 });
                    match broker.lead(&name, p.partition, p.current_leader_epoch) {
                        Ok(g) => (r.leader_epoch, r.end_offset) = end_offset_for(&g.log, g.epoch, p.leader_epoch),
                        Err(e) => r.error_code = e.code(),
                    }
                    r
                })
                .collect();
            mk!(OffsetForLeaderTopicResult { topic: t.topic, partitions: partitions })
        })
        .collect();
    Some(mk!(OffsetForLeaderEpochResponse { topics: topics }))
}
