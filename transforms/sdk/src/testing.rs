//! A stand-in for the broker, for unit tests on the build machine (not on wasm32).
//!
//! [`TestHost`] holds what the broker would give a transform (outputs, lookup tables,
//! environment) and runs the `fjord_on_batch` export that [`transform!`](crate::transform)
//! generated on a batch: it encodes the batch as the host does, writes it to a buffer from the
//! SDK's `fjord_alloc`, and answers the `fjord` imports the SDK calls, decoding every emitted
//! record as the host would. So a test goes through the same decode → function → encode path as
//! the module in the broker.
//!
//! ```
//! use fjord_transform_sdk::testing::TestHost;
//! use fjord_transform_sdk::{lookup, transform, Error, Output, Record};
//!
//! fn name_of(record: &Record, out: &mut Output) -> Result<(), Error> {
//!     let name = lookup("names", record.key.as_deref().unwrap_or_default())?;
//!     out.emit(0, record.clone().with_value(name.unwrap_or_default()))
//! }
//! transform!(name_of);
//!
//! # fn main() {
//! let outcome = TestHost::new()
//!     .outputs(["named"])
//!     .lookup_table("names", [("u1", "Ada")])
//!     .run(fjord_on_batch, &[Record::new().with_key("u1"), Record::new().with_key("u2")]);
//! let named: Vec<_> = outcome.output(0).iter().map(|r| r.value_str().unwrap()).collect();
//! assert_eq!(named, ["Ada", ""]);
//! # }
//! ```
//!
//! Each thread has its own host state, so tests may run in parallel.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::{codec, Level, Record};

/// The type of the `fjord_on_batch` export that [`transform!`](crate::transform) generates.
pub type OnBatch = extern "C" fn(*mut u8, usize) -> i32;

/// A lookup table's newest values by key.
type Entries = HashMap<Vec<u8>, Vec<u8>>;

/// The host's limit on one batch's output, in encoded bytes.
pub const DEFAULT_OUTPUT_LIMIT: usize = 16 << 20;

/// A configured stand-in for the broker; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct TestHost {
    env: Vec<(String, String)>,
    outputs: Vec<String>,
    tables: Vec<(String, Entries)>,
    output_limit: usize,
}

impl Default for TestHost {
    fn default() -> Self {
        TestHost { env: Vec::new(), outputs: Vec::new(), tables: Vec::new(), output_limit: DEFAULT_OUTPUT_LIMIT }
    }
}

impl TestHost {
    /// A host with no outputs, no lookup tables and an empty environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets environment variable `name` (replacing an earlier value).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.env.retain(|(n, _)| *n != name);
        self.env.push((name, value.into()));
        self
    }

    /// Declares the output topics, in order (replacing earlier ones); `FJORD_OUTPUTS` lists them.
    pub fn outputs<S: Into<String>>(mut self, topics: impl IntoIterator<Item = S>) -> Self {
        self.outputs = topics.into_iter().map(Into::into).collect();
        self
    }

    /// Declares the next lookup table (number = how many were declared before it), the topic
    /// `topic` holding `entries` as its newest values; `FJORD_LOOKUPS` lists them.
    pub fn lookup_table<K, V>(mut self, topic: impl Into<String>, entries: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<Vec<u8>>,
        V: Into<Vec<u8>>,
    {
        let entries = entries.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        self.tables.push((topic.into(), entries));
        self
    }

    /// Sets the limit on one batch's encoded output (default [`DEFAULT_OUTPUT_LIMIT`]).
    pub fn output_limit(mut self, bytes: usize) -> Self {
        self.output_limit = bytes;
        self
    }

    /// Runs `on_batch` on `records`, encoded as a `batch`.
    pub fn run(&self, on_batch: OnBatch, records: &[Record]) -> Outcome {
        let batch = codec::encode_batch(records).expect("the test batch encodes");
        self.run_bytes(on_batch, &batch)
    }

    /// Runs `on_batch` on `batch` as given, which need not be a valid encoding.
    pub fn run_bytes(&self, on_batch: OnBatch, batch: &[u8]) -> Outcome {
        let mut env = self.env.clone();
        for (name, value) in [
            ("FJORD_TRANSFORM", "test-transform".to_string()),
            ("FJORD_INPUT", "test-input".to_string()),
            ("FJORD_OUTPUTS", self.outputs.join(",")),
            ("FJORD_LOOKUPS", self.tables.iter().map(|(topic, _)| topic.as_str()).collect::<Vec<_>>().join(",")),
        ] {
            if !env.iter().any(|(n, _)| n == name) {
                env.push((name.to_string(), value));
            }
        }
        let state = double::State {
            env: env.into_iter().collect(),
            outputs: self.outputs.len(),
            tables: self.tables.iter().map(|(_, entries)| entries.clone()).collect(),
            output_limit: self.output_limit,
            output_bytes: 0,
            emitted: Vec::new(),
            logs: Vec::new(),
            lookup_capacities: Vec::new(),
        };
        let _active = double::Active::install(state);
        let ptr = crate::__private::alloc(batch.len());
        assert!(!ptr.is_null(), "fjord_alloc({}) failed", batch.len());
        // SAFETY: `alloc` returned a buffer of `batch.len()` writable bytes.
        unsafe { std::ptr::copy_nonoverlapping(batch.as_ptr(), ptr, batch.len()) };
        let status = on_batch(ptr, batch.len());
        let state = double::Active::take();
        Outcome {
            status,
            // As in the broker: a failed batch writes nothing.
            emitted: if status == 0 { state.emitted } else { Vec::new() },
            logs: state.logs,
            lookup_capacities: state.lookup_capacities,
        }
    }
}

/// What a batch run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What `fjord_on_batch` returned: 0 when the batch succeeded.
    pub status: i32,
    /// The records written, with their output numbers, in emit order; empty when the batch
    /// failed, since the broker then writes nothing.
    pub emitted: Vec<(u32, Record)>,
    /// The log lines, in order.
    pub logs: Vec<(Level, String)>,
    /// The `out_cap` of each `fjord.lookup` call, in order.
    pub lookup_capacities: Vec<usize>,
}

impl Outcome {
    /// Whether the batch succeeded.
    pub fn is_ok(&self) -> bool {
        self.status == 0
    }

    /// The records written to output number `output`, in order.
    pub fn output(&self, output: u32) -> Vec<&Record> {
        self.emitted.iter().filter(|(o, _)| *o == output).map(|(_, record)| record).collect()
    }

    /// The log lines at `level`.
    pub fn logs_at(&self, level: Level) -> Vec<&str> {
        self.logs.iter().filter(|(l, _)| *l == level).map(|(_, line)| line.as_str()).collect()
    }
}

/// The `fjord` imports, answered from the running [`TestHost`]'s state.
pub(crate) mod double {
    use super::*;

    pub(crate) struct State {
        pub(crate) env: HashMap<String, String>,
        pub(crate) outputs: usize,
        pub(crate) tables: Vec<Entries>,
        pub(crate) output_limit: usize,
        pub(crate) output_bytes: usize,
        pub(crate) emitted: Vec<(u32, Record)>,
        pub(crate) logs: Vec<(Level, String)>,
        pub(crate) lookup_capacities: Vec<usize>,
    }

    thread_local! {
        static ACTIVE: RefCell<Option<State>> = const { RefCell::new(None) };
    }

    /// Installs a state for the current thread; dropping it uninstalls it, even when a test
    /// panics mid-batch.
    pub(crate) struct Active;

    impl Active {
        pub(crate) fn install(state: State) -> Active {
            ACTIVE.with(|active| *active.borrow_mut() = Some(state));
            Active
        }

        pub(crate) fn take() -> State {
            ACTIVE.with(|active| active.borrow_mut().take()).expect("a test host is running")
        }
    }

    impl Drop for Active {
        fn drop(&mut self) {
            let _ = ACTIVE.try_with(|active| active.borrow_mut().take());
        }
    }

    fn with<R>(f: impl FnOnce(Option<&mut State>) -> R) -> R {
        ACTIVE.with(|active| f(active.borrow_mut().as_mut()))
    }

    pub(crate) fn emit(output: i32, record: &[u8]) -> i32 {
        with(|state| {
            let Some(state) = state else { return -1 };
            let Ok(output) = u32::try_from(output) else { return -1 };
            if output as usize >= state.outputs {
                return -1;
            }
            let Ok(decoded) = codec::decode_record(record) else { return -2 };
            if state.output_bytes + record.len() > state.output_limit {
                return -3;
            }
            state.output_bytes += record.len();
            state.emitted.push((output, decoded));
            0
        })
    }

    pub(crate) fn log(level: i32, message: &str) {
        let level = match level {
            0 => Level::Debug,
            1 => Level::Info,
            2 => Level::Warn,
            _ => Level::Error,
        };
        with(|state| match state {
            Some(state) => state.logs.push((level, message.to_string())),
            None => eprintln!("[{level:?}] {message}"),
        })
    }

    pub(crate) fn lookup(table: i32, key: &[u8], out: &mut Vec<u8>) -> i32 {
        out.clear();
        with(|state| {
            let Some(state) = state else { return -2 };
            state.lookup_capacities.push(out.capacity());
            let Some(table) = usize::try_from(table).ok().and_then(|t| state.tables.get(t)) else { return -2 };
            let Some(value) = table.get(key) else { return -1 };
            // As the host does: copy only when the value fits the offered capacity.
            if value.len() <= out.capacity() {
                out.extend_from_slice(value);
            }
            value.len() as i32
        })
    }

    /// `Some` while a test host runs a batch on this thread: then its environment is the
    /// whole environment.
    pub(crate) fn env(name: &str) -> Option<Option<String>> {
        with(|state| state.map(|state| state.env.get(name).cloned()))
    }
}
