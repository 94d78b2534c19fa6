//! What every JSON report says about where it ran, so that results from a
//! software rasterizer and from a GPU can never be confused.

use serde_json::{Value, json};
use xent::Context;

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
