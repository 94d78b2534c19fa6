//! GPU: the contexts timed, and per context its copy bandwidth, the compute passes
//! alone on device-resident buffers (timestamp queries) and the host-slice calls.

use xent::{
    Context, CrossEntropyLoss, DeviceInputs, DeviceOutputs, GradientOrder, GradientOutput, LogitType, RowSplit,
    ShaderChecks, Shape, TargetType, UnalignedF32, UpstreamGradient,
};

use super::args::{Case, gradient_order_label, row_split_label, shader_checks_label, unaligned_f32_label};
use super::copy::DeviceCeilings;
use super::pass_timer::{PassTimer, gpu_checked, time_resident};
use super::timing::BenchLogits;
use super::{Measurement, Transfers};
use crate::failure::Failure;
use crate::progress;

/// The GPU settings a bench run sweeps: each list empty for the library's default.
pub(super) struct GpuSweeps<'a> {
    pub(super) workgroup_sizes: &'a [u32],
    pub(super) row_splits: &'a [RowSplit],
    pub(super) unaligned_f32: &'a [UnalignedF32],
    /// Transfer piece sizes in MiB.
    pub(super) transfer_piece_mib: &'a [u64],
    pub(super) gradient_orders: &'a [GradientOrder],
    pub(super) shader_checks: &'a [ShaderChecks],
}

/// One GPU context per combination of the asked workgroup sizes, row-split,
/// unaligned-f32, transfer-piece, gradient-order and shader-checks settings (the library's
/// default for each not asked for).
pub(super) fn gpu_contexts(sweeps: GpuSweeps<'_>) -> Result<Vec<Context>, Failure> {
    let GpuSweeps {
        workgroup_sizes,
        row_splits,
        unaligned_f32,
        transfer_piece_mib,
        gradient_orders,
        shader_checks,
    } = sweeps;
    let asked_sizes: Vec<Option<u32>> = workgroup_sizes.iter().copied().map(Some).collect();
    let sizes = sweep(&asked_sizes, None, "--workgroup-size", |size| {
        size.map_or_else(String::new, |size| size.to_string())
    })?;
    let splits = sweep(row_splits, RowSplit::default(), "--row-split", row_split_label)?;
    let accesses = sweep(unaligned_f32, UnalignedF32::default(), "--unaligned-f32", |setting| {
        unaligned_f32_label(setting).to_owned()
    })?;
    let pieces = sweep(
        transfer_piece_mib,
        xent::DEFAULT_TRANSFER_PIECE_BYTES >> 20,
        "--transfer-piece-mib",
        |mib| mib.to_string(),
    )?;
    let orders = sweep(gradient_orders, GradientOrder::default(), "--gradient-order", |order| {
        gradient_order_label(order).to_owned()
    })?;
    let checks = sweep(shader_checks, ShaderChecks::default(), "--shader-checks", |checks| {
        shader_checks_label(checks).to_owned()
    })?;
    let options = vec![xent::ContextOptions::default()];
    let options = combined(options, &sizes, |options, size| options.workgroup_size = size);
    let options = combined(options, &splits, |options, split| options.row_split = split);
    let options = combined(options, &accesses, |options, access| options.unaligned_f32 = access);
    let options = combined(options, &pieces, |options, mib| {
        options.transfer_piece_bytes = mib << 20
    });
    let options = combined(options, &orders, |options, order| options.gradient_order = order);
    let options = combined(options, &checks, |options, checks| options.shader_checks = checks);
    options
        .into_iter()
        .map(|options| Context::with_options(options).map_err(Failure::from))
        .collect()
}

/// Each of `options` with each of `values` set by `set`, in that order.
fn combined<T: Copy>(
    options: Vec<xent::ContextOptions>,
    values: &[T],
    set: impl Fn(&mut xent::ContextOptions, T),
) -> Vec<xent::ContextOptions> {
    options
        .iter()
        .flat_map(|options| {
            values.iter().map(|&value| {
                let mut options = options.clone();
                set(&mut options, value);
                options
            })
        })
        .collect()
}

/// The settings of one swept option: the `values` asked for with `flag`, each
/// once (a repeat is an error naming it by `label`), or `default` when none were.
fn sweep<T: Copy + PartialEq>(
    values: &[T],
    default: T,
    flag: &str,
    label: impl Fn(T) -> String,
) -> Result<Vec<T>, Failure> {
    if let Some(index) = (1..values.len()).find(|&index| values[..index].contains(&values[index])) {
        return Err(format!("{flag} lists {} twice", label(values[index])).into());
    }
    Ok(if values.is_empty() {
        vec![default]
    } else {
        values.to_vec()
    })
}

/// The GPU's timings: the device-resident calls (warm, back to back, timestamps),
/// then, unless `device_only`, the host-slice calls and the transfer rates; the
/// copy bandwidth comes from `ceilings`, measured once per context.
/// Device-resident buffers are freed before the host calls grow the context's
/// workspace, which keeps the peak memory down.
pub(super) fn measure_gpu(
    context: &Context,
    ceilings: &DeviceCeilings,
    logits: &mut BenchLogits,
    targets: &[i64],
    case: Case,
    reps: u32,
    device_only: bool,
) -> Result<Measurement, String> {
    let resident = match PassTimer::new(context) {
        Some(timer) => Some(time_resident_calls(context, &timer, logits, targets, case, reps)?),
        None => None,
    };
    let host = if device_only {
        None
    } else {
        Some(logits.time_host_calls(context, targets, case.shape, reps, case.in_place)?)
    };
    let host_transfer_gbps = match host {
        Some(_) => Some(ceilings.transfer_rates(context)?),
        None => None,
    };
    let loss = match (&host, &resident) {
        (Some(host), _) => host.loss,
        (None, Some(resident)) => resident.fused_loss,
        (None, None) => return Err("nothing timed: no timestamp queries and no host calls".to_owned()),
    };
    Ok(Measurement {
        backend: "gpu",
        workgroup_size: None,
        row_split: None,
        unaligned_f32: None,
        transfer_piece_mib: None,
        gradient_order: None,
        shader_checks: None,
        split_kernel: Some(context.splits_rows(case.shape, case.element.logit_type())),
        host,
        kernel_ms: resident.as_ref().map(|resident| resident.fused_ms),
        forward_kernel_ms: resident.as_ref().map(|resident| resident.forward_ms),
        copy: ceilings.copy.clone(),
        transfers: Some(Transfers {
            builtin_copy_gbps: ceilings.builtin_copy_gbps,
            read_gbps: ceilings.read_gbps,
            host_transfer_gbps,
        }),
        loss,
    })
}

/// The device-resident timings of one case, and the fused call's loss.
struct ResidentCalls {
    /// GPU ms of one fused call.
    fused_ms: f64,
    /// GPU ms of one call of the loss alone.
    forward_ms: f64,
    /// The mean loss of the last fused call, read back from its outputs.
    fused_loss: f32,
}

/// Uploads the case and times the loss alone, then the fused call, device-resident.
fn time_resident_calls(
    context: &Context,
    timer: &PassTimer,
    logits: &BenchLogits,
    targets: &[i64],
    case: Case,
    reps: u32,
) -> Result<ResidentCalls, String> {
    let batch = DeviceBatch::upload(context, logits, targets, case)?;
    // One untimed round of fused calls first, so that the loss alone (timed
    // first) does not pay alone for a GPU coming from idle: on a cold H200 it
    // measured 34 ms against 16 ms fused at 8192x128256 bf16, although it
    // records the same passes with the same kernel key but for the gradient pass
    // (a suspected clock ramp-up, not yet confirmed on that GPU).
    batch.resident_ms(context, timer, true, 1)?;
    let forward = batch.resident_ms(context, timer, false, reps)?;
    let fused = batch.resident_ms(context, timer, true, reps)?;
    Ok(ResidentCalls {
        fused_ms: fused.ms,
        forward_ms: forward.ms,
        fused_loss: fused.loss,
    })
}

/// One device-resident timing and the loss its last call left in the outputs.
struct ResidentCall {
    ms: f64,
    loss: f32,
}

/// Logits, targets, gradient and outputs resident on the GPU, for timing the
/// compute passes without the transfers.
struct DeviceBatch {
    logits: wgpu::Buffer,
    targets: wgpu::Buffer,
    /// `None` in place: the gradient overwrites `logits`.
    gradient: Option<wgpu::Buffer>,
    outputs: DeviceOutputs,
    shape: Shape,
    logit_type: LogitType,
}

impl DeviceBatch {
    fn upload(context: &Context, logits: &BenchLogits, targets: &[i64], case: Case) -> Result<Self, String> {
        let shape = case.shape;
        let device = context.device();
        let storage = |label, bytes: &[u8]| {
            wgpu::util::DeviceExt::create_buffer_init(
                device,
                &wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: bytes,
                    usage: wgpu::BufferUsages::STORAGE,
                },
            )
        };
        let logit_type = logits.element().logit_type();
        let (logits, targets, gradient) = gpu_checked(context, || {
            let gradient = (!case.in_place).then(|| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("bench gradient"),
                    size: logits.bytes().len().next_multiple_of(4) as u64,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            });
            (
                storage("bench logits", logits.bytes()),
                storage("bench targets", bytemuck::cast_slice(targets)),
                gradient,
            )
        })?;
        let outputs = DeviceOutputs::new(context, shape.rows).map_err(|error| error.to_string())?;
        Ok(Self {
            logits,
            targets,
            gradient,
            outputs,
            shape,
            logit_type,
        })
    }

    fn inputs(&self, with_gradient: bool) -> DeviceInputs<'_> {
        DeviceInputs {
            logits: self.logits.slice(..),
            logit_type: self.logit_type,
            targets: self.targets.slice(..),
            target_type: TargetType::I64,
            shape: self.shape,
            gradient: match (with_gradient, &self.gradient) {
                (false, _) => GradientOutput::Skip,
                (true, Some(gradient)) => GradientOutput::Buffer(gradient.slice(..)),
                (true, None) => GradientOutput::InPlace,
            },
            upstream: UpstreamGradient::ONE,
        }
    }

    /// The device-resident GPU time in ms of one call (loss and gradient, or the
    /// loss alone): warm, back to back, timestamp queries (see [`time_resident`]).
    /// The outputs are read once afterwards, so that a GPU-detected error shows,
    /// and give the last call's mean loss.
    fn resident_ms(
        &self,
        context: &Context,
        timer: &PassTimer,
        with_gradient: bool,
        reps: u32,
    ) -> Result<ResidentCall, String> {
        let to_message = |error: xent::Error| error.to_string();
        let loss = CrossEntropyLoss::new();
        let inputs = self.inputs(with_gradient);
        progress::phase(
            "gpu",
            if with_gradient {
                "fused, device-resident back to back"
            } else {
                "loss alone, device-resident back to back"
            },
        );
        let timing = time_resident(context, timer, reps, |encoder| {
            loss.record(context, encoder, &inputs, &self.outputs)
                .map_err(to_message)
        })?;
        let loss = self.outputs.read(context).map_err(to_message)?;
        Ok(ResidentCall {
            ms: timing.ms,
            loss: loss.value().ok_or("the device-resident call gave no reduced loss")?,
        })
    }
}
