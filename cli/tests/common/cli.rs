//! Helpers of the CLI tests: writing and reading .npy files, running the
//! `xent` binary, and checking its JSON output and its error contract.

use std::path::Path;
use std::process::{Command, Output};

use npyz::WriterBuilder;

pub fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, values: &[T], shape: &[u64]) {
    let file = std::fs::File::create(path).expect("create");
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(file)
        .begin_nd()
        .expect("header");
    writer.extend(values.iter().copied()).expect("data");
    writer.finish().expect("finish");
}

pub fn read_f32(path: &Path) -> (Vec<f32>, Vec<u64>) {
    let bytes = std::fs::read(path).expect("read");
    let npy = npyz::NpyFile::new(&bytes[..]).expect("npy");
    let shape = npy.shape().to_vec();
    (npy.into_vec().expect("f32"), shape)
}

pub fn xent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xent"))
        .args(args)
        .output()
        .expect("run xent")
}

pub fn stdout_json(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "xent failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "exactly one JSON object: {stdout}");
    serde_json::from_str(stdout.trim()).expect("JSON")
}

/// One JSON object per stdout line of a successful run.
pub fn stdout_json_lines(output: &Output) -> Vec<serde_json::Value> {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect()
}

/// Exit status 2, one stderr line starting with `error:` that names `needle`, an empty stdout.
pub fn assert_usage_error(output: &Output, needle: &str) {
    assert_error(output, 2, needle);
}

/// Exit status `status`, one stderr line starting with `error:` that names
/// `needle` and nothing else on stderr, an empty stdout.
pub fn assert_error(output: &Output, status: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(status), "exit status; stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error:")).collect();
    assert!(
        errors.len() == 1 && errors[0].contains(needle),
        "expected one error line naming {needle:?}, got {stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing on stdout");
}

/// The machine fields every JSON report carries: `backend`, xent's version, and
/// for the GPU the adapter (name, device type, driver, API, whether it is a
/// software rasterizer), `null` for the CPU.
pub fn assert_machine_fields(report: &serde_json::Value, backend: &str) {
    assert_eq!(report["backend"], backend, "{report}");
    assert_eq!(report["xent_version"], env!("CARGO_PKG_VERSION"), "{report}");
    let adapter = &report["adapter"];
    if backend == "cpu" {
        assert!(adapter.is_null(), "{report}");
        return;
    }
    for field in ["name", "device_type", "driver", "api"] {
        assert!(adapter[field].is_string(), "adapter.{field}: {report}");
    }
    let software = adapter["device_type"] == "Cpu";
    assert_eq!(adapter["software"], software, "{report}");
}
