//! Fjord's WASM transforms (ABI.md): the wasmtime host that runs a module under its limits
//! (`engine`), what a deployed transform is (`spec`), the exactly-once runner beside each input
//! partition's leader (`runner`), lookup tables (`lookups`), and the Kafka wire client the
//! runner reads and writes with (`client`).

pub mod client;
pub mod engine;
pub mod lookups;
pub mod runner;
pub mod spec;

/// The wasmtime the host runs, for callers that hold compiled modules.
pub use wasmtime;
