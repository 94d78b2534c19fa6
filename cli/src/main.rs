//! The `xent` command: the process's setup, then the command line (`xent_cli::run`).

use std::process::ExitCode;

use clap::Parser;

/// Mesa's Vulkan and GL drivers print `error: XDG_RUNTIME_DIR is invalid or not
/// set in the environment.` when the variable is unset, which reads as a failure of
/// xent. Without one, the process gets a private runtime directory (mode 0700,
/// removed at exit) before any instance is created.
fn private_runtime_directory() -> Option<tempfile::TempDir> {
    let usable = std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|path| std::path::Path::new(&path).is_dir());
    if usable {
        return None;
    }
    let directory = tempfile::Builder::new().prefix("xent-runtime-").tempdir().ok()?;
    // SAFETY: called first thing in `main`, before any other thread exists, so no
    // other thread can be reading the environment.
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", directory.path()) };
    Some(directory)
}

/// `xent … | head` ends xent quietly, as it does any Unix tool, instead of a
/// panic on the failed write: SIGPIPE gets its default action back (Rust's
/// runtime ignores it).
fn end_quietly_on_closed_pipes() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any thread
    // exists; no handler is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    end_quietly_on_closed_pipes();
    xent_cli::interrupt::install();
    let _runtime_directory = private_runtime_directory();
    xent_cli::run(xent_cli::Cli::parse())
}
