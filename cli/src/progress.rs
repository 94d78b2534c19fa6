//! `xent bench`'s progress line on stderr: the shape, backend, phase and
//! repetition being timed, so that minutes between table rows are not silence.
//! Drawn only when stderr is a terminal and the output is not `--json`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static BAR: OnceLock<ProgressBar> = OnceLock::new();

/// Starts the progress line for `cases` shapes (hidden when `visible` is false or
/// stderr is not a terminal).
pub fn start(cases: usize, visible: bool) {
    let target = if visible && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(cases as u64), target);
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{pos}/{len} shapes, {elapsed}] {prefix} {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let _ = BAR.set(bar);
}

/// The shape (and element type) now being measured.
pub fn case(label: &str) {
    if let Some(bar) = BAR.get() {
        bar.set_prefix(label.to_owned());
        bar.set_message("");
    }
}

/// The backend and phase now being timed, e.g. `gpu: fused, host to host`.
pub fn phase(backend: &str, phase: &str) {
    if let Some(bar) = BAR.get() {
        bar.set_message(format!("{backend}: {phase}"));
    }
}

/// Repetition `index` of `count` of the current phase (0 for the warm-up).
pub fn repetition(index: u32, count: u32) {
    if let Some(bar) = BAR.get() {
        let message = bar.message();
        let phase = message.split(", rep ").next().unwrap_or_default().to_owned();
        let rep = if index == 0 {
            "warm-up".to_owned()
        } else {
            format!("{index}/{count}")
        };
        bar.set_message(format!("{phase}, rep {rep}"));
    }
}

/// One shape done.
pub fn advance() {
    if let Some(bar) = BAR.get() {
        bar.inc(1);
    }
}

/// Runs `print` with the progress line cleared, so table rows are not garbled.
pub fn suspend<T>(print: impl FnOnce() -> T) -> T {
    match BAR.get() {
        Some(bar) => bar.suspend(print),
        None => print(),
    }
}

/// Removes the progress line.
pub fn finish() {
    if let Some(bar) = BAR.get() {
        bar.finish_and_clear();
    }
}
