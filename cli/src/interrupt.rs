//! Ctrl-C (SIGINT, and SIGTERM or SIGHUP) while a command writes its outputs:
//! the temporary files it staged beside them are removed before the process
//! ends with exit status 130, so an interrupted command leaves every file as it
//! was, as a failed one does. An interrupt that arrives while the outputs are
//! being renamed into place waits until every one of them is in place (or put
//! back), so the outputs are old or new together.
//!
//! The handler runs on a thread of its own (the `ctrlc` crate), where taking a
//! lock and removing files is safe, unlike in a signal handler.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The temporary files staged and not yet committed: renamed into place, or
/// removed by the roll-back. A stage that failed leaves its (already removed)
/// file here, which the handler's removal then skips.
static STAGED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Exit status of an interrupted command (128 + SIGINT, as shells report it).
const INTERRUPTED_STATUS: i32 = 130;

/// Installs the handler: called once, first thing in `main`.
pub fn install() {
    // Without the handler an interrupt still ends the process, by the signal's
    // default action; only the staged files' removal is lost.
    let _ = ctrlc::set_handler(|| {
        let staged = staged();
        for path in staged.iter() {
            let _ = std::fs::remove_file(path);
        }
        let _ = std::io::Write::write_all(&mut std::io::stderr(), b"error: interrupted\n");
        std::process::exit(INTERRUPTED_STATUS);
    });
}

/// The list of staged files, locked: while a caller holds it, an interrupt
/// waits.
pub(crate) fn staged() -> MutexGuard<'static, Vec<PathBuf>> {
    STAGED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Creates a temporary file with `create` and records it for removal on an
/// interrupt, with interrupts held off in between (else one could come after
/// the file exists and before it is recorded).
pub(crate) fn create_tracked<T: AsRef<Path>>(create: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut staged = staged();
    let created = create()?;
    staged.push(created.as_ref().to_path_buf());
    Ok(created)
}

/// Forgets `paths` (renamed into place or removed) in `staged`, the held list.
pub(crate) fn forget(staged: &mut MutexGuard<'static, Vec<PathBuf>>, paths: &[PathBuf]) {
    staged.retain(|path| !paths.contains(path));
}
