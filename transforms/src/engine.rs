//! The wasmtime host of ABI.md: compiling and checking a module at deploy, and running batches
//! through an instance under the transform's limits (memory, fuel), with no file system, network
//! or clock beyond the records'.

use std::sync::Arc;

use bytes::Bytes;
use fjord_storage::records::Record;
use wasmtime::{
    Caller, Config, Engine, Extern, ExternType, FuncType, Instance, Linker, Memory, Module, ResourceLimiter, Store,
    Trap, TypedFunc, Val, ValType,
};

/// The ABI version modules must report (`fjord_abi_version`).
pub const ABI_VERSION: i32 = 1;
/// Default linear memory limit of an instance.
pub const DEFAULT_MEMORY_LIMIT: u64 = 2 << 20;
/// Default fuel per batch: about as many WebAssembly instructions.
pub const DEFAULT_FUEL_PER_BATCH: u64 = 2_000_000_000;
/// Most records handed to the module in one call.
pub const MAX_BATCH_RECORDS: usize = 500;
/// Most encoded bytes handed to the module in one call (and never more than a quarter of its
/// memory limit).
pub const MAX_BATCH_BYTES: usize = 256 << 10;
/// Most bytes a batch may emit, all outputs together.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;
/// Most log bytes kept per batch; past it lines are counted and dropped.
const MAX_LOG_BYTES: usize = 64 << 10;
/// Smallest memory limit a transform may set: Rust modules need a few pages to start.
pub const MIN_MEMORY_LIMIT: u64 = 256 << 10;
/// Largest memory limit a transform may set.
pub const MAX_MEMORY_LIMIT: u64 = 1 << 30;

const WASI: &str = "wasi_snapshot_preview1";
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_NOSYS: i32 = 52;
const PAGE: u64 = 65536;

/// What an instance may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub fuel_per_batch: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_bytes: DEFAULT_MEMORY_LIMIT, fuel_per_batch: DEFAULT_FUEL_PER_BATCH }
    }
}

impl Limits {
    /// Checks the limits a deploy asked for.
    pub fn check(&self) -> Result<(), String> {
        if !(MIN_MEMORY_LIMIT..=MAX_MEMORY_LIMIT).contains(&self.memory_bytes) {
            return Err(format!(
                "memory_limit_bytes must be between {MIN_MEMORY_LIMIT} and {MAX_MEMORY_LIMIT}, not {}",
                self.memory_bytes
            ));
        }
        if self.fuel_per_batch == 0 {
            return Err("fuel_per_batch must be positive".into());
        }
        Ok(())
    }

    /// Most encoded input bytes per call under these limits.
    pub fn batch_bytes(&self) -> usize {
        MAX_BATCH_BYTES.min(usize::try_from(self.memory_bytes / 4).unwrap_or(usize::MAX))
    }
}

/// Log levels of `fjord.log` (and of captured stdout, info, and stderr, error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn from_i32(l: i32) -> Level {
        match l {
            i32::MIN..=0 => Level::Debug,
            1 => Level::Info,
            2 => Level::Warn,
            _ => Level::Error,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
}

/// A record the module emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// What one batch produced: records by output index, and log lines.
#[derive(Debug, Default)]
pub struct BatchOutput {
    pub records: Vec<(usize, OutRecord)>,
    pub logs: Vec<LogLine>,
}

/// A batch that failed: the module trapped, ran out of fuel or memory, or returned an error.
/// The transform is paused with `message`; `logs` are the lines written before the failure.
#[derive(Debug)]
pub struct RunError {
    pub message: String,
    pub logs: Vec<LogLine>,
}

/// A lookup of a table number the transform did not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSuchTable;

/// The lookup tables a transform declared, as the host keeps them.
pub trait Lookup: Send + Sync {
    /// The newest value of `key` in table `table`: None when absent or a tombstone.
    fn get(&self, table: usize, key: &[u8]) -> Result<Option<Bytes>, NoSuchTable>;
}

/// No lookup tables.
pub struct NoLookups;

impl Lookup for NoLookups {
    fn get(&self, _table: usize, _key: &[u8]) -> Result<Option<Bytes>, NoSuchTable> {
        Err(NoSuchTable)
    }
}

/// What an instance sees of its transform besides the records.
#[derive(Clone)]
pub struct HostEnv {
    /// `KEY=VALUE` pairs, the transform's own and FJORD_*.
    pub env: Vec<(String, String)>,
    pub outputs: usize,
    pub lookups: Arc<dyn Lookup>,
}

/// The shared compiler and runtime configuration: one per broker.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
}

impl Runtime {
    pub fn new() -> anyhow::Result<Runtime> {
        let mut config = Config::new();
        // Fuel bounds every batch: an endless loop runs out instead of holding a thread.
        config.consume_fuel(true);
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("cannot start the WASM engine: {e}"))?;
        Ok(Runtime { engine })
    }

    /// Compiles and checks a module for a transform with `limits` and `outputs` outputs: the
    /// exports ABI.md requires, only imports the host provides, initial memory within the
    /// limit. The error says what is wrong with the module.
    pub fn compile(&self, bytes: &[u8], limits: &Limits) -> Result<Module, String> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err("not a WebAssembly module (no \\0asm header)".into());
        }
        let module = Module::new(&self.engine, bytes).map_err(|e| format!("not a valid WebAssembly module: {e:#}"))?;
        check_module(&module, limits)?;
        Ok(module)
    }

    /// An instance of `module` (which `compile` checked), initialized.
    pub fn instantiate(&self, module: &Module, env: HostEnv, limits: Limits) -> Result<Guest, RunError> {
        Guest::new(&self.engine, module, env, limits)
    }
}

/// A function type as (parameters, results).
type Sig = (Vec<ValType>, Vec<ValType>);

fn check_module(module: &Module, limits: &Limits) -> Result<(), String> {
    let func = |params: &[ValType], results: &[ValType]| (params.to_vec(), results.to_vec());
    let want: [(&str, Sig); 3] = [
        ("fjord_abi_version", func(&[], &[ValType::I32])),
        ("fjord_alloc", func(&[ValType::I32], &[ValType::I32])),
        ("fjord_on_batch", func(&[ValType::I32, ValType::I32], &[ValType::I32])),
    ];
    let mut missing = Vec::new();
    for (name, (params, results)) in &want {
        match module.get_export(name) {
            Some(ExternType::Func(f)) => {
                if !same_sig(&f, params, results) {
                    return Err(format!("export {name} has type {f:?}; ABI.md gives ({params:?}) -> ({results:?})"));
                }
            }
            Some(other) => return Err(format!("export {name} is not a function but {other:?}")),
            None => missing.push(*name),
        }
    }
    match module.get_export("memory") {
        Some(ExternType::Memory(m)) => {
            if m.is_64() {
                return Err("its memory is 64-bit; Fjord runs wasm32 modules".into());
            }
            let initial = m.minimum().saturating_mul(PAGE);
            if initial > limits.memory_bytes {
                return Err(format!(
                    "it starts with {initial} bytes of memory, over the transform's limit of {} \
                     (raise memory_limit_bytes, or link with a smaller stack: -zstack-size)",
                    limits.memory_bytes
                ));
            }
        }
        _ => missing.push("memory"),
    }
    if !missing.is_empty() {
        return Err(format!(
            "it does not export {} (a module built with transforms/sdk has them; see transforms/ABI.md)",
            missing.join(", ")
        ));
    }
    for import in module.imports() {
        let known = match import.module() {
            "fjord" => matches!(import.name(), "emit" | "log" | "lookup"),
            WASI => matches!(import.ty(), ExternType::Func(_)),
            _ => false,
        };
        if !known {
            return Err(format!(
                "it imports {}.{}, which Fjord does not provide (only fjord.emit, fjord.log, fjord.lookup \
                 and WASI preview 1 functions)",
                import.module(),
                import.name()
            ));
        }
        if let (Some(sig), ExternType::Func(f)) = (fjord_import_sig(import.module(), import.name()), import.ty()) {
            if !same_sig(&f, &sig.0, &sig.1) {
                return Err(format!("import {}.{} has type {f:?}, not the ABI's", import.module(), import.name()));
            }
        }
    }
    Ok(())
}

fn fjord_import_sig(module: &str, name: &str) -> Option<Sig> {
    use ValType::I32;
    if module != "fjord" {
        return None;
    }
    Some(match name {
        "emit" => (vec![I32, I32, I32], vec![I32]),
        "log" => (vec![I32, I32, I32], vec![]),
        "lookup" => (vec![I32, I32, I32, I32, I32], vec![I32]),
        _ => return None,
    })
}

fn same_sig(f: &FuncType, params: &[ValType], results: &[ValType]) -> bool {
    let p: Vec<ValType> = f.params().collect();
    let r: Vec<ValType> = f.results().collect();
    p.len() == params.len()
        && r.len() == results.len()
        && p.iter().zip(params).all(|(a, b)| ValType::eq(a, b))
        && r.iter().zip(results).all(|(a, b)| ValType::eq(a, b))
}

/// The store's data: the host state one instance's imports work on.
struct Host {
    env: HostEnv,
    memory_limit: u64,
    /// Fuel per batch, for the message when it runs out.
    fuel: u64,
    /// Set when a growth past the limit was refused: the failure then names the limit.
    memory_refused: Option<u64>,
    out: BatchOutput,
    out_bytes: usize,
    log_bytes: usize,
    logs_dropped: usize,
    /// Unfinished lines written to stdout (0) and stderr (1).
    partial: [Vec<u8>; 2],
    /// What `clock_time_get` answers: the batch's newest record timestamp, in nanoseconds.
    clock_ns: u64,
    /// `random_get`'s generator, seeded per batch.
    rng: u64,
    exit: Option<i32>,
}

impl ResourceLimiter for Host {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_limit {
            self.memory_refused = Some(desired as u64);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl Host {
    fn log(&mut self, level: Level, message: String) {
        if self.log_bytes + message.len() > MAX_LOG_BYTES {
            self.logs_dropped += 1;
            return;
        }
        self.log_bytes += message.len();
        self.out.logs.push(LogLine { level, message });
    }

    /// Captured stdout/stderr bytes, logged line by line.
    fn captured(&mut self, stream: usize, bytes: &[u8]) {
        self.partial[stream].extend_from_slice(bytes);
        while let Some(nl) = self.partial[stream].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial[stream].drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            self.log(if stream == 0 { Level::Info } else { Level::Error }, text);
        }
        // A line longer than the whole log budget is cut rather than kept growing.
        if self.partial[stream].len() > MAX_LOG_BYTES {
            self.flush_stream(stream);
        }
    }

    fn flush_stream(&mut self, stream: usize) {
        if !self.partial[stream].is_empty() {
            let text = String::from_utf8_lossy(&std::mem::take(&mut self.partial[stream])).into_owned();
            self.log(if stream == 0 { Level::Info } else { Level::Error }, text);
        }
    }

    fn take_logs(&mut self) -> Vec<LogLine> {
        self.flush_stream(0);
        self.flush_stream(1);
        if self.logs_dropped > 0 {
            let n = std::mem::take(&mut self.logs_dropped);
            self.out.logs.push(LogLine {
                level: Level::Warn,
                message: format!("{n} log lines of this batch dropped (over {MAX_LOG_BYTES} bytes)"),
            });
        }
        self.log_bytes = 0;
        std::mem::take(&mut self.out.logs)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: cheap, and the same bytes for the same batch.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A live instance of a transform's module: one per input partition.
pub struct Guest {
    store: Store<Host>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    on_batch: TypedFunc<(i32, i32), i32>,
    fuel: u64,
}

impl Guest {
    fn new(engine: &Engine, module: &Module, env: HostEnv, limits: Limits) -> Result<Guest, RunError> {
        let host = Host {
            env,
            memory_limit: limits.memory_bytes,
            fuel: limits.fuel_per_batch,
            memory_refused: None,
            out: BatchOutput::default(),
            out_bytes: 0,
            log_bytes: 0,
            logs_dropped: 0,
            partial: [Vec::new(), Vec::new()],
            clock_ns: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
            exit: None,
        };
        let mut store = Store::new(engine, host);
        store.limiter(|h| h as &mut dyn ResourceLimiter);
        let fail = |store: &mut Store<Host>, message: String| RunError { message, logs: store.data_mut().take_logs() };
        if let Err(e) = store.set_fuel(limits.fuel_per_batch) {
            return Err(fail(&mut store, format!("cannot set fuel: {e}")));
        }
        let linker = match linker(engine, module) {
            Ok(l) => l,
            Err(e) => return Err(fail(&mut store, format!("cannot link the module: {e:#}"))),
        };
        let instance: Instance = match linker.instantiate(&mut store, module) {
            Ok(i) => i,
            Err(e) => {
                let message = describe_failure(&store, &e, "starting");
                return Err(fail(&mut store, message));
            }
        };
        let Some(memory) = instance.get_memory(&mut store, "memory") else {
            return Err(fail(&mut store, "it exports no memory".into()));
        };
        let typed = |store: &mut Store<Host>| -> wasmtime::Result<_> {
            Ok((
                instance.get_typed_func::<(), i32>(&mut *store, "fjord_abi_version")?,
                instance.get_typed_func::<i32, i32>(&mut *store, "fjord_alloc")?,
                instance.get_typed_func::<(i32, i32), i32>(&mut *store, "fjord_on_batch")?,
            ))
        };
        let (version, alloc, on_batch) = match typed(&mut store) {
            Ok(f) => f,
            Err(e) => return Err(fail(&mut store, format!("missing export: {e:#}"))),
        };
        if let Some(Extern::Func(init)) = instance.get_export(&mut store, "_initialize") {
            let init = match init.typed::<(), ()>(&store) {
                Ok(f) => f,
                Err(e) => return Err(fail(&mut store, format!("_initialize has the wrong type: {e:#}"))),
            };
            if let Err(e) = init.call(&mut store, ()) {
                let message = describe_failure(&store, &e, "initializing");
                return Err(fail(&mut store, message));
            }
        }
        match version.call(&mut store, ()) {
            Ok(ABI_VERSION) => {}
            Ok(v) => {
                return Err(fail(
                    &mut store,
                    format!("it was built for ABI version {v}; this broker runs {ABI_VERSION}"),
                ))
            }
            Err(e) => {
                let message = describe_failure(&store, &e, "asking its ABI version");
                return Err(fail(&mut store, message));
            }
        }
        Ok(Guest { store, memory, alloc, on_batch, fuel: limits.fuel_per_batch })
    }

    /// Runs `records` (in offset order, at most [`MAX_BATCH_RECORDS`]) through the module. On an
    /// error the instance must be dropped: its state is whatever the failure left.
    pub fn run(&mut self, records: &[Record]) -> Result<BatchOutput, RunError> {
        let encoded = encode_batch(records);
        {
            let h = self.store.data_mut();
            h.out = BatchOutput::default();
            h.out_bytes = 0;
            h.clock_ns =
                (records.iter().map(|r| r.timestamp).max().unwrap_or(0).max(0) as u64).saturating_mul(1_000_000);
            h.rng = seed(records.first().map_or(0, |r| r.offset));
            h.memory_refused = None;
        }
        let fail = |guest: &mut Guest, message: String| RunError { message, logs: guest.store.data_mut().take_logs() };
        if let Err(e) = self.store.set_fuel(self.fuel) {
            return Err(fail(self, format!("cannot set fuel: {e}")));
        }
        let len = match i32::try_from(encoded.len()) {
            Ok(l) => l,
            Err(_) => return Err(fail(self, "batch too large".into())),
        };
        let ptr = match self.alloc.call(&mut self.store, len) {
            Ok(p) => p,
            Err(e) => {
                let message = describe_failure(&self.store, &e, "allocating the batch");
                return Err(fail(self, message));
            }
        };
        if ptr == 0 || self.memory.write(&mut self.store, ptr as u32 as usize, &encoded).is_err() {
            let message = match self.store.data().memory_refused {
                Some(asked) => memory_message(self.store.data().memory_limit, asked, "allocating the batch"),
                None => format!("fjord_alloc({len}) returned no usable memory ({ptr})"),
            };
            return Err(fail(self, message));
        }
        match self.on_batch.call(&mut self.store, (ptr, len)) {
            Ok(0) => {}
            Ok(code) => {
                let message = format!("fjord_on_batch returned error {code}");
                let mut logs = self.store.data_mut().take_logs();
                // The module's own explanation, if it logged one, names the failure.
                let why = logs.iter().rev().find(|l| l.level == Level::Error).map(|l| l.message.clone());
                let message = match why {
                    Some(w) => format!("{message}: {w}"),
                    None => message,
                };
                logs.shrink_to_fit();
                return Err(RunError { message, logs });
            }
            Err(e) => {
                let message = describe_failure(&self.store, &e, "processing a batch");
                return Err(fail(self, message));
            }
        }
        let h = self.store.data_mut();
        let logs = h.take_logs();
        let mut out = std::mem::take(&mut h.out);
        out.logs = logs;
        Ok(out)
    }

    /// Fuel the last batch left unused: how much of the limit it took.
    pub fn fuel_left(&self) -> u64 {
        self.store.get_fuel().unwrap_or(0)
    }
}

fn seed(offset: i64) -> u64 {
    (offset as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

fn memory_message(limit: u64, asked: u64, doing: &str) -> String {
    format!("out of memory while {doing}: it asked for {asked} bytes, over its memory limit of {limit} bytes")
}

/// The message a failed call pauses the transform with: out of fuel, out of memory, an exit, a
/// trap (with the module's last error line when it wrote one, e.g. a Rust panic's message).
fn describe_failure(store: &Store<Host>, e: &wasmtime::Error, doing: &str) -> String {
    let h = store.data();
    if let Some(code) = h.exit {
        return format!("the module exited with code {code} while {doing}");
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        if *trap == Trap::OutOfFuel {
            return format!(
                "out of fuel while {doing}: it ran past its limit of {} per batch (an endless loop?)",
                h.fuel
            );
        }
        if let Some(asked) = h.memory_refused {
            return memory_message(h.memory_limit, asked, doing);
        }
        let panic = h
            .out
            .logs
            .iter()
            .rev()
            .find(|l| l.level == Level::Error)
            .map(|l| l.message.clone())
            .or_else(|| (!h.partial[1].is_empty()).then(|| String::from_utf8_lossy(&h.partial[1]).into_owned()));
        return match panic {
            Some(p) => format!("the module trapped while {doing} ({trap}): {}", p.trim()),
            None => format!("the module trapped while {doing}: {trap}"),
        };
    }
    if let Some(asked) = h.memory_refused {
        return memory_message(h.memory_limit, asked, doing);
    }
    format!("the module failed while {doing}: {e:#}")
}

/// The imports of ABI.md for `module`: fjord.* and the WASI functions it imports (those the
/// host does not implement answer ENOSYS).
fn linker(engine: &Engine, module: &Module) -> wasmtime::Result<Linker<Host>> {
    let mut l: Linker<Host> = Linker::new(engine);
    l.func_wrap("fjord", "emit", |mut c: Caller<'_, Host>, output: i32, ptr: i32, len: i32| -> i32 {
        let outputs = c.data().env.outputs;
        if output < 0 || output as usize >= outputs {
            return -1;
        }
        let Some(bytes) = read(&mut c, ptr, len) else { return -2 };
        let Some(record) = decode_record(&mut Cursor::new(&bytes)) else { return -2 };
        let h = c.data_mut();
        if h.out_bytes + bytes.len() > MAX_OUTPUT_BYTES {
            return -3;
        }
        h.out_bytes += bytes.len();
        h.out.records.push((
            output as usize,
            OutRecord { timestamp: record.timestamp, key: record.key, value: record.value, headers: record.headers },
        ));
        0
    })?;
    l.func_wrap("fjord", "log", |mut c: Caller<'_, Host>, level: i32, ptr: i32, len: i32| {
        if let Some(bytes) = read(&mut c, ptr, len) {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            c.data_mut().log(Level::from_i32(level), text);
        }
    })?;
    l.func_wrap(
        "fjord",
        "lookup",
        |mut c: Caller<'_, Host>, table: i32, key_ptr: i32, key_len: i32, out_ptr: i32, out_cap: i32| -> i32 {
            let Some(key) = read(&mut c, key_ptr, key_len) else { return -2 };
            if table < 0 {
                return -2;
            }
            let value = match c.data().env.lookups.get(table as usize, &key) {
                Err(NoSuchTable) => return -2,
                Ok(None) => return -1,
                Ok(Some(v)) => v,
            };
            let Ok(n) = i32::try_from(value.len()) else { return -1 };
            if n <= out_cap && !write(&mut c, out_ptr, &value) {
                return -2;
            }
            n
        },
    )?;
    for import in module.imports() {
        if import.module() != WASI {
            continue;
        }
        let ExternType::Func(ty) = import.ty() else { continue };
        let name = import.name().to_string();
        match name.as_str() {
            "fd_write" => {
                l.func_wrap(
                    WASI,
                    "fd_write",
                    |mut c: Caller<'_, Host>, fd: i32, iovs: i32, n: i32, written: i32| -> i32 {
                        if fd != 1 && fd != 2 {
                            return ERRNO_BADF;
                        }
                        let mut total = 0u32;
                        for i in 0..n.max(0) {
                            let Some(iov) = read(&mut c, iovs.wrapping_add(i.wrapping_mul(8)), 8) else {
                                return ERRNO_FAULT;
                            };
                            let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                            let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                            let Some(bytes) = read(&mut c, ptr, len) else { return ERRNO_FAULT };
                            c.data_mut().captured(fd as usize - 1, &bytes);
                            total = total.wrapping_add(bytes.len() as u32);
                        }
                        if write(&mut c, written, &total.to_le_bytes()) {
                            0
                        } else {
                            ERRNO_FAULT
                        }
                    },
                )?;
            }
            "environ_sizes_get" => {
                l.func_wrap(WASI, "environ_sizes_get", |mut c: Caller<'_, Host>, count: i32, size: i32| -> i32 {
                    let vars = &c.data().env.env;
                    let n = vars.len() as u32;
                    let bytes: usize = vars.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
                    let bytes = bytes as u32;
                    if write(&mut c, count, &n.to_le_bytes()) && write(&mut c, size, &bytes.to_le_bytes()) {
                        0
                    } else {
                        ERRNO_FAULT
                    }
                })?;
            }
            "environ_get" => {
                l.func_wrap(WASI, "environ_get", |mut c: Caller<'_, Host>, ptrs: i32, buf: i32| -> i32 {
                    let vars = c.data().env.env.clone();
                    let mut at = buf;
                    for (i, (k, v)) in vars.iter().enumerate() {
                        let entry = format!("{k}={v}\0");
                        let slot = ptrs.wrapping_add((i as i32).wrapping_mul(4));
                        if !write(&mut c, slot, &at.to_le_bytes()) || !write(&mut c, at, entry.as_bytes()) {
                            return ERRNO_FAULT;
                        }
                        at = at.wrapping_add(entry.len() as i32);
                    }
                    0
                })?;
            }
            "args_sizes_get" => {
                l.func_wrap(WASI, "args_sizes_get", |mut c: Caller<'_, Host>, count: i32, size: i32| -> i32 {
                    if write(&mut c, count, &0u32.to_le_bytes()) && write(&mut c, size, &0u32.to_le_bytes()) {
                        0
                    } else {
                        ERRNO_FAULT
                    }
                })?;
            }
            "args_get" => {
                l.func_wrap(WASI, "args_get", |_: Caller<'_, Host>, _: i32, _: i32| -> i32 { 0 })?;
            }
            "clock_time_get" => {
                l.func_wrap(
                    WASI,
                    "clock_time_get",
                    |mut c: Caller<'_, Host>, _id: i32, _precision: i64, out: i32| -> i32 {
                        let now = c.data().clock_ns;
                        if write(&mut c, out, &now.to_le_bytes()) {
                            0
                        } else {
                            ERRNO_FAULT
                        }
                    },
                )?;
            }
            "random_get" => {
                l.func_wrap(WASI, "random_get", |mut c: Caller<'_, Host>, buf: i32, len: i32| -> i32 {
                    let Ok(len) = usize::try_from(len) else { return ERRNO_FAULT };
                    let mut bytes = Vec::with_capacity(len + 8);
                    while bytes.len() < len {
                        let r = c.data_mut().next_random();
                        bytes.extend_from_slice(&r.to_le_bytes());
                    }
                    bytes.truncate(len);
                    if write(&mut c, buf, &bytes) {
                        0
                    } else {
                        ERRNO_FAULT
                    }
                })?;
            }
            "sched_yield" => {
                l.func_wrap(WASI, "sched_yield", |_: Caller<'_, Host>| -> i32 { 0 })?;
            }
            "proc_exit" => {
                l.func_wrap(WASI, "proc_exit", |mut c: Caller<'_, Host>, code: i32| -> wasmtime::Result<()> {
                    c.data_mut().exit = Some(code);
                    Err(wasmtime::Error::msg(format!("exited with code {code}")))
                })?;
            }
            _ => {
                // No files, no sockets: anything else answers ENOSYS (or traps, for a function
                // with no errno to return).
                let results: Vec<ValType> = ty.results().collect();
                let what = name.clone();
                l.func_new(WASI, &name, ty.clone(), move |_c, _params, out| {
                    if results.len() == 1 && matches!(results[0], ValType::I32) {
                        out[0] = Val::I32(ERRNO_NOSYS);
                        Ok(())
                    } else {
                        Err(wasmtime::Error::msg(format!("WASI {what} is not available to transforms")))
                    }
                })?;
            }
        }
    }
    Ok(l)
}

/// `len` bytes of the module's memory at `ptr`, or None when out of bounds.
fn read(c: &mut Caller<'_, Host>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let mem = c.get_export("memory")?.into_memory()?;
    let start = ptr as u32 as usize;
    let len = usize::try_from(len).ok()?;
    mem.data(&*c).get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
}

fn write(c: &mut Caller<'_, Host>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(mem) = c.get_export("memory").and_then(Extern::into_memory) else { return false };
    mem.write(&mut *c, ptr as u32 as usize, bytes).is_ok()
}

/// The ABI's `batch` encoding of `records`.
pub fn encode_batch(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + records.iter().map(encoded_len).sum::<usize>());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        out.extend_from_slice(&r.offset.to_le_bytes());
        out.extend_from_slice(&r.timestamp.to_le_bytes());
        put_bytes(&mut out, r.key.as_deref());
        put_bytes(&mut out, r.value.as_deref());
        out.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
        for (k, v) in &r.headers {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            put_bytes(&mut out, v.as_deref());
        }
    }
    out
}

/// Bytes a record takes in the batch encoding.
pub fn encoded_len(r: &Record) -> usize {
    let b = |x: &Option<Bytes>| 4 + x.as_ref().map_or(0, Bytes::len);
    16 + b(&r.key) + b(&r.value) + 4 + r.headers.iter().map(|(k, v)| 4 + k.len() + b(v)).sum::<usize>()
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.extend_from_slice(&(b.len() as i32).to_le_bytes());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, at: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Option<i64> {
        self.take(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Option<Option<Vec<u8>>> {
        let len = self.u32()? as i32;
        if len == -1 {
            return Some(None);
        }
        let len = usize::try_from(len).ok()?;
        self.take(len).map(|b| Some(b.to_vec()))
    }
}

struct Decoded {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// One `record` of the ABI, all of `c` (trailing bytes make it malformed).
fn decode_record(c: &mut Cursor<'_>) -> Option<Decoded> {
    let _offset = c.i64()?;
    let timestamp = c.i64()?;
    let key = c.bytes()?;
    let value = c.bytes()?;
    let n = c.u32()? as usize;
    // Each header takes at least 8 bytes: a count past what is left is malformed.
    if n > c.buf.len().saturating_sub(c.at) / 8 {
        return None;
    }
    let mut headers = Vec::with_capacity(n);
    for _ in 0..n {
        let klen = c.u32()? as usize;
        let k = c.take(klen)?.to_vec();
        headers.push((k, c.bytes()?));
    }
    (c.at == c.buf.len()).then_some(Decoded { timestamp, key, value, headers })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Where the test modules' `fjord_alloc` puts every batch.
    const BATCH_AT: u32 = 8192;
    /// Where a module's report record (see [`report`]) sits, and its value.
    const REPORT_AT: u32 = 256;
    const REPORT_VALUE_AT: u32 = REPORT_AT + 24;

    fn rec(
        offset: i64,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> Record {
        Record {
            offset,
            timestamp,
            key: key.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
            headers: headers.iter().map(|(k, v)| (Bytes::copy_from_slice(k), v.map(Bytes::copy_from_slice))).collect(),
        }
    }

    fn escape(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("\\{b:02x}")).collect()
    }

    /// Data segments of a test module from address 1024 on: `put` stores bytes and gives the
    /// `(i32.const ptr) (i32.const len)` operands naming them.
    struct Strings {
        next: u32,
        segments: String,
    }

    impl Strings {
        fn new() -> Strings {
            Strings { next: 1024, segments: String::new() }
        }

        fn put(&mut self, bytes: &[u8]) -> Str {
            let at = self.next;
            self.segments += &format!("(data (i32.const {at}) \"{}\")\n", escape(bytes));
            self.next += (bytes.len() as u32 + 8) & !7;
            assert!(self.next < BATCH_AT);
            Str { at, len: bytes.len() }
        }
    }

    /// Bytes `put` stored; shown as the operands `(i32.const ptr) (i32.const len)`.
    struct Str {
        at: u32,
        len: usize,
    }

    impl std::fmt::Display for Str {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "(i32.const {}) (i32.const {})", self.at, self.len)
        }
    }

    /// A record at REPORT_AT whose value (at REPORT_VALUE_AT, initially `value`) a module fills
    /// in: its data segment, and the instruction emitting it to output 0 (giving emit's result).
    fn report(value: &[u8]) -> (String, String) {
        let mut r = vec![0u8; 16];
        r.extend_from_slice(&(-1i32).to_le_bytes());
        r.extend_from_slice(&(value.len() as u32).to_le_bytes());
        r.extend_from_slice(value);
        r.extend_from_slice(&0u32.to_le_bytes());
        let segment = format!("(data (i32.const {REPORT_AT}) \"{}\")", escape(&r));
        let emit = format!("(call $emit (i32.const 0) (i32.const {REPORT_AT}) (i32.const {}))", r.len());
        (segment, emit)
    }

    /// The text of a module with the ABI's exports, `pages` of memory, the fjord imports and
    /// `imports`, the functions (and data) `funcs`, and `on_batch` as the body of
    /// `fjord_on_batch (param $ptr i32) (param $len i32) (result i32)`.
    fn module_text(imports: &str, pages: u32, funcs: &str, on_batch: &str) -> String {
        format!(
            r#"(module
  (import "fjord" "emit" (func $emit (param i32 i32 i32) (result i32)))
  (import "fjord" "log" (func $log (param i32 i32 i32)))
  (import "fjord" "lookup" (func $lookup (param i32 i32 i32 i32 i32) (result i32)))
  {imports}
  (memory (export "memory") {pages})
  (func (export "fjord_abi_version") (result i32) (i32.const 1))
  (func (export "fjord_alloc") (param i32) (result i32) (i32.const {BATCH_AT}))
  {funcs}
  (func (export "fjord_on_batch") (param $ptr i32) (param $len i32) (result i32)
    {on_batch}))"#
        )
    }

    fn module(imports: &str, funcs: &str, on_batch: &str) -> Vec<u8> {
        wat(&module_text(imports, 1, funcs, on_batch))
    }

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).unwrap_or_else(|e| panic!("test module does not parse: {e}\n{text}"))
    }

    fn host_env(outputs: usize) -> HostEnv {
        HostEnv { env: Vec::new(), outputs, lookups: Arc::new(NoLookups) }
    }

    fn guest_with(wasm: &[u8], env: HostEnv, limits: Limits) -> Guest {
        let runtime = Runtime::new().expect("engine");
        let module = runtime.compile(wasm, &limits).unwrap_or_else(|e| panic!("refused: {e}"));
        match runtime.instantiate(&module, env, limits) {
            Ok(g) => g,
            Err(e) => panic!("cannot instantiate: {}", e.message),
        }
    }

    fn guest(wasm: &[u8]) -> Guest {
        guest_with(wasm, host_env(1), Limits::default())
    }

    fn ok(guest: &mut Guest, records: &[Record]) -> BatchOutput {
        guest.run(records).unwrap_or_else(|e| panic!("batch failed: {} (logs {:?})", e.message, e.logs))
    }

    fn fails(guest: &mut Guest, records: &[Record]) -> RunError {
        match guest.run(records) {
            Ok(out) => panic!("batch succeeded: {out:?}"),
            Err(e) => e,
        }
    }

    fn refused(wasm: &[u8], limits: &Limits) -> String {
        match Runtime::new().expect("engine").compile(wasm, limits) {
            Ok(_) => panic!("module accepted"),
            Err(e) => e,
        }
    }

    fn line(level: Level, message: &str) -> LogLine {
        LogLine { level, message: message.into() }
    }

    /// The value of the one record a module emitted.
    fn reported(out: &BatchOutput) -> Vec<u8> {
        assert_eq!(out.records.len(), 1, "{out:?}");
        out.records[0].1.value.clone().expect("a value")
    }

    /// Emits each input record (its bytes in the batch, which is the emit layout too) to
    /// output `output` with `extra` added to its length; returns the first nonzero emit result,
    /// 99 if the records do not end at the batch's length.
    fn echo(output: i32, extra: i32) -> Vec<u8> {
        let funcs = r#"
  ;; bytes a `bytes` at $p takes
  (func $bytes_len (param $p i32) (result i32) (local $l i32)
    (local.set $l (i32.load (local.get $p)))
    (if (result i32) (i32.eq (local.get $l) (i32.const -1))
      (then (i32.const 4))
      (else (i32.add (i32.const 4) (local.get $l)))))
  ;; bytes the `record` at $p takes
  (func $record_len (param $p i32) (result i32) (local $q i32) (local $n i32)
    (local.set $q (i32.add (local.get $p) (i32.const 16)))
    (local.set $q (i32.add (local.get $q) (call $bytes_len (local.get $q))))
    (local.set $q (i32.add (local.get $q) (call $bytes_len (local.get $q))))
    (local.set $n (i32.load (local.get $q)))
    (local.set $q (i32.add (local.get $q) (i32.const 4)))
    (block $done
      (loop $header
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $q (i32.add (local.get $q) (i32.add (i32.const 4) (i32.load (local.get $q)))))
        (local.set $q (i32.add (local.get $q) (call $bytes_len (local.get $q))))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $header)))
    (i32.sub (local.get $q) (local.get $p)))"#;
        let body = format!(
            r#"(local $n i32) (local $p i32) (local $l i32) (local $r i32)
    (local.set $n (i32.load (local.get $ptr)))
    (local.set $p (i32.add (local.get $ptr) (i32.const 4)))
    (block $done
      (loop $each
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $l (call $record_len (local.get $p)))
        (local.set $r (call $emit (i32.const {output}) (local.get $p) (i32.add (local.get $l) (i32.const {extra}))))
        (if (local.get $r) (then (return (local.get $r))))
        (local.set $p (i32.add (local.get $p) (local.get $l)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $each)))
    (if (i32.ne (i32.sub (local.get $p) (local.get $ptr)) (local.get $len)) (then (return (i32.const 99))))
    (i32.const 0)"#
        );
        module("", funcs, &body)
    }

    fn sample() -> Vec<Record> {
        vec![
            rec(10, 1_000, Some(b"k1"), Some(b"v1"), &[(b"h", Some(b"x")), (b"n", None)]),
            rec(11, 2_000, None, Some(b""), &[]),
            rec(12, 1_500, Some(b""), None, &[(b"", Some(b""))]),
        ]
    }

    fn out_record(r: &Record) -> OutRecord {
        OutRecord {
            timestamp: r.timestamp,
            key: r.key.as_ref().map(|b| b.to_vec()),
            value: r.value.as_ref().map(|b| b.to_vec()),
            headers: r.headers.iter().map(|(k, v)| (k.to_vec(), v.as_ref().map(|b| b.to_vec()))).collect(),
        }
    }

    #[test]
    fn emitted_records_come_back_as_written() {
        let records = sample();
        let mut g = guest(&echo(0, 0));
        let out = ok(&mut g, &records);
        let want: Vec<(usize, OutRecord)> = records.iter().map(|r| (0, out_record(r))).collect();
        assert_eq!(out.records, want);
        assert!(out.logs.is_empty(), "{:?}", out.logs);
        // The next batch starts afresh: only its own records.
        let out = ok(&mut g, &records[1..2]);
        assert_eq!(out.records, vec![(0, out_record(&records[1]))]);
        // An empty batch emits nothing.
        assert!(ok(&mut g, &[]).records.is_empty());

        // Output numbers are kept.
        let mut g = guest_with(&echo(2, 0), host_env(3), Limits::default());
        let out = ok(&mut g, &records[..1]);
        assert_eq!(out.records, vec![(2, out_record(&records[0]))]);
    }

    #[test]
    fn emit_refuses_a_bad_output_or_a_malformed_record() {
        let records = sample();
        for output in [1, 5, -1] {
            let e = fails(&mut guest(&echo(output, 0)), &records);
            assert!(e.message.contains("fjord_on_batch returned error -1"), "output {output}: {}", e.message);
        }
        // Cut short by a byte, or with a byte past its end.
        for extra in [-1, 1] {
            let e = fails(&mut guest(&echo(0, extra)), &records);
            assert!(e.message.contains("fjord_on_batch returned error -2"), "extra {extra}: {}", e.message);
        }
    }

    #[test]
    fn logs_and_stdout_and_stderr_become_log_lines() {
        let mut s = Strings::new();
        let (debug, info, warn, error) =
            (s.put(b"debug line"), s.put(b"info line"), s.put(b"warn line"), s.put(b"error line"));
        let (out1, out2, err1) = (s.put(b"out one\nout two\npart"), s.put(b"ial\n"), s.put(b"err one\n"));
        let (tail, err_tail, bad) = (s.put(b"tail"), s.put(b"err tail"), s.put(b"nowhere\n"));
        let (two, iov) = (s.put(b"two-"), s.put(b"iov\n"));
        let funcs = format!(
            r#"{segments}
  ;; fd_write of one buffer; the errno, 999 if it reports another length than written
  (func $write (param $fd i32) (param $p i32) (param $l i32) (result i32) (local $e i32)
    (i32.store (i32.const 0) (local.get $p))
    (i32.store (i32.const 4) (local.get $l))
    (i32.store (i32.const 8) (i32.const -1))
    (local.set $e (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
    (if (i32.and (i32.eqz (local.get $e)) (i32.ne (i32.load (i32.const 8)) (local.get $l)))
      (then (return (i32.const 999))))
    (local.get $e))"#,
            segments = s.segments
        );
        let body = format!(
            r#"(local $e i32)
    (call $log (i32.const 0) {debug})
    (call $log (i32.const 1) {info})
    (call $log (i32.const 2) {warn})
    (call $log (i32.const 3) {error})
    (if (local.tee $e (call $write (i32.const 1) {out1})) (then (return (local.get $e))))
    (if (local.tee $e (call $write (i32.const 1) {out2})) (then (return (local.get $e))))
    (if (local.tee $e (call $write (i32.const 2) {err1})) (then (return (local.get $e))))
    (local.set $e (call $write (i32.const 3) {bad}))
    (if (i32.ne (local.get $e) (i32.const 8)) (then (return (i32.add (i32.const 1000) (local.get $e)))))
    ;; two buffers in one call
    (i32.store (i32.const 16) (i32.const {p1}))
    (i32.store (i32.const 20) (i32.const {l1}))
    (i32.store (i32.const 24) (i32.const {p2}))
    (i32.store (i32.const 28) (i32.const {l2}))
    (if (local.tee $e (call $fd_write (i32.const 1) (i32.const 16) (i32.const 2) (i32.const 8)))
      (then (return (i32.add (i32.const 2000) (local.get $e)))))
    (if (i32.ne (i32.load (i32.const 8)) (i32.const 8)) (then (return (i32.const 2999))))
    (if (local.tee $e (call $write (i32.const 1) {tail})) (then (return (local.get $e))))
    (if (local.tee $e (call $write (i32.const 2) {err_tail})) (then (return (local.get $e))))
    (i32.const 0)"#,
            p1 = two.at,
            l1 = two.len,
            p2 = iov.at,
            l2 = iov.len,
        );
        let imports =
            r#"(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))"#;
        let mut g = guest(&module(imports, &funcs, &body));
        let want = vec![
            line(Level::Debug, "debug line"),
            line(Level::Info, "info line"),
            line(Level::Warn, "warn line"),
            line(Level::Error, "error line"),
            line(Level::Info, "out one"),
            line(Level::Info, "out two"),
            line(Level::Info, "partial"),
            line(Level::Error, "err one"),
            line(Level::Info, "two-iov"),
            // Unfinished lines end with the batch.
            line(Level::Info, "tail"),
            line(Level::Error, "err tail"),
        ];
        let out = ok(&mut g, &sample());
        assert_eq!(out.logs, want);
        assert!(out.records.is_empty());
        // Each batch has its own lines.
        assert_eq!(ok(&mut g, &sample()).logs, want);
    }

    #[test]
    fn the_environment_is_the_transforms() {
        let body = r#"(local $count i32) (local $size i32) (local $i i32) (local $p i32) (local $end i32) (local $e i32)
    (if (local.tee $e (call $environ_sizes_get (i32.const 0) (i32.const 4)))
      (then (return (i32.add (i32.const 1000) (local.get $e)))))
    (local.set $count (i32.load (i32.const 0)))
    (local.set $size (i32.load (i32.const 4)))
    (if (local.tee $e (call $environ_get (i32.const 16) (i32.const 2048)))
      (then (return (i32.add (i32.const 2000) (local.get $e)))))
    ;; the whole buffer, then each entry from its pointer to the next (the last to the end)
    (call $log (i32.const 1) (i32.const 2048) (local.get $size))
    (local.set $end (i32.add (i32.const 2048) (local.get $size)))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $p (i32.load (i32.add (i32.const 16) (i32.shl (local.get $i) (i32.const 2)))))
        (call $log (i32.const 0) (local.get $p)
          (i32.sub
            (if (result i32) (i32.lt_u (i32.add (local.get $i) (i32.const 1)) (local.get $count))
              (then (i32.load (i32.add (i32.const 20) (i32.shl (local.get $i) (i32.const 2)))))
              (else (local.get $end)))
            (local.get $p)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (i32.const 0)"#;
        let imports = r#"
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))"#;
        let env = HostEnv {
            env: vec![
                ("FJORD_TRANSFORM".into(), "upper".into()),
                ("GREETING".into(), "hi there".into()),
                ("EMPTY".into(), String::new()),
            ],
            ..host_env(1)
        };
        let mut g = guest_with(&module(imports, "", body), env, Limits::default());
        let out = ok(&mut g, &sample());
        assert_eq!(
            out.logs,
            vec![
                line(Level::Info, "FJORD_TRANSFORM=upper\0GREETING=hi there\0EMPTY=\0"),
                line(Level::Debug, "FJORD_TRANSFORM=upper\0"),
                line(Level::Debug, "GREETING=hi there\0"),
                line(Level::Debug, "EMPTY=\0"),
            ]
        );
    }

    /// Reports the realtime and monotonic clocks (8 bytes each) and 16 random bytes.
    fn probe() -> Vec<u8> {
        let (segment, emit) = report(&[0; 32]);
        let v = REPORT_VALUE_AT;
        let body = format!(
            r#"(local $e i32)
    (if (local.tee $e (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const {v})))
      (then (return (i32.add (i32.const 1000) (local.get $e)))))
    (if (local.tee $e (call $clock_time_get (i32.const 1) (i64.const 1) (i32.const {c1})))
      (then (return (i32.add (i32.const 2000) (local.get $e)))))
    (if (local.tee $e (call $random_get (i32.const {r}) (i32.const 16)))
      (then (return (i32.add (i32.const 3000) (local.get $e)))))
    {emit}"#,
            c1 = v + 8,
            r = v + 16,
        );
        let imports = r#"
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))"#;
        module(imports, &segment, &body)
    }

    fn at(ts: &[i64], first_offset: i64) -> Vec<Record> {
        ts.iter().enumerate().map(|(i, t)| rec(first_offset + i as i64, *t, None, Some(b"x"), &[])).collect()
    }

    #[test]
    fn the_clock_is_the_batchs_newest_timestamp() {
        let mut g = guest(&probe());
        let clocks = |v: &[u8]| {
            (u64::from_le_bytes(v[..8].try_into().unwrap()), u64::from_le_bytes(v[8..16].try_into().unwrap()))
        };
        let v = reported(&ok(&mut g, &at(&[1_000, 3_000, 2_000], 5)));
        assert_eq!(clocks(&v), (3_000_000_000, 3_000_000_000));
        let v = reported(&ok(&mut g, &at(&[1_700_000_000_123], 8)));
        assert_eq!(clocks(&v), (1_700_000_000_123_000_000, 1_700_000_000_123_000_000));
        // No time before the epoch, and none past what nanoseconds in a u64 hold.
        let v = reported(&ok(&mut g, &at(&[-5], 9)));
        assert_eq!(clocks(&v), (0, 0));
        let v = reported(&ok(&mut g, &at(&[i64::MAX], 10)));
        assert_eq!(clocks(&v), (u64::MAX, u64::MAX));
    }

    #[test]
    fn random_bytes_depend_only_on_the_first_offset() {
        let random = |g: &mut Guest, records: &[Record]| reported(&ok(g, records))[16..].to_vec();
        let mut g = guest(&probe());
        let a = random(&mut g, &at(&[1, 2], 100));
        assert_ne!(a, vec![0; 16]);
        assert_ne!(a[..8], a[8..], "{a:?}");
        // Again, on this instance or another, and whatever else the batch holds.
        assert_eq!(random(&mut g, &at(&[1, 2], 100)), a);
        assert_eq!(random(&mut guest(&probe()), &at(&[7], 100)), a);
        // Another first offset, other bytes.
        let b = random(&mut g, &at(&[1, 2], 101));
        assert_ne!(b, a);
        assert_ne!(random(&mut g, &at(&[1, 2], 0)), a);
    }

    #[test]
    fn other_wasi_functions_answer_enosys() {
        let imports = r#"
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))"#;
        let body = r#"(local $e i32)
    (local.set $e (call $fd_close (i32.const 3)))
    (if (i32.ne (local.get $e) (i32.const 52)) (then (return (i32.add (i32.const 1000) (local.get $e)))))
    (call $path_open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
      (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 0))"#;
        let e = fails(&mut guest(&module(imports, "", body)), &sample());
        assert!(e.message.contains("fjord_on_batch returned error 52"), "{}", e.message);
    }

    struct Tables(HashMap<(usize, Vec<u8>), Option<Bytes>>);

    impl Lookup for Tables {
        fn get(&self, table: usize, key: &[u8]) -> Result<Option<Bytes>, NoSuchTable> {
            if table >= 2 {
                return Err(NoSuchTable);
            }
            Ok(self.0.get(&(table, key.to_vec())).cloned().flatten())
        }
    }

    #[test]
    fn lookups_copy_values_that_fit() {
        let mut s = Strings::new();
        let (k, nope, gone) = (s.put(b"k"), s.put(b"nope"), s.put(b"gone"));
        // The value: 8 results (i32), then three 8-byte buffers.
        let mut value = vec![0u8; 32];
        value.extend_from_slice(b"........********########");
        let (segment, emit) = report(&value);
        let res = |i: u32| REPORT_VALUE_AT + 4 * i;
        let buf = |i: u32| REPORT_VALUE_AT + 32 + 8 * i;
        let calls = [
            format!("(call $lookup (i32.const 0) {k} (i32.const {}) (i32.const 8))", buf(0)),
            format!("(call $lookup (i32.const 0) {k} (i32.const {}) (i32.const 4))", buf(1)),
            format!("(call $lookup (i32.const 0) {k} (i32.const {}) (i32.const 5))", buf(2)),
            format!("(call $lookup (i32.const 0) {nope} (i32.const {}) (i32.const 8))", buf(0)),
            format!("(call $lookup (i32.const 0) {gone} (i32.const {}) (i32.const 8))", buf(0)),
            format!("(call $lookup (i32.const 2) {k} (i32.const {}) (i32.const 8))", buf(0)),
            format!("(call $lookup (i32.const -1) {k} (i32.const {}) (i32.const 8))", buf(0)),
            format!("(call $lookup (i32.const 1) {k} (i32.const {}) (i32.const 0))", buf(0)),
        ];
        let body: String = calls
            .iter()
            .enumerate()
            .map(|(i, c)| format!("(i32.store (i32.const {}) {c})\n    ", res(i as u32)))
            .chain([emit])
            .collect();
        let tables = Tables(HashMap::from([
            ((0, b"k".to_vec()), Some(Bytes::from_static(b"hello"))),
            ((0, b"gone".to_vec()), None),
            ((1, b"k".to_vec()), Some(Bytes::from_static(b"other table"))),
        ]));
        let env = HostEnv { lookups: Arc::new(tables), ..host_env(1) };
        let mut g = guest_with(&module("", &format!("{}\n{segment}", s.segments), &body), env, Limits::default());
        let v = reported(&ok(&mut g, &sample()));
        let results: Vec<i32> = v[..32].chunks(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(results, vec![5, 5, 5, -1, -1, -2, -2, 11]);
        assert_eq!(&v[32..], b"hello...********hello###");
    }

    #[test]
    fn a_trap_fails_the_batch() {
        let e = fails(&mut guest(&module("", "", "unreachable")), &sample());
        assert!(e.message.contains("trapped"), "{}", e.message);

        // The module's last words (a Rust panic's message on stderr) name the failure.
        let mut s = Strings::new();
        let said = s.put(b"panicked at src/lib.rs:3: bad input");
        let body = format!(
            r#"(i32.store (i32.const 0) (i32.const {}))
    (i32.store (i32.const 4) (i32.const {}))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    unreachable"#,
            said.at, said.len
        );
        let imports =
            r#"(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))"#;
        let e = fails(&mut guest(&module(imports, &s.segments, &body)), &sample());
        assert!(e.message.contains("trapped"), "{}", e.message);
        assert!(e.message.contains("panicked at src/lib.rs:3: bad input"), "{}", e.message);
        assert_eq!(e.logs, vec![line(Level::Error, "panicked at src/lib.rs:3: bad input")]);
    }

    #[test]
    fn an_endless_loop_runs_out_of_fuel() {
        let limits = Limits { fuel_per_batch: 100_000, ..Limits::default() };
        let mut g = guest_with(&module("", "", "(loop $forever (br $forever)) (i32.const 0)"), host_env(1), limits);
        let e = fails(&mut g, &sample());
        assert!(e.message.contains("out of fuel"), "{}", e.message);
        assert!(e.message.contains("100000"), "{}", e.message);
    }

    #[test]
    fn every_batch_gets_its_fuel_afresh() {
        let body = r#"(local $i i32)
    (loop $again
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 1000))))
    (i32.const 0)"#;
        let limits = Limits { fuel_per_batch: 100_000, ..Limits::default() };
        let mut g = guest_with(&module("", "", body), host_env(1), limits);
        ok(&mut g, &sample());
        let used = 100_000 - g.fuel_left();
        assert!(used > 1000, "used {used}");
        // Together more than one batch's fuel.
        for _ in 0..(100_000 / used + 2) {
            ok(&mut g, &sample());
        }
    }

    #[test]
    fn memory_may_not_grow_past_the_limit() {
        // Grows by a page per record, and traps (as Rust's allocator aborts) when refused.
        let body = r#"(if (i32.eq (memory.grow (i32.load (local.get $ptr))) (i32.const -1)) (then unreachable))
    (i32.const 0)"#;
        let limits = Limits { memory_bytes: 4 * PAGE, ..Limits::default() };
        let mut g = guest_with(&module("", "", body), host_env(1), limits);
        ok(&mut g, &sample()[..2]); // 3 pages
        ok(&mut g, &sample()[..1]); // 4: the limit
        let e = fails(&mut g, &sample()[..1]);
        assert!(e.message.contains("memory limit of 262144 bytes"), "{}", e.message);
        assert!(e.message.contains("asked for 327680 bytes"), "{}", e.message);
    }

    #[test]
    fn proc_exit_fails_the_batch() {
        let imports = r#"(import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))"#;
        let body = "(call $proc_exit (i32.const 3)) (i32.const 0)";
        let e = fails(&mut guest(&module(imports, "", body)), &sample());
        assert!(e.message.contains("exited with code 3"), "{}", e.message);
    }

    #[test]
    fn an_error_result_fails_the_batch_with_the_modules_reason() {
        let mut s = Strings::new();
        let (why, later, records) = (s.put(b"no schema for key k1"), s.put(b"cleaning up"), s.put(b"emitted"));
        let (segment, emit) = report(b"lost");
        let body = format!(
            r#"(drop {emit})
    (call $log (i32.const 1) {records})
    (call $log (i32.const 3) {why})
    (call $log (i32.const 1) {later})
    (i32.const 7)"#
        );
        let mut g = guest(&module("", &format!("{}\n{segment}", s.segments), &body));
        let e = fails(&mut g, &sample());
        assert!(e.message.contains("returned error 7"), "{}", e.message);
        assert!(e.message.ends_with(": no schema for key k1"), "{}", e.message);
        assert_eq!(
            e.logs,
            vec![
                line(Level::Info, "emitted"),
                line(Level::Error, "no schema for key k1"),
                line(Level::Info, "cleaning up")
            ]
        );
        // Without an error line, the code alone.
        let e = fails(&mut guest(&module("", "", "(i32.const 7)")), &sample());
        assert_eq!(e.message, "fjord_on_batch returned error 7");
    }

    #[test]
    fn compile_refuses_what_is_not_a_transform() {
        let limits = Limits::default();
        assert!(Runtime::new().unwrap().compile(&module("", "", "(i32.const 0)"), &limits).is_ok());

        let e = refused(b"hello, this is no module", &limits);
        assert!(e.contains("not a WebAssembly module"), "{e}");
        let e = refused(b"\0asm\x01\0\0\0garbage", &limits);
        assert!(e.contains("not a valid WebAssembly module"), "{e}");

        let no_on_batch = wat(r#"(module
  (memory (export "memory") 1)
  (func (export "fjord_abi_version") (result i32) (i32.const 1))
  (func (export "fjord_alloc") (param i32) (result i32) (i32.const 0)))"#);
        let e = refused(&no_on_batch, &limits);
        assert!(e.contains("does not export fjord_on_batch ("), "{e}");
        let nothing = wat("(module)");
        let e = refused(&nothing, &limits);
        assert!(e.contains("does not export fjord_abi_version, fjord_alloc, fjord_on_batch, memory"), "{e}");

        let env = module(r#"(import "env" "now" (func (result i64)))"#, "", "(i32.const 0)");
        let e = refused(&env, &limits);
        assert!(e.contains("imports env.now"), "{e}");
        let unknown = module(r#"(import "fjord" "sleep" (func (param i32)))"#, "", "(i32.const 0)");
        let e = refused(&unknown, &limits);
        assert!(e.contains("imports fjord.sleep"), "{e}");
        let wasi_memory = module(r#"(import "wasi_snapshot_preview1" "mem" (global i32))"#, "", "(i32.const 0)");
        let e = refused(&wasi_memory, &limits);
        assert!(e.contains("imports wasi_snapshot_preview1.mem"), "{e}");

        let small = Limits { memory_bytes: 4 * PAGE, ..limits };
        let at_limit = wat(&module_text("", 4, "", "(i32.const 0)"));
        assert!(Runtime::new().unwrap().compile(&at_limit, &small).is_ok());
        let over = wat(&module_text("", 5, "", "(i32.const 0)"));
        let e = refused(&over, &small);
        assert!(e.contains("starts with 327680 bytes of memory, over the transform's limit of 262144"), "{e}");

        let wrong_export = wat(&module_text("", 1, "", "(i32.const 0)").replace(
            "(func (export \"fjord_on_batch\") (param $ptr i32) (param $len i32) (result i32)",
            "(func (export \"fjord_on_batch\") (param $ptr i32) (result i32) (local $len i32)",
        ));
        let e = refused(&wrong_export, &limits);
        assert!(e.contains("export fjord_on_batch has type"), "{e}");
        let not_a_func = wat(&module_text("", 1, "", "(i32.const 0)").replace(
            "(func (export \"fjord_abi_version\") (result i32) (i32.const 1))",
            "(global (export \"fjord_abi_version\") i32 (i32.const 1))",
        ));
        let e = refused(&not_a_func, &limits);
        assert!(e.contains("export fjord_abi_version is not a function"), "{e}");
        let wrong_emit = wat(&module_text("", 1, "", "(i32.const 0)")
            .replace("(func $emit (param i32 i32 i32) (result i32))", "(func $emit (param i32 i32) (result i32))"));
        let e = refused(&wrong_emit, &limits);
        assert!(e.contains("import fjord.emit has type"), "{e}");
    }

    #[test]
    fn instantiate_refuses_another_abi_version() {
        let v2 = wat(&module_text("", 1, "", "(i32.const 0)").replace(
            "(func (export \"fjord_abi_version\") (result i32) (i32.const 1))",
            "(func (export \"fjord_abi_version\") (result i32) (i32.const 2))",
        ));
        let runtime = Runtime::new().unwrap();
        let module = runtime.compile(&v2, &Limits::default()).expect("compiles: the version is asked at instantiation");
        match runtime.instantiate(&module, host_env(1), Limits::default()) {
            Ok(_) => panic!("ABI version 2 accepted"),
            Err(e) => assert!(e.message.contains("ABI version 2"), "{}", e.message),
        }
    }

    #[test]
    fn the_batch_encoding_is_the_abis() {
        let r = rec(0x0102, 7, Some(b"k"), None, &[(b"h", Some(b"v"))]);
        let mut want = Vec::new();
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(&0x0102i64.to_le_bytes());
        want.extend_from_slice(&7i64.to_le_bytes());
        want.extend_from_slice(&[1, 0, 0, 0, b'k']);
        want.extend_from_slice(&[0xff; 4]);
        want.extend_from_slice(&[1, 0, 0, 0]);
        want.extend_from_slice(&[1, 0, 0, 0, b'h', 1, 0, 0, 0, b'v']);
        assert_eq!(encode_batch(&[r]), want);
        assert_eq!(encode_batch(&[]), vec![0, 0, 0, 0]);

        let mut all = sample();
        all.push(rec(1, 2, None, None, &[]));
        all.push(rec(3, 4, Some(b"key"), Some(b"value"), &[]));
        all.push(rec(5, 6, None, None, &[(b"a", None), (b"bb", Some(b"ccc"))]));
        for r in &all {
            assert_eq!(encoded_len(r), encode_batch(std::slice::from_ref(r)).len() - 4, "{r:?}");
        }
        assert_eq!(encode_batch(&all).len(), 4 + all.iter().map(encoded_len).sum::<usize>());
    }
}
