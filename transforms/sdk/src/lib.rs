//! Write WASM transforms for Fjord, the Kafka-compatible streaming broker.
//!
//! A transform is a `cdylib` built for `wasm32-wasip1`. The broker hands it batches of committed
//! records of its input topic; it writes records to the outputs it was deployed with (or writes
//! nothing, which drops the record). This crate hides the host ABI (`transforms/ABI.md`): write
//! a function that handles one [`Record`] and register it with [`transform!`] (or one that
//! handles a whole batch, with [`transform_batch!`]).
//!
//! ```
//! use fjord_transform_sdk::{info, transform, Error, Output, Record};
//!
//! /// Upper-cases every text value into the first output; drops tombstones and binary values.
//! fn shout(record: &Record, out: &mut Output) -> Result<(), Error> {
//!     let Some(text) = record.value_str() else {
//!         info(format!("dropping the record at offset {}: no text value", record.offset));
//!         return Ok(());
//!     };
//!     out.emit(0, record.clone().with_value(text.to_uppercase()))
//! }
//!
//! transform!(shout);
//!
//! # fn main() {
//! // On the build machine, `testing::TestHost` stands in for the broker and runs the very
//! // exports `transform!` generated, so transforms get ordinary unit tests.
//! # #[cfg(not(target_arch = "wasm32"))] {
//! use fjord_transform_sdk::testing::TestHost;
//!
//! let outcome = TestHost::new()
//!     .outputs(["shouted"])
//!     .run(fjord_on_batch, &[Record::new().with_key("k").with_value("hello"), Record::new()]);
//! assert!(outcome.is_ok());
//! let out = outcome.output(0);
//! assert_eq!(out.len(), 1);
//! assert_eq!(out[0].value_str(), Some("HELLO"));
//! assert_eq!(out[0].key_str(), Some("k"));
//! # }
//! # }
//! ```
//!
//! Its `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "shout"
//! version = "0.1.0"
//! edition = "2021"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! fjord-transform-sdk = { path = "../sdk" }
//!
//! [profile.release]
//! opt-level = "s"
//! lto = true
//! codegen-units = 1
//! panic = "abort"
//! strip = true
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip1`, with
//! `-C link-arg=-zstack-size=65536` in the target's rustflags: the broker's default memory limit
//! is 2 MiB, and Rust's default stack alone is 1 MiB.
//!
//! # What a transform sees
//!
//! - Records arrive in offset order, committed, never control records. A [`Record`]'s `offset`
//!   is ignored when emitted: the output partition assigns its own.
//! - Outputs are numbered in the order they were declared, from 0; [`Output::emit_to`] takes a
//!   topic name instead (from `FJORD_OUTPUTS`).
//! - [`lookup`] reads the newest value of a key in a lookup table (a compacted topic declared
//!   with the transform), by number or by topic name (from `FJORD_LOOKUPS`).
//! - [`env()`] reads the transform's environment, which also holds `FJORD_TRANSFORM`,
//!   `FJORD_INPUT`, `FJORD_OUTPUTS` and `FJORD_LOOKUPS`.
//! - [`debug`], [`info`], [`warn`] and [`error`] write to the transform's logs.
//! - Everything one batch emits is written as a unit. If the function returns an error, the SDK
//!   logs it and the batch fails: nothing it emitted is written and the transform is paused
//!   until `fjordctl transform resume`. So return errors for what an operator must fix, and
//!   route bad data somewhere (a dead-letter output) instead.
//! - A batch can be processed again after a crash: keep the output a function of the batch,
//!   the environment and the lookup tables (the clock and random numbers the host gives are
//!   deterministic too).

#![warn(missing_docs)]

use std::borrow::Borrow;
use std::fmt;

mod codec;
mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

/// The host ABI version this SDK implements, returned by the `fjord_abi_version` export.
pub const ABI_VERSION: i32 = 1;

/// A record: of the input batch, or one to emit.
///
/// `key`, `value` and header values are `None` when null, which is not the same as empty
/// (a record with a null value is a tombstone in a compacted topic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The input record's offset in its partition; ignored on emitted records.
    pub offset: i64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The key, `None` when null.
    pub key: Option<Vec<u8>>,
    /// The value, `None` when null.
    pub value: Option<Vec<u8>>,
    /// The headers in order; names may repeat. A value is `None` when null.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    /// An empty record: offset and timestamp 0, null key and value, no headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The key as UTF-8, `None` when null or not UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().and_then(|key| std::str::from_utf8(key).ok())
    }

    /// The value as UTF-8, `None` when null or not UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        self.value.as_deref().and_then(|value| std::str::from_utf8(value).ok())
    }

    /// The value of the last header named `name` (the one Kafka clients' `lastHeader` gives),
    /// `None` when there is no such header or its value is null.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().rev().find(|(key, _)| key == name).and_then(|(_, value)| value.as_deref())
    }

    /// [`Record::header`] as UTF-8, `None` also when it is not UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|value| std::str::from_utf8(value).ok())
    }

    /// This record with `key` as its key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// This record with `value` as its value.
    pub fn with_value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// This record with `timestamp` (milliseconds since the epoch).
    pub fn with_timestamp(mut self, timestamp: i64) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// This record with a header `name` = `value` appended after the others (an earlier
    /// header of the same name stays; [`Record::header`] returns the new one).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), Some(value.into())));
        self
    }
}

/// What went wrong, for errors the SDK itself raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The output number or topic name is not one of the transform's outputs.
    NoSuchOutput,
    /// The lookup table number or topic name is not one of the transform's lookup tables.
    NoSuchTable,
    /// The host refused an emitted record as malformed, or it was too large to encode.
    MalformedRecord,
    /// The batch's output is over the host's limit (16 MiB).
    OutputLimit,
    /// The batch the host passed could not be decoded.
    MalformedBatch,
    /// The host returned something the ABI does not define.
    Host,
    /// Raised by the transform's own code ([`Error::new`], or converted with `?`).
    Transform,
}

/// The error of a transform function, and of the SDK calls it makes.
///
/// Any [`std::error::Error`] converts into it, so `?` works on e.g. JSON parse errors; for
/// anything else use [`Error::new`]. (That conversion is why `Error` itself does not implement
/// `std::error::Error`.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// A transform error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_kind(ErrorKind::Transform, message)
    }

    pub(crate) fn with_kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, as logged.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        Error::new(error.to_string())
    }
}

/// A log level of [`log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Detail for debugging.
    Debug = 0,
    /// Normal operation.
    Info = 1,
    /// Something unusual that did not stop the transform.
    Warn = 2,
    /// Something failed.
    Error = 3,
}

/// Writes `message` to the transform's logs at `level`.
pub fn log(level: Level, message: impl AsRef<str>) {
    host::log(level as i32, message.as_ref());
}

/// Logs `message` at [`Level::Debug`].
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message);
}

/// Logs `message` at [`Level::Info`].
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message);
}

/// Logs `message` at [`Level::Warn`].
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message);
}

/// Logs `message` at [`Level::Error`].
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message);
}

/// The transform's environment variable `name`, `None` when unset or not UTF-8.
///
/// In a wasm module this is [`std::env::var`] (the host provides the environment). Natively,
/// while a [`testing::TestHost`] runs a batch, it reads that test host's environment instead,
/// so that tests running in parallel do not share one; use this rather than `std::env::var`
/// for transforms to be testable that way.
pub fn env(name: &str) -> Option<String> {
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(value) = testing::double::env(name) {
        return value;
    }
    std::env::var(name).ok()
}

fn list(var: &str) -> Vec<String> {
    env(var).unwrap_or_default().split(',').map(str::trim).filter(|name| !name.is_empty()).map(String::from).collect()
}

/// The output topics, in declared order (output number `i` is `outputs()[i]`), from
/// `FJORD_OUTPUTS`.
pub fn outputs() -> Vec<String> {
    list("FJORD_OUTPUTS")
}

/// The lookup topics, in declared order (table number `i` is `lookups()[i]`), from
/// `FJORD_LOOKUPS`.
pub fn lookups() -> Vec<String> {
    list("FJORD_LOOKUPS")
}

/// A lookup table, by number (declared order, from 0) or by topic name.
pub trait LookupTable {
    /// The table's number.
    fn index(&self) -> Result<u32, Error>;
}

impl LookupTable for u32 {
    fn index(&self) -> Result<u32, Error> {
        Ok(*self)
    }
}

impl LookupTable for &str {
    fn index(&self) -> Result<u32, Error> {
        let tables = lookups();
        match tables.iter().position(|name| name == self) {
            Some(index) => Ok(index as u32),
            None => Err(Error::with_kind(
                ErrorKind::NoSuchTable,
                format!("no lookup table `{self}` (FJORD_LOOKUPS: {})", tables.join(",")),
            )),
        }
    }
}

/// The first buffer a lookup offers the host; a bigger value costs a second call.
const LOOKUP_BUFFER: usize = 512;

/// The newest value of `key` in lookup `table`: `Ok(None)` when the key is absent (or its
/// newest record is a tombstone), an error when there is no such table.
///
/// ```no_run
/// # use fjord_transform_sdk::lookup;
/// # fn f() -> Result<(), fjord_transform_sdk::Error> {
/// let by_number = lookup(0, b"user-17")?;
/// let by_name = lookup("users", b"user-17")?;
/// # Ok(()) }
/// ```
pub fn lookup(table: impl LookupTable, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    let index = table.index()?;
    let no_table = || Error::with_kind(ErrorKind::NoSuchTable, format!("no lookup table number {index}"));
    let table = i32::try_from(index).map_err(|_| no_table())?;
    let mut buf = Vec::with_capacity(LOOKUP_BUFFER);
    // The value can only change between two calls if the host updates tables mid-batch; a few
    // tries cover that without trusting the host to ever settle.
    for _ in 0..4 {
        match host::lookup(table, key, &mut buf) {
            -1 => return Ok(None),
            -2 => return Err(no_table()),
            n if n < 0 => {
                return Err(Error::with_kind(ErrorKind::Host, format!("lookup in table {index} returned {n}")));
            }
            n if n as usize <= buf.capacity() => return Ok(Some(buf)),
            n => {
                buf = Vec::new();
                buf.try_reserve_exact(n as usize).map_err(|_| {
                    Error::with_kind(ErrorKind::Host, format!("no memory for a {n}-byte value of table {index}"))
                })?;
            }
        }
    }
    Err(Error::with_kind(ErrorKind::Host, format!("the value in table {index} kept growing between lookups")))
}

/// Where a transform function writes its records; one per batch.
pub struct Output {
    buf: Vec<u8>,
    outputs: Vec<String>,
}

impl Output {
    fn new() -> Self {
        Output { buf: Vec::new(), outputs: outputs() }
    }

    /// Writes `record` to output number `output` (declared order, from 0). Its `offset` is
    /// ignored. Fails when there is no such output, or when the batch's output is over the
    /// host's limit; returning that error fails the batch.
    pub fn emit(&mut self, output: u32, record: impl Borrow<Record>) -> Result<(), Error> {
        self.buf.clear();
        codec::encode_record(record.borrow(), &mut self.buf)?;
        let Ok(index) = i32::try_from(output) else {
            return Err(self.no_such_output(output));
        };
        match host::emit(index, &self.buf) {
            0 => Ok(()),
            -1 => Err(self.no_such_output(output)),
            -2 => Err(Error::with_kind(ErrorKind::MalformedRecord, "the host refused an emitted record as malformed")),
            -3 => Err(Error::with_kind(ErrorKind::OutputLimit, "the batch's output is over the host's limit")),
            n => Err(Error::with_kind(ErrorKind::Host, format!("emit to output {output} returned {n}"))),
        }
    }

    /// Writes `record` to the output topic named `topic` (a name in `FJORD_OUTPUTS`), as
    /// [`Output::emit`] does.
    pub fn emit_to(&mut self, topic: &str, record: impl Borrow<Record>) -> Result<(), Error> {
        match self.output_index(topic) {
            Some(index) => self.emit(index, record),
            None => Err(Error::with_kind(
                ErrorKind::NoSuchOutput,
                format!("no output topic `{topic}` (FJORD_OUTPUTS: {})", self.outputs.join(",")),
            )),
        }
    }

    /// The output topics in declared order, as [`outputs`] gives them.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// The number of output topic `topic`, `None` when it is not an output.
    pub fn output_index(&self, topic: &str) -> Option<u32> {
        self.outputs.iter().position(|name| name == topic).map(|index| index as u32)
    }

    fn no_such_output(&self, output: u32) -> Error {
        Error::with_kind(
            ErrorKind::NoSuchOutput,
            format!("no output number {output} (FJORD_OUTPUTS: {})", self.outputs.join(",")),
        )
    }
}

/// Registers `fn(&Record, &mut Output) -> Result<(), Error>`, called once per record of each
/// batch in offset order, as the transform, and generates the module's exports.
///
/// The first error stops the batch: it is logged at error level with the record's offset, and
/// the batch fails (`fjord_on_batch` returns nonzero). Use it once per crate, at the top level.
///
/// ```
/// use fjord_transform_sdk::{transform, Error, Output, Record};
///
/// fn identity(record: &Record, out: &mut Output) -> Result<(), Error> {
///     out.emit(0, record)
/// }
///
/// transform!(identity);
/// # fn main() {}
/// ```
///
/// The exports (ABI.md): `fjord_abi_version` returns [`ABI_VERSION`]; `fjord_alloc` allocates
/// the buffer the host writes a batch to; `fjord_on_batch` decodes it, frees it, calls the
/// function and returns 0, 1 when the function failed, or 2 when the batch could not be read.
#[macro_export]
macro_rules! transform {
    ($handler:expr $(,)?) => {
        $crate::__exports!($crate::__private::Handler::Record($handler));
    };
}

/// Registers `fn(&[Record], &mut Output) -> Result<(), Error>`, called once per batch with all
/// its records, as the transform, and generates the module's exports as [`transform!`] does.
///
/// ```
/// use fjord_transform_sdk::{transform_batch, Error, Output, Record};
///
/// /// One record per batch: how many records it had.
/// fn count(records: &[Record], out: &mut Output) -> Result<(), Error> {
///     out.emit(0, Record::new().with_value(records.len().to_string()))
/// }
///
/// transform_batch!(count);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! transform_batch {
    ($handler:expr $(,)?) => {
        $crate::__exports!($crate::__private::Handler::Batch($handler));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __exports {
    ($handler:expr) => {
        /// The host ABI version this module implements.
        #[no_mangle]
        pub extern "C" fn fjord_abi_version() -> i32 {
            $crate::ABI_VERSION
        }

        /// A buffer of `len` bytes for the host to write a batch to; null when out of memory.
        #[no_mangle]
        pub extern "C" fn fjord_alloc(len: usize) -> *mut u8 {
            $crate::__private::alloc(len)
        }

        /// Runs the transform on the batch at `ptr` (from `fjord_alloc`): 0 when it succeeded.
        #[no_mangle]
        pub extern "C" fn fjord_on_batch(ptr: *mut u8, len: usize) -> i32 {
            $crate::__private::on_batch(ptr, len, $handler)
        }
    };
}

/// What the macros' expansions call; not a stable API.
#[doc(hidden)]
pub mod __private {
    use std::cell::Cell;

    use crate::{codec, error, Error, ErrorKind, Output, Record};

    /// A per-record transform function.
    pub type RecordFn = fn(&Record, &mut Output) -> Result<(), Error>;
    /// A per-batch transform function.
    pub type BatchFn = fn(&[Record], &mut Output) -> Result<(), Error>;

    /// The registered transform function.
    pub enum Handler {
        /// Called per record.
        Record(RecordFn),
        /// Called per batch.
        Batch(BatchFn),
    }

    /// `fjord_on_batch`'s result when the transform function failed.
    pub const FAILED: i32 = 1;
    /// `fjord_on_batch`'s result when the batch could not be read.
    pub const BAD_BATCH: i32 = 2;

    thread_local! {
        // The buffer `fjord_alloc` handed out and `fjord_on_batch` has not consumed yet.
        // Holding it here (rather than trusting the host to pass back the same pointer and
        // length) is what lets `fjord_on_batch` check its arguments and free the buffer
        // without ever dereferencing a pointer it was given.
        static PENDING: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
    }

    /// `fjord_alloc`: `len` zeroed bytes owned by the module until the next `on_batch`.
    pub fn alloc(len: usize) -> *mut u8 {
        let mut buf = Vec::new();
        if buf.try_reserve_exact(len).is_err() {
            return std::ptr::null_mut();
        }
        buf.resize(len, 0);
        let mut buf = buf.into_boxed_slice();
        let ptr = buf.as_mut_ptr();
        // A buffer the host allocated but never passed (a failed write, say) is freed here.
        PENDING.set(Some(buf));
        ptr
    }

    fn take_batch(ptr: *mut u8, len: usize) -> Result<Vec<Record>, Error> {
        match PENDING.take() {
            Some(buf) if std::ptr::eq(buf.as_ptr(), ptr) && len <= buf.len() => codec::decode_batch(&buf[..len]),
            Some(buf) => Err(Error::with_kind(
                ErrorKind::MalformedBatch,
                format!(
                    "fjord_on_batch({ptr:?}, {len}) is not within the buffer fjord_alloc returned ({:?}, {})",
                    buf.as_ptr(),
                    buf.len()
                ),
            )),
            None => Err(Error::with_kind(ErrorKind::MalformedBatch, "fjord_on_batch called without fjord_alloc")),
        }
    }

    /// `fjord_on_batch`: decodes the batch, frees its buffer, runs `handler`.
    pub fn on_batch(ptr: *mut u8, len: usize, handler: Handler) -> i32 {
        // The input buffer is freed before the function runs: under a 2 MiB memory limit the
        // decoded records and the output need that room.
        let records = match take_batch(ptr, len) {
            Ok(records) => records,
            Err(e) => {
                error(format!("cannot read the batch: {e}"));
                return BAD_BATCH;
            }
        };
        let mut out = Output::new();
        let result = match handler {
            Handler::Record(f) => records.iter().try_for_each(|record| {
                f(record, &mut out)
                    .map_err(|e| format!("the transform failed on the record at offset {}: {e}", record.offset))
            }),
            Handler::Batch(f) => f(&records, &mut out).map_err(|e| {
                let first = records.first().map_or(0, |r| r.offset);
                format!("the transform failed on the batch from offset {first} ({} records): {e}", records.len())
            }),
        };
        match result {
            Ok(()) => 0,
            Err(message) => {
                error(message);
                FAILED
            }
        }
    }
}

#[cfg(test)]
mod tests;
