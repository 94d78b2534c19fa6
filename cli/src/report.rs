//! What every JSON report says about where it ran, so that results from a
//! software rasterizer and from a GPU can never be confused.

use std::io::Write;

use serde_json::{Value, json};
use xent::Context;

use crate::failure::Failure;

/// The xent library's version, as every report carries it.
pub const VERSION: &str = xent::VERSION;

/// The adapter of a GPU context: name, device type, driver, graphics API, and
/// whether it is a software rasterizer running on the CPU.
pub fn adapter_json(context: &Context) -> Value {
    let info = context.adapter_info();
    json!({
        "name": info.name,
        "device_type": format!("{:?}", info.device_type),
        "driver": info.driver,
        "driver_info": info.driver_info,
        "api": format!("{:?}", info.backend),
        "software": is_software(context),
    })
}

/// The `"backend"`, `"adapter"` and `"xent_version"` fields of a report: the
/// adapter object for the GPU, `null` for the CPU.
fn machine_fields(gpu: Option<&Context>) -> [(&'static str, Value); 3] {
    [
        ("backend", json!(if gpu.is_some() { "gpu" } else { "cpu" })),
        ("adapter", gpu.map_or(Value::Null, adapter_json)),
        ("xent_version", json!(VERSION)),
    ]
}

/// Adds [`machine_fields`] to a JSON object.
pub fn with_machine(mut report: Value, gpu: Option<&Context>) -> Value {
    if let Value::Object(fields) = &mut report {
        for (key, value) in machine_fields(gpu) {
            fields.insert(key.to_owned(), value);
        }
    }
    report
}

/// Whether the adapter is a CPU pretending to be a GPU (lavapipe, llvmpipe, WARP, SwiftShader).
pub fn is_software(context: &Context) -> bool {
    context.adapter_info().device_type == wgpu::DeviceType::Cpu
}

/// One line for a software adapter: its GPU timings say nothing about a GPU.
pub fn software_warning(context: &Context) -> Option<String> {
    is_software(context).then(|| {
        format!(
            "note: the GPU adapter \"{}\" is a software rasterizer running on the CPU; its GPU timings are not \
             representative of any GPU",
            context.adapter_info().name
        )
    })
}

/// Writes `text` to stdout and flushes it: a full device is a
/// [`Failure::Machine`] (exit status 1), not a panic. (A pipe whose reader is gone
/// ends the process quietly by SIGPIPE, as `xent info | head` should.)
pub fn print(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|error| Failure::Machine(format!("cannot write the report to stdout: {error}")))
}

/// Writes the JSON `report` of a command that writes files as one line on stdout
/// ([`print`]), with SIGPIPE ignored meanwhile: a pipe whose reader is gone is
/// then a failure the command returns (and puts its files back for), not a kill
/// that would leave its backups behind.
pub fn print_json(report: &Value) -> Result<(), Failure> {
    #[cfg(unix)]
    // SAFETY: `signal` only changes the disposition of SIGPIPE (no handler runs),
    // and the previous one is restored below.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let printed = print(&format!("{report}\n"));
    #[cfg(unix)]
    // SAFETY: as above.
    unsafe {
        libc::signal(libc::SIGPIPE, previous);
    }
    printed
}
