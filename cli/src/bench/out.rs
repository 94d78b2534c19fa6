//! `xent bench`'s lines, written as they come: the table and JSON lines on
//! stdout, notes on stderr. A write that fails (a full device) is remembered,
//! not a panic: nothing more is written after it and [`finish`] returns it as
//! the command's failure (exit status 1). A pipe whose reader is gone ends the
//! process quietly by SIGPIPE, as `xent bench | head` should.

use std::io::Write;
use std::sync::Mutex;

use crate::failure::{Failure, Outcome};

/// The first failed write's message, if any.
static FAILED: Mutex<Option<String>> = Mutex::new(None);

/// Writes `text` and a newline to stdout (`to_stderr`: stderr) unless an
/// earlier write failed.
pub(super) fn write_line(text: std::fmt::Arguments<'_>, to_stderr: bool) {
    let mut failed = FAILED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if failed.is_some() {
        return;
    }
    let written = if to_stderr {
        writeln!(std::io::stderr().lock(), "{text}")
    } else {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}").and_then(|()| stdout.flush())
    };
    if let Err(error) = written {
        let stream = if to_stderr { "stderr" } else { "stdout" };
        *failed = Some(format!("cannot write the benchmark to {stream}: {error}"));
    }
}

/// The first failed write as the command's failure.
pub(super) fn finish() -> Outcome {
    match FAILED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
        Some(message) => Err(Failure::Machine(message)),
        None => Ok(()),
    }
}

/// `println!` for `xent bench`: [`write_line`] to stdout.
macro_rules! out {
    ($($format:tt)*) => {
        $crate::bench::out::write_line(format_args!($($format)*), false)
    };
}

/// `eprintln!` for `xent bench`: [`write_line`] to stderr.
macro_rules! err_out {
    ($($format:tt)*) => {
        $crate::bench::out::write_line(format_args!($($format)*), true)
    };
}

pub(super) use {err_out, out};
