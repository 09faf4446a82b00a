//! How the coordinators' state is stored in the internal topics: Kafka's own
//! record schemas (`records`), their mapping onto the group and transaction
//! state (`offsets_log`, `txn_log`), and Fjord's earlier JSON format, kept
//! only to migrate data dirs written before (`legacy_json`).

pub mod legacy_json;
pub mod offsets_log;
pub mod records;
pub mod txn_log;

#[cfg(test)]
mod migration_tests;
