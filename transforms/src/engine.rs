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
            h.clock_ns = records.iter().map(|r| r.timestamp).max().unwrap_or(0).max(0) as u64 * 1_000_000;
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
    20 + b(&r.key) + b(&r.value) + 4 + r.headers.iter().map(|(k, v)| 4 + k.len() + b(v)).sum::<usize>()
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
