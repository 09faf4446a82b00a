//! The coordinators: state machines behind the group and transaction APIs.
//! `api/` only translates between the wire and them.
//!
//! - `classic`: classic consumer groups (JoinGroup, SyncGroup, Heartbeat,
//!   LeaveGroup; the rebalance state machine) and every group's committed
//!   offsets (OffsetCommit/OffsetFetch, and TxnOffsetCommit's pending ones).
//!   Handlers: `api/groups.rs`.
//! - `consumer`: KIP-848 consumer groups (ConsumerGroupHeartbeat; the broker
//!   assigns). Membership is in memory only; their offsets are `classic`'s.
//!   Handlers: `api/consumer_groups.rs`.
//! - `txn`: the transaction coordinator (InitProducerId with a
//!   transactional id, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn and its
//!   markers). Handlers: `api/txn.rs`, `api/init_producer_id.rs`.
//!
//! Each is fed three ways. Requests call its methods. Log replays rebuild it
//! at start: `classic` from `__consumer_offsets` (`offsets_log` maps those
//! records), `txn` from `__transaction_state` (`txn_log`), both in Kafka's
//! own schemas (`records`); `legacy_json` reads Fjord's earlier format only
//! to migrate old data dirs. Timers (tasks in `server.rs`) call its expiry:
//! session timeouts and offset retention for groups, transaction timeouts
//! and transactional id expiry for `txn`.

pub mod classic;
pub mod consumer;
pub mod legacy_json;
pub mod offsets_log;
pub mod records;
pub mod txn;
pub mod txn_log;

#[cfg(test)]
mod migration_tests;
