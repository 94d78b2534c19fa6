//! Arbitrary bytes as a `.npy` file, through every reader of the `xent` command
//! line (`xent_cli::npy_io`): each must return `Ok` or `Err`, never panic, never
//! hang, and never hold more memory than a small multiple of the file's size
//! (a counting allocator aborts the moment live memory passes the limit).

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use xent_cli::npy_io;

/// The system allocator, counting live bytes; aborts when they pass `LIMIT` above
/// `BASE` (both set around each reader call; `LIMIT` 0 means unchecked).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static BASE: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
    let limit = LIMIT.load(Ordering::Relaxed);
    if limit != 0 && live.saturating_sub(BASE.load(Ordering::Relaxed)) > limit {
        // No allocation here: a fixed message, then abort (libFuzzer reports the crash).
        let _ = std::io::stderr().write_all(b"npy_read: live memory passed the limit for this file's size\n");
        std::process::abort();
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(pointer, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One file per process, rewritten for each input.
fn path() -> &'static PathBuf {
    static PATH: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = PATH.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("input.npy");
        (dir, path)
    });
    path
}

/// Runs `read` with live memory limited to 8 bytes per byte of the file (an int8
/// file widened to int32 holds the bytes and four times them) plus 4 MiB for the
/// header's parse and the buffered reader.
fn limited<T>(size: usize, read: impl FnOnce() -> T) -> T {
    BASE.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    LIMIT.store(8 * size + (4 << 20), Ordering::Relaxed);
    let result = read();
    LIMIT.store(0, Ordering::Relaxed);
    result
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    std::fs::write(path, data).expect("write the input file");
    let size = data.len();

    // The logits; then the targets against the shape the logits declare (as the
    // CLI does) and against a fixed one, so that both targets paths are reached.
    let logits_shape = limited(size, || npy_io::read_logits(path)).ok().map(|(_, shape)| shape);
    let logits_shape = logits_shape.unwrap_or_else(|| vec![2, 3]);
    let index_shape: Vec<u64> = std::iter::once(logits_shape[0])
        .chain(logits_shape.iter().skip(2).copied())
        .collect();
    let _ = limited(size, || npy_io::read_targets(path, &index_shape, &logits_shape));
    // Class indices of whatever shape the file declares (the first refusal names it).
    if let Err(message) = limited(size, || npy_io::read_targets(path, &[], &[])).map(|_| ())
        && let Some(shape) = found_shape(&message)
    {
        let _ = limited(size, || npy_io::read_targets(path, &shape, &[]));
    }
    let _ = limited(size, || npy_io::read_floats(path, "input"));
    let _ = limited(size, || npy_io::read_matrix(path, "input"));
    if let Err(message) = limited(size, || npy_io::read_vector(path, "weight", 3))
        && let Some([length]) = found_shape(&message).as_deref()
    {
        let _ = limited(size, || npy_io::read_vector(path, "weight", *length as usize));
    }
});

/// The shape a reader's refusal names after `found [`, if any.
fn found_shape(message: &str) -> Option<Vec<u64>> {
    let start = message.find("found [")? + "found [".len();
    let end = start + message[start..].find(']')?;
    let text = &message[start..end];
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(", ").map(|extent| extent.parse().ok()).collect()
}
