//! Fjord's Kafka protocol server: connection handling, the API table and
//! one handler module per API family.

#[macro_use]
mod macros;

pub mod alloc;
pub mod api;
pub mod clean_shutdown;
pub mod cluster;
pub mod cluster_txn;
pub mod config;
pub mod connection;
pub mod coordinator;
pub mod dispatch;
pub mod frame;
pub mod http;
pub mod internal_topic;
pub mod leadership;
pub mod logring;
pub mod server;
pub mod tiered;
pub mod topic_config;
pub mod topics;
pub mod transforms;

pub use config::BrokerConfig;
pub use server::{start, RunningBroker};
