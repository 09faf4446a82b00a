//! The three `fjord` imports behind safe wrappers. On wasm32 they are the host's; elsewhere they
//! go to the in-process test double of [`crate::testing`], so the same SDK code runs in both.

#[cfg(target_arch = "wasm32")]
mod sys {
    // Pointers and lengths are `usize`/pointers so that they are the ABI's `i32` on wasm32.
    #[link(wasm_import_module = "fjord")]
    extern "C" {
        pub fn emit(output: i32, ptr: *const u8, len: usize) -> i32;
        pub fn log(level: i32, ptr: *const u8, len: usize);
        pub fn lookup(table: i32, key_ptr: *const u8, key_len: usize, out_ptr: *mut u8, out_cap: usize) -> i32;
    }
}

/// `fjord.emit`: writes one encoded `record` to output `output`.
#[cfg(target_arch = "wasm32")]
pub(crate) fn emit(output: i32, record: &[u8]) -> i32 {
    // SAFETY: the host only reads `record.len()` bytes at `record.as_ptr()`.
    unsafe { sys::emit(output, record.as_ptr(), record.len()) }
}

/// `fjord.log`: one log line.
#[cfg(target_arch = "wasm32")]
pub(crate) fn log(level: i32, message: &str) {
    // SAFETY: the host only reads `message.len()` bytes at `message.as_ptr()`.
    unsafe { sys::log(level, message.as_ptr(), message.len()) }
}

/// `fjord.lookup` into the spare capacity of `out` (cleared first). Returns what the host
/// returned; when that is a length that fits, `out` holds the value.
#[cfg(target_arch = "wasm32")]
pub(crate) fn lookup(table: i32, key: &[u8], out: &mut Vec<u8>) -> i32 {
    out.clear();
    let cap = out.capacity();
    // SAFETY: the host reads `key.len()` bytes of `key` and writes at most `cap` bytes at
    // `out.as_mut_ptr()`, which `out` owns.
    let n = unsafe { sys::lookup(table, key.as_ptr(), key.len(), out.as_mut_ptr(), cap) };
    if n >= 0 && n as usize <= cap {
        // SAFETY: the host copied the value's `n` bytes there, as it does whenever it fits.
        unsafe { out.set_len(n as usize) };
    }
    n
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::testing::double::{emit, log, lookup};
