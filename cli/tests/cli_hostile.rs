//! Hostile input for the `xent` binary: outputs that collide with each other or
//! with inputs, unwritable places, a full disk, non-regular files, truncated and
//! garbage `.npy` headers, shapes that overflow or cannot fit. Every case asserts
//! the exit status, the single `error:` line, that no output appeared, and that
//! every pre-existing file in the working directory is byte-for-byte unchanged.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cli::{assert_error, read_f32, stdout_json, write_npy, xent};

/// A directory of inputs (and pre-existing outputs) whose contents are compared
/// before and after each failing command.
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    /// logits.npy (6×5 f32), targets.npy (6 int64), old_grad.npy and
    /// old_losses.npy (outputs of an earlier run, to be preserved).
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (logits, targets) = common::batch(6, 5, common::Logits::Random, 5);
        let scene = Self { dir };
        write_npy(&scene.path("logits.npy"), &logits, &[6, 5]);
        write_npy(&scene.path("targets.npy"), &targets, &[6]);
        write_npy(&scene.path("old_grad.npy"), &[7.0f32; 4], &[2, 2]);
        write_npy(&scene.path("old_losses.npy"), &[9.0f32; 3], &[3]);
        scene
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().expect("utf-8 path").to_owned()
    }

    /// Every entry of the directory with its bytes (links by their target, FIFOs as a marker).
    fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(self.dir.path())
            .expect("read_dir")
            .map(|entry| {
                let entry = entry.expect("entry");
                let kind = entry.file_type().expect("file type");
                let content = if kind.is_file() {
                    std::fs::read(entry.path()).expect("read")
                } else if kind.is_symlink() {
                    let target = std::fs::read_link(entry.path()).expect("link");
                    format!("link -> {}", target.display()).into_bytes()
                } else {
                    b"(not a regular file)".to_vec()
                };
                (entry.file_name().to_string_lossy().into_owned(), content)
            })
            .collect()
    }

    /// Runs `args` (with `{name}` standing for a file of the scene) and asserts the
    /// failure contract: exit 2, one `error:` line naming `needle`, nothing on
    /// stdout, and the directory exactly as it was.
    fn assert_refused(&self, args: &[&str], needle: &str) {
        self.assert_refused_by(xent, args, needle);
    }

    /// [`Scene::assert_refused`] with the command run by `run`.
    fn assert_refused_by(&self, run: impl FnOnce(&[&str]) -> Output, args: &[&str], needle: &str) {
        self.assert_failed_by(run, 2, args, needle);
    }

    /// [`Scene::assert_refused_by`] for a failure with exit status `status`
    /// (1: the machine failed, e.g. a write).
    fn assert_failed_by(&self, run: impl FnOnce(&[&str]) -> Output, status: i32, args: &[&str], needle: &str) {
        let before = self.snapshot();
        let args = self.expand(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = run(&args);
        assert_error(&output, status, needle);
        let after = self.snapshot();
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "files appeared or vanished: {args:?}"
        );
        for (name, content) in &before {
            assert!(after[name] == *content, "{name} changed: {args:?}");
        }
    }

    fn expand(&self, args: &[&str]) -> Vec<String> {
        args.iter()
            .map(
                |arg| match arg.strip_prefix('{').and_then(|arg| arg.strip_suffix('}')) {
                    Some(name) => self.arg(name),
                    None => (*arg).to_owned(),
                },
            )
            .collect()
    }
}

/// The CPU and, where an adapter exists (always, unless XENT_ALLOW_NO_GPU=1), the GPU.
fn backends() -> Vec<&'static str> {
    match common::gpu() {
        Some(_) => vec!["cpu", "gpu"],
        None => vec!["cpu"],
    }
}

/// `xent` run through `sh -c` with `limits` (shell `ulimit` lines) set first;
/// SIGXFSZ is ignored so that a file-size limit shows as a failed write (EFBIG),
/// like a full disk, instead of killing the process.
fn xent_limited(limits: &str, args: &[&str]) -> Output {
    let script = format!("trap '' XFSZ; {limits}; exec \"$0\" \"$@\"");
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_xent"))
        .args(args)
        .output()
        .expect("run sh")
}

/// `xent`, killed after `limit` (a hang is a failure, reported as such).
fn xent_within(limit: Duration, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xent"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn xent");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            child.kill().expect("kill");
            panic!("xent {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// A version-1 `.npy` file: the header dict, padded as numpy pads it, then `body`.
fn npy_v1(descr: &str, fortran: bool, shape: &str, body: &[u8]) -> Vec<u8> {
    let fortran = if fortran { "True" } else { "False" };
    let mut text = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
    while (10 + text.len() + 1) % 64 != 0 {
        text.push(' ');
    }
    text.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((text.len() as u16).to_le_bytes());
    bytes.extend(text.as_bytes());
    bytes.extend(body);
    bytes
}

#[test]
fn an_output_naming_an_input_is_refused_and_the_input_kept() {
    let scene = Scene::new();
    std::os::unix::fs::symlink(scene.path("logits.npy"), scene.path("link_to_logits.npy")).expect("symlink");
    std::fs::hard_link(scene.path("targets.npy"), scene.path("hard_targets.npy")).expect("hard link");
    let dotted = format!("{}/./logits.npy", scene.dir.path().display());
    for backend in backends() {
        for (output, input_option) in [
            ("{logits.npy}", "--logits"),
            (dotted.as_str(), "--logits"),
            ("{link_to_logits.npy}", "--logits"),
            ("{hard_targets.npy}", "--targets"),
        ] {
            for option in ["--grad-out", "--losses-out"] {
                scene.assert_refused(
                    &[
                        "loss",
                        "--backend",
                        backend,
                        "--logits",
                        "{logits.npy}",
                        "--targets",
                        "{targets.npy}",
                        option,
                        output,
                    ],
                    &format!("{option} names the same file as {input_option}"),
                );
            }
        }
    }
}

/// `loss`, `bce` and `kl` on the scene's inputs (`probs.npy`: 6×5 probabilities
/// the test writes).
const SUBCOMMANDS: [&[&str]; 3] = [
    &["loss", "--logits", "{logits.npy}", "--targets", "{targets.npy}"],
    &["bce", "--input", "{logits.npy}", "--targets", "{probs.npy}"],
    &["kl", "--input", "{logits.npy}", "--target", "{probs.npy}"],
];

#[test]
fn two_outputs_naming_one_file_are_refused_in_every_subcommand() {
    let scene = Scene::new();
    write_npy(&scene.path("probs.npy"), &[0.5f32; 30], &[6, 5]);
    for backend in backends() {
        for subcommand in SUBCOMMANDS {
            for (grad, losses) in [
                ("{new.npy}", "{new.npy}"),
                ("{old_grad.npy}", "{old_grad.npy}"),
                ("{new.npy}", "{.}/new.npy"),
            ] {
                let dot = format!("{}/.", scene.dir.path().display());
                let losses = losses.replace("{.}", &dot);
                let mut args = subcommand.to_vec();
                args.extend(["--backend", backend, "--grad-out", grad, "--losses-out", &losses]);
                scene.assert_refused(&args, "--losses-out and --grad-out name the same file");
            }
        }
    }
}

#[test]
fn a_failure_after_the_first_output_leaves_every_file_as_it_was() {
    let scene = Scene::new();
    write_npy(&scene.path("bad_targets.npy"), &[0i64, 1, 7, 0, 1, 2], &[6]);
    for backend in backends() {
        // The second output cannot be created (/proc takes no new files, even for
        // root): an I/O failure, exit status 1.
        scene.assert_failed_by(
            xent,
            1,
            &[
                "loss",
                "--backend",
                backend,
                "--logits",
                "{logits.npy}",
                "--targets",
                "{targets.npy}",
                "--reduction",
                "none",
                "--grad-out",
                "{old_grad.npy}",
                "--losses-out",
                "/proc/xent-losses.npy",
            ],
            "/proc/xent-losses.npy",
        );
        // The computation fails after the outputs were planned.
        scene.assert_refused(
            &[
                "loss",
                "--backend",
                backend,
                "--logits",
                "{logits.npy}",
                "--targets",
                "{bad_targets.npy}",
                "--grad-out",
                "{old_grad.npy}",
                "--losses-out",
                "{old_losses.npy}",
            ],
            "target 7 at row 2",
        );
    }
}

#[test]
fn a_full_disk_leaves_the_old_outputs_and_no_temporary_files() {
    let scene = Scene::new();
    let (logits, targets) = common::batch(64, 1000, common::Logits::Random, 6);
    write_npy(&scene.path("big_logits.npy"), &logits, &[64, 1000]);
    write_npy(&scene.path("big_targets.npy"), &targets, &[64]);
    // 128 blocks of 512 bytes: the per-row losses (~400 bytes) fit, the 256 kB gradient does not.
    for backend in backends() {
        scene.assert_failed_by(
            |args| xent_limited("ulimit -f 128", args),
            1,
            &[
                "loss",
                "--backend",
                backend,
                "--logits",
                "{big_logits.npy}",
                "--targets",
                "{big_targets.npy}",
                "--losses-out",
                "{old_losses.npy}",
                "--grad-out",
                "{old_grad.npy}",
            ],
            "cannot write",
        );
    }
}

/// `xent` with its stdout on `stdout` (a full device, a pipe nobody reads).
fn xent_printing_to(stdout: impl Fn() -> Stdio) -> impl Fn(&[&str]) -> Output {
    move |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xent"))
            .args(args)
            .stdout(stdout())
            .output()
            .expect("run xent")
    }
}

/// The report is part of the command: when it cannot be written (stdout on a full
/// device, or a pipe whose reader is gone), the command fails with exit status 1
/// and one `error:` line, not a panic, and leaves the old outputs as they were.
/// (`info` writes no file: a closed pipe ends it by SIGPIPE, as `| head` should.)
#[test]
fn a_report_that_cannot_be_written_fails_the_command_and_keeps_the_files() {
    let scene = Scene::new();
    write_npy(&scene.path("probs.npy"), &[0.5f32; 30], &[6, 5]);
    let full_device = || Stdio::from(std::fs::File::create("/dev/full").expect("open /dev/full"));
    let closed_pipe = || {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        Stdio::from(writer)
    };
    for backend in backends() {
        for subcommand in SUBCOMMANDS {
            for stdout in [&full_device as &dyn Fn() -> Stdio, &closed_pipe] {
                let mut args = subcommand.to_vec();
                args.extend([
                    "--backend",
                    backend,
                    "--grad-out",
                    "{old_grad.npy}",
                    "--losses-out",
                    "{new_losses.npy}",
                ]);
                scene.assert_failed_by(xent_printing_to(stdout), 1, &args, "cannot write the report");
            }
        }
    }
    // `info` writes no file: on a full device it fails the same way, and a closed
    // pipe ends it quietly by SIGPIPE (`xent info | head`).
    for arguments in [&["info"][..], &["info", "--json"]] {
        assert_error(&xent_printing_to(full_device)(arguments), 1, "cannot write the report");
        let piped = xent_printing_to(closed_pipe)(arguments);
        assert_eq!(piped.status.signal(), Some(libc::SIGPIPE), "{piped:?}");
        assert!(piped.stderr.is_empty(), "{piped:?}");
    }
    // `bench` prints as it measures: on a full device it fails, and before its
    // plot replaces a file.
    let bench = [
        "bench",
        "--rows",
        "4",
        "--classes",
        "30",
        "--reps",
        "1",
        "--backend",
        "cpu",
        "--plot",
        "{old_grad.npy}",
    ];
    scene.assert_failed_by(xent_printing_to(full_device), 1, &bench, "cannot write the benchmark");
}

#[test]
fn outputs_in_missing_directories_directories_and_pipes_are_refused() {
    let scene = Scene::new();
    std::fs::create_dir(scene.path("a_directory")).expect("mkdir");
    let fifo = scene.path("a_fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success(), "mkfifo");
    for (output, needle) in [
        ("{missing_dir}/grad.npy", "missing_dir"),
        ("{a_directory}", "is a directory"),
        ("{a_fifo}", "not a regular file"),
        ("{old_grad.npy}/grad.npy", "old_grad.npy"),
        ("", "a value is required for '--grad-out"),
        // A trailing slash names a directory: no file `new_dir` is made for it.
        ("{new_dir}/", "names a directory"),
        ("{new_dir}/.", "names a directory"),
    ] {
        let output = output
            .replace("{missing_dir}", &scene.arg("missing_dir"))
            .replace("{a_directory}", &scene.arg("a_directory"))
            .replace("{a_fifo}", &scene.arg("a_fifo"))
            .replace("{new_dir}", &scene.arg("new_dir"))
            .replace("{old_grad.npy}", &scene.arg("old_grad.npy"));
        scene.assert_refused_by(
            |args| xent_within(Duration::from_secs(60), args),
            &[
                "loss",
                "--backend",
                "cpu",
                "--logits",
                "{logits.npy}",
                "--targets",
                "{targets.npy}",
                "--grad-out",
                &output,
            ],
            needle,
        );
    }
}

#[test]
fn inputs_that_are_not_regular_files_are_refused_without_blocking() {
    let scene = Scene::new();
    std::fs::create_dir(scene.path("a_directory")).expect("mkdir");
    let made = Command::new("mkfifo")
        .arg(scene.path("a_fifo"))
        .status()
        .expect("mkfifo");
    assert!(made.success(), "mkfifo");
    for (input, needle) in [
        ("{a_fifo}", "not a regular file"),
        ("{a_directory}", "is a directory"),
        ("{nothing_here.npy}", "cannot open"),
    ] {
        for (logits, targets) in [(input, "{targets.npy}"), ("{logits.npy}", input)] {
            scene.assert_refused_by(
                |args| xent_within(Duration::from_secs(60), args),
                &[
                    "loss",
                    "--backend",
                    "cpu",
                    "--logits",
                    logits,
                    "--targets",
                    targets,
                    "--grad-out",
                    "{grad.npy}",
                ],
                needle,
            );
        }
    }
}

#[test]
fn hostile_headers_are_refused_before_allocating() {
    let scene = Scene::new();
    let f32_body = |count: usize| vec![0u8; 4 * count];
    let mut huge_v2 = b"\x93NUMPY\x02\x00".to_vec();
    huge_v2.extend(0xFFFF_FFF0u32.to_le_bytes());
    huge_v2.resize(64, b' ');
    let overflow_shape = format!("(1, 2, {}, 2)", (1u64 << 63) + 1);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.npy", Vec::new(), "magic"),
        ("magic_only.npy", b"\x93NUMPY".to_vec(), "magic"),
        (
            "garbage.npy",
            b"PK\x03\x04 this is a zip file, not numpy".to_vec(),
            "magic",
        ),
        ("huge_header_v2.npy", huge_v2, "numpy's limit"),
        (
            "version_9.npy",
            npy_v1("<f4", false, "(6, 5)", &f32_body(30))
                .into_iter()
                .enumerate()
                .map(|(index, byte)| if index == 6 { 9 } else { byte })
                .collect(),
            "version 9",
        ),
        (
            "bad_dict.npy",
            npy_v1("<f4", false, "(6, 5", &f32_body(30)),
            "not a valid .npy",
        ),
        (
            "truncated_body.npy",
            npy_v1("<f4", false, "(6, 5)", &f32_body(29)),
            "(120 bytes of data) but the file holds 116 bytes after its header; the file is truncated",
        ),
        (
            "trailing_bytes.npy",
            npy_v1("<f4", false, "(6, 5)", &f32_body(31)),
            "truncated or not a .npy",
        ),
        (
            "huge_shape.npy",
            npy_v1("<f4", false, "(1000000000, 1000000000)", &f32_body(4)),
            "truncated",
        ),
        (
            "overflowing_shape.npy",
            npy_v1("<f4", false, &overflow_shape, &f32_body(4)),
            "more elements than fit in 64 bits",
        ),
        (
            "big_endian.npy",
            npy_v1(">f4", false, "(6, 5)", &f32_body(30)),
            "stored big-endian (dtype >f4); save them little-endian",
        ),
        (
            "fortran.npy",
            npy_v1("<f4", true, "(6, 5)", &f32_body(30)),
            "Fortran order",
        ),
        (
            "ints.npy",
            npy_v1("<i4", false, "(6, 5)", &f32_body(30)),
            "found dtype <i4",
        ),
        (
            "complex.npy",
            npy_v1("<c8", false, "(6, 5)", &[0u8; 240]),
            "found dtype <c8",
        ),
        (
            "strings.npy",
            npy_v1("|S4", false, "(6, 5)", &f32_body(30)),
            "found dtype |S4",
        ),
        ("scalar.npy", npy_v1("<f4", false, "()", &f32_body(1)), "shape (N, C)"),
    ];
    for (name, bytes, _) in &cases {
        std::fs::write(scene.path(name), bytes).expect("write");
    }
    for (name, _, needle) in &cases {
        let logits = format!("{{{name}}}");
        // Under a 3 GB address-space limit an allocation of gigabytes aborts the process.
        scene.assert_refused_by(
            |args| xent_limited("ulimit -v 3000000", args),
            &[
                "loss",
                "--backend",
                "cpu",
                "--logits",
                &logits,
                "--targets",
                "{targets.npy}",
                "--grad-out",
                "{grad.npy}",
            ],
            needle,
        );
    }
}

/// Header values nested in brackets: npyz's parser (py_literal's pest grammar)
/// parses the last element of a nested list or dict twice per level, so 40 levels
/// in a 150-byte file ran for hours (found by fuzz/'s npy_read target). xent reads
/// the header itself first and refuses all but the flat dict numpy writes, at once.
#[test]
fn nested_headers_are_refused_at_once() {
    let scene = Scene::new();
    let nested_lists = format!("{}{}", "[".repeat(40), "]".repeat(40));
    let nested_dicts = format!("{}0{}", "{0: ".repeat(40), "}".repeat(40));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "nested_lists.npy",
            npy_v1("<f4", false, &nested_lists, &[]),
            "not a valid .npy file: its header has '[' at byte 50 where '(' belongs",
        ),
        (
            "nested_dicts.npy",
            npy_v1("<f4", false, &nested_dicts, &[]),
            "not a valid .npy file: its header has '{' at byte 50 where '(' belongs",
        ),
    ];
    for (name, bytes, _) in &cases {
        std::fs::write(scene.path(name), bytes).expect("write");
    }
    for (name, _, needle) in &cases {
        let logits = format!("{{{name}}}");
        scene.assert_refused_by(
            |args| xent_within(Duration::from_secs(60), args),
            &[
                "loss",
                "--backend",
                "cpu",
                "--logits",
                &logits,
                "--targets",
                "{targets.npy}",
            ],
            needle,
        );
    }
}

#[test]
fn unsupported_target_files_name_what_is_accepted() {
    let scene = Scene::new();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "big_endian.npy",
            npy_v1(">i8", false, "(6,)", &[0u8; 48]),
            "stored big-endian (dtype >i8)",
        ),
        (
            "bools.npy",
            npy_v1("|b1", false, "(6,)", &[0u8; 6]),
            "int8 to int64, uint8 to uint32) or float32/float64 probabilities; found dtype |b1",
        ),
        (
            "overflowing.npy",
            npy_v1("<i8", false, &format!("({}, 2, 2)", 1u64 << 62), &[0u8; 48]),
            "more elements than fit in 64 bits",
        ),
    ];
    for (name, bytes, _) in &cases {
        std::fs::write(scene.path(name), bytes).expect("write");
    }
    for (name, _, needle) in &cases {
        let targets = format!("{{{name}}}");
        scene.assert_refused(
            &[
                "loss",
                "--backend",
                "cpu",
                "--logits",
                "{logits.npy}",
                "--targets",
                &targets,
            ],
            needle,
        );
    }
}

#[test]
fn an_nd_shape_whose_rows_overflow_is_refused() {
    let scene = Scene::new();
    // (2, 3, 2^62, 4) logits: N·d1·d2 rows overflow 64 bits though the header's
    // element count is checked first; here the element count itself overflows.
    let shape = format!("(2, 3, {}, 4)", 1u64 << 62);
    std::fs::write(scene.path("nd.npy"), npy_v1("<f4", false, &shape, &[0u8; 96])).expect("write");
    scene.assert_refused(
        &[
            "loss",
            "--backend",
            "cpu",
            "--logits",
            "{nd.npy}",
            "--targets",
            "{targets.npy}",
        ],
        "more elements than fit in 64 bits",
    );
    // A zero batch makes the element count 0, so only the rows' product can overflow.
    let shape = format!("(0, 3, {}, {})", 1u64 << 40, 1u64 << 40);
    std::fs::write(scene.path("empty_nd.npy"), npy_v1("<f4", false, &shape, &[])).expect("write");
    scene.assert_refused(
        &[
            "loss",
            "--backend",
            "cpu",
            "--logits",
            "{empty_nd.npy}",
            "--targets",
            "{targets.npy}",
        ],
        "overflows usize",
    );
}

#[test]
fn bench_refuses_shapes_it_cannot_run() {
    let scene = Scene::new();
    for (args, needle) in [
        (vec!["--rows", "10", "--classes", "0"], "`0` is not a positive integer"),
        (vec!["--rows", "0", "--classes", "10"], "`0` is not a positive integer"),
        (vec!["--shapes", "0x10"], "`0` is not a positive integer"),
        (vec!["--shapes", "1099511627776x1099511627776"], "overflows 64 bits"),
        (
            vec!["--shapes", "4000000x1000000", "--backend", "cpu"],
            "cannot run here",
        ),
    ] {
        let mut full = vec!["bench", "--plot", "{plot.svg}"];
        full.extend(args);
        scene.assert_refused(&full, needle);
    }
}

#[test]
fn a_target_logit_of_minus_infinity_reports_an_infinite_loss() {
    let scene = Scene::new();
    let logits = [f32::NEG_INFINITY, 0.0, 1.0, 0.5, 0.0, 2.0];
    write_npy(&scene.path("inf_logits.npy"), &logits, &[2, 3]);
    write_npy(&scene.path("inf_targets.npy"), &[0i64, 2], &[2]);
    for backend in backends() {
        for (reduction, expected) in [("mean", "Infinity"), ("sum", "Infinity")] {
            let output = xent(&[
                "loss",
                "--backend",
                backend,
                "--reduction",
                reduction,
                "--logits",
                &scene.arg("inf_logits.npy"),
                "--targets",
                &scene.arg("inf_targets.npy"),
            ]);
            let report = stdout_json(&output);
            assert_eq!(report["loss"], expected, "{backend} {reduction}: {report}");
        }
        let output = xent(&[
            "loss",
            "--backend",
            backend,
            "--reduction",
            "none",
            "--logits",
            &scene.arg("inf_logits.npy"),
            "--targets",
            &scene.arg("inf_targets.npy"),
            "--losses-out",
            &scene.arg("row_losses.npy"),
        ]);
        assert!(stdout_json(&output)["loss"].is_null(), "{backend}: no reduced loss");
        let (losses, shape) = read_f32(&scene.path("row_losses.npy"));
        assert_eq!(shape, [2]);
        assert_eq!(losses[0], f32::INFINITY, "{backend}: row 0");
        let expected_row_1 = (0.5f64.exp() + 1.0 + 2.0f64.exp()).ln() - 2.0;
        assert!(
            (f64::from(losses[1]) - expected_row_1).abs() < 1e-6,
            "{backend}: row 1 {}",
            losses[1]
        );
    }
}

#[test]
fn a_successful_run_replaces_old_outputs_and_keeps_their_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let scene = Scene::new();
    std::fs::set_permissions(scene.path("old_grad.npy"), std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let link = scene.path("grad_link.npy");
    std::os::unix::fs::symlink(scene.path("old_grad.npy"), &link).expect("symlink");
    let output = xent(&[
        "loss",
        "--backend",
        "cpu",
        "--logits",
        &scene.arg("logits.npy"),
        "--targets",
        &scene.arg("targets.npy"),
        "--grad-out",
        link.to_str().expect("utf-8"),
    ]);
    stdout_json(&output);
    // The link still leads to the file, which now holds the gradient.
    assert!(std::fs::symlink_metadata(&link).expect("link").file_type().is_symlink());
    let (gradient, shape) = read_f32(&scene.path("old_grad.npy"));
    assert_eq!(shape, [6, 5]);
    let mode = std::fs::metadata(scene.path("old_grad.npy"))
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640, "permissions kept");
    let row_sums: Vec<f32> = gradient.chunks(5).map(|row| row.iter().sum()).collect();
    assert!(
        row_sums.iter().all(|sum| sum.abs() < 1e-6),
        "gradient rows sum to 0: {row_sums:?}"
    );
    let names: Vec<String> = scene.snapshot().into_keys().collect();
    assert!(
        names.iter().all(|name| !name.starts_with(".xent-")),
        "no temporary files left: {names:?}"
    );
}

/// The output path checks run before any input is read: a collision is reported
/// even when an input is missing.
#[test]
fn output_checks_come_before_reading_inputs() {
    let scene = Scene::new();
    scene.assert_refused(
        &[
            "loss",
            "--logits",
            "{no_logits.npy}",
            "--targets",
            "{targets.npy}",
            "--grad-out",
            "{g.npy}",
            "--losses-out",
            "{g.npy}",
        ],
        "name the same file",
    );
}

/// No adapter is a failure of the machine, not of the command: exit status 1.
#[test]
fn no_adapter_exits_with_status_1() {
    let scene = Scene::new();
    // Metal exists on no machine this runs on: wgpu finds no adapter.
    let without_adapter = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xent"))
            .args(args)
            .env("WGPU_BACKEND", "metal")
            .output()
            .expect("run xent")
    };
    scene.assert_failed_by(
        without_adapter,
        1,
        &[
            "loss",
            "--backend",
            "gpu",
            "--logits",
            "{logits.npy}",
            "--targets",
            "{targets.npy}",
            "--grad-out",
            "{grad.npy}",
        ],
        "no GPU adapter",
    );
    // `info` still lists what it found (nothing) before the error.
    let info = without_adapter(&["info"]);
    assert_eq!(info.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&info.stdout).contains("(none)"));
    assert!(String::from_utf8_lossy(&info.stderr).starts_with("error: no GPU adapter"));
}

/// Class indices stored as int8, int16, uint8 or uint16 are widened (exactly) and
/// give the loss of the same indices stored as int64.
#[test]
fn narrow_integer_targets_give_the_loss_of_int64_targets() {
    let scene = Scene::new();
    let targets: [u8; 6] = [0, 4, 2, 1, 3, 0];
    let loss_of = |file: &str| {
        let output = xent(&[
            "loss",
            "--backend",
            "cpu",
            "--reduction",
            "sum",
            "--logits",
            &scene.arg("logits.npy"),
            "--targets",
            &scene.arg(file),
        ]);
        stdout_json(&output)["loss"].as_f64().expect("a finite loss")
    };
    write_npy(&scene.path("t64.npy"), &targets.map(i64::from), &[6]);
    let expected = loss_of("t64.npy");
    let as_bytes = |descr: &str, width: usize| {
        let body: Vec<u8> = targets
            .iter()
            .flat_map(|&value| {
                let mut bytes = vec![0u8; width];
                bytes[0] = value;
                bytes
            })
            .collect();
        npy_v1(descr, false, "(6,)", &body)
    };
    for (name, descr, width) in [
        ("t_i1.npy", "|i1", 1),
        ("t_u1.npy", "|u1", 1),
        ("t_i2.npy", "<i2", 2),
        ("t_u2.npy", "<u2", 2),
    ] {
        std::fs::write(scene.path(name), as_bytes(descr, width)).expect("write");
        assert_eq!(loss_of(name), expected, "{descr}");
    }
}

/// Ctrl-C at any moment of a command that writes two outputs over old files
/// (SIGINT after 0 to 570 ms, one run each, the CPU backend on 2000 × 3000
/// logits: reading, computing, staging 24 MB with fsync, renaming): afterwards
/// no temporary file is left beside them, and the two outputs are both old or
/// both new; an interrupted run exits with status 130 (or, before the handler
/// is installed, dies of the signal with nothing written).
#[test]
fn an_interrupt_leaves_no_temporary_file_and_the_outputs_old_or_new_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name);
    let (logits, targets) = common::batch(2000, 3000, common::Logits::Random, 31);
    write_npy(&path("logits.npy"), &logits, &[2000, 3000]);
    write_npy(&path("targets.npy"), &targets, &[2000]);
    let (old_grad, old_losses) = (b"old gradient".to_vec(), b"old losses".to_vec());
    let mut interrupted = 0;
    for delay_ms in (0..600).step_by(30) {
        std::fs::write(path("grad.npy"), &old_grad).expect("old gradient");
        std::fs::write(path("losses.npy"), &old_losses).expect("old losses");
        let child = Command::new(env!("CARGO_BIN_EXE_xent"))
            .current_dir(dir.path())
            .args([
                "loss",
                "--logits",
                "logits.npy",
                "--targets",
                "targets.npy",
                "--backend",
                "cpu",
            ])
            .args([
                "--reduction",
                "none",
                "--grad-out",
                "grad.npy",
                "--losses-out",
                "losses.npy",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn xent");
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: a signal to our own child, which has not been waited for yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let output = child.wait_with_output().expect("wait for xent");
        let leftovers: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".xent-"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "after {delay_ms} ms: {leftovers:?} left, {output:?}"
        );
        let grad_is_old = std::fs::read(path("grad.npy")).expect("gradient") == old_grad;
        let losses_are_old = std::fs::read(path("losses.npy")).expect("losses") == old_losses;
        assert_eq!(
            grad_is_old, losses_are_old,
            "after {delay_ms} ms: one output replaced, {output:?}"
        );
        match (output.status.code(), output.status.signal()) {
            (Some(0), _) => assert!(!grad_is_old, "after {delay_ms} ms: success without new outputs"),
            (Some(130), _) => interrupted += 1,
            // Before the handler is installed, the signal's default action (nothing written yet).
            (None, Some(libc::SIGINT)) => assert!(grad_is_old, "after {delay_ms} ms: killed after writing"),
            status => panic!("after {delay_ms} ms: {status:?}, {output:?}"),
        }
    }
    assert!(
        interrupted > 0,
        "no run was interrupted: the command is too quick for the test"
    );
}
