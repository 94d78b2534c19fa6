//! Digests of a call's loss bits and gradient bytes, kept per adapter and case
//! in a file under tests/fixtures, so that a suite can pin the bits an earlier
//! kernel gave on the adapter they were recorded on. `XENT_RECORD_DIGESTS=1`
//! rewrites the file from the current kernel instead of comparing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use xent::{Context, Loss};

/// Runs each case of `cases(context)` on the default and the shared-memory
/// (workgroups of 256) contexts with `run`, checks its loss and gradient bytes
/// with `check`, and compares their digest with the one recorded at `path`
/// for that context's adapter (or records it).
pub fn check_every_case<C: Copy + std::fmt::Debug, I: Iterator<Item = C>>(
    path: &'static str,
    cases: impl Fn(&Context) -> I,
    run: impl Fn(&Context, C) -> (Loss, Vec<u8>),
    check: impl Fn(C, &Loss, &[u8]),
) {
    let contexts = [
        ("default", super::gpu()),
        ("shared-memory-256", super::gpu_without_subgroups()),
    ];
    let mut digests = DigestFile::open(path);
    for (name, context) in contexts {
        let Some(context) = context else { continue };
        digests.section(context, name);
        for case in cases(context) {
            let (loss, gradient) = run(context, case);
            check(case, &loss, &gradient);
            digests.check(&format!("{case:?}"), &loss, &gradient);
        }
    }
    digests.finish();
}

/// FNV-1a over the loss bits and the gradient bytes.
pub fn digest(loss: &Loss, gradient: &[u8]) -> u64 {
    let losses = match loss {
        Loss::Reduced(loss) => vec![*loss],
        Loss::PerRow(losses) => losses.clone(),
    };
    let loss_bytes = losses.iter().flat_map(|loss| loss.to_bits().to_le_bytes());
    loss_bytes
        .chain(gradient.iter().copied())
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Which adapter and context `name` the digests belong to.
fn adapter_line(context: &Context, name: &str) -> String {
    let info = context.adapter().get_info();
    format!("adapter {} / {} / {name}", info.name, info.driver_info)
}

/// The digests recorded in `text`, by adapter line, then case.
fn parse(text: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut digests: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut adapter = String::new();
    for line in text.lines() {
        if line.starts_with("adapter ") {
            adapter = line.to_owned();
        } else if let Some((case, value)) = line.rsplit_once(' ') {
            let value = u64::from_str_radix(value, 16).expect("a hexadecimal digest");
            digests
                .entry(adapter.clone())
                .or_default()
                .insert(case.to_owned(), value);
        }
    }
    digests
}

/// One suite's digest file: compared against (or, when recording, rewritten)
/// section by section, one section per adapter and context.
struct DigestFile {
    path: &'static str,
    recording: bool,
    recorded: BTreeMap<String, BTreeMap<String, u64>>,
    /// The adapter line of the current section.
    adapter: String,
    /// What a recording writes.
    record: String,
    compared: usize,
}

impl DigestFile {
    /// The digests at `path` (none when it is missing).
    fn open(path: &'static str) -> Self {
        Self {
            path,
            recording: std::env::var("XENT_RECORD_DIGESTS").is_ok_and(|value| value == "1"),
            recorded: parse(&std::fs::read_to_string(path).unwrap_or_default()),
            adapter: String::new(),
            record: String::new(),
            compared: 0,
        }
    }

    /// Starts the section of `context`, called `name` in the file.
    fn section(&mut self, context: &Context, name: &str) {
        self.adapter = adapter_line(context, name);
        if !self.recorded.contains_key(&self.adapter) && !self.recording {
            eprintln!(
                "no digests recorded for {}: checking the reference and the slices only",
                self.adapter
            );
        }
        writeln!(self.record, "{}", self.adapter).expect("write");
    }

    /// Records the digest of `key`'s loss and gradient, and asserts it equals the
    /// recorded one when this section has digests.
    fn check(&mut self, key: &str, loss: &Loss, gradient: &[u8]) {
        let actual = digest(loss, gradient);
        writeln!(self.record, "{key} {actual:016x}").expect("write");
        if self.recording {
            return;
        }
        let Some(expected) = self.recorded.get(&self.adapter) else {
            return;
        };
        let wanted = expected
            .get(key)
            .unwrap_or_else(|| panic!("{}: no digest for {key}", self.adapter));
        assert_eq!(
            actual, *wanted,
            "{}: {key}: bits differ from the recorded kernel's",
            self.adapter
        );
        self.compared += 1;
    }

    /// Writes the file when recording; else asserts that a section recorded
    /// for this adapter was compared.
    fn finish(self) {
        if self.recording {
            std::fs::write(self.path, self.record).expect("write the digests");
        } else if self
            .recorded
            .keys()
            .any(|adapter| self.record.contains(adapter.as_str()))
        {
            assert!(self.compared > 0, "digests recorded for this adapter but none compared");
        }
    }
}
