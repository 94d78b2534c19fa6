//! A bad class target is reported by the row kernel itself: it writes the bad
//! row's raw target words into planes 4 and 5 of the row outputs, the first bad
//! row into the status block, and the readback fetches that row's words. Checked
//! for i32 and i64 targets, values −7 and classes + 3, a bad row in the middle
//! and in the last row, every reduction, without gradient, with a separate one
//! and in place, in one chunk, across several chunks and through the split-row
//! kernel, through `DeviceOutputs::read` and `read_all`. The expected error is
//! written out here (row, value, classes) and is also the CPU backend's. One
//! `DeviceOutputs` serves every call of a shape, so a plane that was not written
//! would hand back the previous call's value (or 0 in a fresh buffer), which
//! these checks tell apart.

mod common;

use std::sync::OnceLock;

use xent::{
    Context, ContextOptions, Cpu, CrossEntropyLoss, DeviceInputs, DeviceOutputs, Error, GradientOutput, LogitType,
    Reduction, RowSplit, Shape, Targets, UpstreamGradient,
};

/// Binding cap of the chunked contexts: a few rows of the shapes below per chunk.
const TINY_BINDING: u64 = 16 << 10;
/// Workgroup size of the split-row context: slices of 256 logits.
const SPLIT_WORKGROUP: u32 = 64;

/// A context with bindings of [`TINY_BINDING`] bytes.
fn chunked() -> Option<&'static Context> {
    static CONTEXT: OnceLock<Option<Context>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| {
            common::open(ContextOptions {
                max_binding_size: Some(TINY_BINDING),
                ..ContextOptions::default()
            })
        })
        .as_ref()
}

/// A context that splits every row across slices, with bindings of [`TINY_BINDING`] bytes.
fn split_chunked() -> Option<&'static Context> {
    static CONTEXT: OnceLock<Option<Context>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| {
            common::open(ContextOptions {
                max_binding_size: Some(TINY_BINDING),
                workgroup_size: Some(SPLIT_WORKGROUP),
                row_split: RowSplit::Forced {
                    vec4s_per_invocation: 1,
                    spin_limit: xent::DEFAULT_SPIN_LIMIT,
                },
                ..ContextOptions::default()
            })
        })
        .as_ref()
}

/// Where the gradient goes.
#[derive(Clone, Copy, Debug)]
enum Gradient {
    Skip,
    Separate,
    InPlace,
}

const GRADIENTS: [Gradient; 3] = [Gradient::Skip, Gradient::Separate, Gradient::InPlace];
const REDUCTIONS: [Reduction; 3] = [Reduction::None, Reduction::Sum, Reduction::Mean];

/// Integer targets in the type under test.
#[derive(Clone, Copy, Debug)]
enum TargetKind {
    I32,
    I64,
}

/// The bytes of `targets` as `kind`.
fn target_bytes(targets: &[i64], kind: TargetKind) -> Vec<u8> {
    match kind {
        TargetKind::I32 => {
            let narrow: Vec<i32> = targets.iter().map(|&target| target as i32).collect();
            bytemuck::cast_slice(&narrow).to_vec()
        }
        TargetKind::I64 => bytemuck::cast_slice(targets).to_vec(),
    }
}

/// The CPU backend's result for the same targets.
fn cpu_result(loss: &CrossEntropyLoss, logits: &[f32], targets: &[i64], kind: TargetKind, shape: Shape) -> Error {
    let narrow: Vec<i32> = targets.iter().map(|&target| target as i32).collect();
    let targets = match kind {
        TargetKind::I32 => Targets::I32(&narrow),
        TargetKind::I64 => Targets::I64(targets),
    };
    loss.loss(&Cpu, logits, targets, shape)
        .expect_err("the CPU reports the bad target")
}

/// One shape's logits, and outputs reused by every call of that shape.
struct Batch<'a> {
    context: &'a Context,
    shape: Shape,
    logits: Vec<f32>,
    outputs: DeviceOutputs,
}

impl<'a> Batch<'a> {
    fn new(context: &'a Context, shape: Shape) -> Self {
        let (logits, _) = common::batch(shape.rows, shape.classes, common::Logits::Random, 91);
        Self {
            context,
            shape,
            logits,
            outputs: DeviceOutputs::new(context, shape.rows).expect("outputs"),
        }
    }

    /// Records `loss` on `targets` through the device door, submits it and reads it
    /// back (with the row statistics when `row_stats`).
    fn run(
        &self,
        loss: &CrossEntropyLoss,
        targets: &[i64],
        kind: TargetKind,
        gradient: Gradient,
        row_stats: bool,
    ) -> Result<xent::Loss, Error> {
        let context = self.context;
        let logits_bytes: &[u8] = bytemuck::cast_slice(&self.logits);
        let logits = writable_buffer(context, logits_bytes);
        let gradient_buffer = writable_buffer(context, logits_bytes);
        let targets_buffer = common::storage_buffer(context, &target_bytes(targets, kind));
        let inputs = DeviceInputs {
            logits: logits.slice(..),
            logit_type: LogitType::F32,
            targets: targets_buffer.slice(..),
            target_type: match kind {
                TargetKind::I32 => xent::TargetType::I32,
                TargetKind::I64 => xent::TargetType::I64,
            },
            shape: self.shape,
            gradient: match gradient {
                Gradient::Skip => GradientOutput::Skip,
                Gradient::Separate => GradientOutput::Buffer(gradient_buffer.slice(..)),
                Gradient::InPlace => GradientOutput::InPlace,
            },
            upstream: UpstreamGradient::ONE,
        };
        let mut encoder = context.device().create_command_encoder(&Default::default());
        loss.record(context, &mut encoder, &inputs, &self.outputs)?;
        context.queue().submit([encoder.finish()]);
        match row_stats {
            true => self.outputs.read_all(context, true).map(|output| output.loss),
            false => self.outputs.read(context),
        }
    }

    /// Checks that `targets`, whose first bad row is `row` with value `value`, is
    /// reported as such for every reduction and gradient, and as the CPU does.
    fn check(&self, what: &str, targets: &[i64], kind: TargetKind, (row, value): (usize, i64)) {
        let expected = Error::TargetOutOfRange {
            row,
            value,
            classes: self.shape.classes,
        };
        for reduction in REDUCTIONS {
            let loss = CrossEntropyLoss::new().reduction(reduction);
            assert_eq!(
                cpu_result(&loss, &self.logits, targets, kind, self.shape),
                expected,
                "{what}: the CPU"
            );
            for (index, gradient) in GRADIENTS.into_iter().enumerate() {
                let row_stats = index % 2 == 1;
                let actual = self
                    .run(&loss, targets, kind, gradient, row_stats)
                    .expect_err("a bad target is an error");
                assert_eq!(
                    actual, expected,
                    "{what} {kind:?} {reduction:?} {gradient:?} {:?}",
                    self.shape
                );
            }
        }
    }
}

/// A storage buffer holding `bytes` that a kernel may write (in place) and a test may read.
fn writable_buffer(context: &Context, bytes: &[u8]) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    context.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("test writable input"),
        contents: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    })
}

/// Valid targets for `rows` rows of `classes` classes, with ignored rows
/// (ignore_index −100) here and there, which are never bad.
fn valid_targets(rows: usize, classes: usize) -> Vec<i64> {
    (0..rows)
        .map(|row| {
            if row % 11 == 5 {
                -100
            } else {
                (row * 7 % classes) as i64
            }
        })
        .collect()
}

/// Every single bad target (−7 and classes + 3, in the middle and in the last
/// row, i32 and i64) of `shape` on `context`.
fn check_single_bad_targets(context: &Context, what: &str, shape: Shape) {
    let batch = Batch::new(context, shape);
    let classes = shape.classes as i64;
    for kind in [TargetKind::I32, TargetKind::I64] {
        for row in [shape.rows / 2, shape.rows - 1] {
            for value in [-7, classes + 3] {
                let mut targets = valid_targets(shape.rows, shape.classes);
                targets[row] = value;
                batch.check(what, &targets, kind, (row, value));
            }
        }
    }
}

/// Several bad rows (in several chunks where the context chunks): the first one wins.
fn check_several_bad_targets(context: &Context, what: &str, shape: Shape) {
    let batch = Batch::new(context, shape);
    let classes = shape.classes as i64;
    let rows = shape.rows;
    let mut targets = valid_targets(rows, shape.classes);
    // Bad rows after the first one, in later and earlier chunks of the dispatch order.
    for (row, value) in [
        (rows - 1, classes + 3),
        (rows / 3, -7),
        (rows / 2, classes),
        (rows / 3 + 1, -1),
    ] {
        targets[row] = value;
    }
    for kind in [TargetKind::I32, TargetKind::I64] {
        batch.check(what, &targets, kind, (rows / 3, -7));
    }
}

#[test]
fn a_bad_target_is_reported_in_one_chunk() {
    let Some(context) = common::gpu() else { return };
    check_single_bad_targets(context, "one chunk", Shape::new(200, 64));
    check_several_bad_targets(context, "one chunk", Shape::new(200, 64));
}

#[test]
fn a_bad_target_is_reported_across_chunks() {
    let Some(context) = chunked() else { return };
    // Rows of 256 bytes in bindings of 16 KiB: about 60 rows per chunk, 4 chunks.
    let shape = Shape::new(200, 64);
    check_single_bad_targets(context, "chunked", shape);
    check_several_bad_targets(context, "chunked", shape);
}

#[test]
fn a_bad_target_is_reported_by_the_split_row_kernel() {
    let Some(context) = split_chunked() else { return };
    // Rows of 600 logits, 3 slices each; 6 rows per 16 KiB chunk, 4 chunks.
    let shape = Shape::new(21, 600);
    assert!(context.splits_rows(shape, LogitType::F32));
    check_single_bad_targets(context, "split rows", shape);
    check_several_bad_targets(context, "split rows", shape);
}

#[test]
fn the_host_door_reports_the_same_error() {
    // The host door checks the targets on the CPU before uploading them.
    let Some(context) = common::gpu() else { return };
    let shape = Shape::new(50, 9);
    let logits = vec![0.5f32; shape.rows * shape.classes];
    for (row, value) in [(25, -7i64), (49, 12)] {
        let mut targets = valid_targets(shape.rows, shape.classes);
        targets[row] = value;
        let narrow: Vec<i32> = targets.iter().map(|&target| target as i32).collect();
        let expected = Error::TargetOutOfRange {
            row,
            value,
            classes: shape.classes,
        };
        for reduction in REDUCTIONS {
            let loss = CrossEntropyLoss::new().reduction(reduction);
            for targets in [Targets::I64(&targets), Targets::I32(&narrow)] {
                let result = loss.loss(context, &logits, targets, shape);
                assert_eq!(result, Err(expected.clone()), "{reduction:?} {targets:?}");
                let mut gradient = vec![0.0f32; logits.len()];
                let result = loss.loss_and_grad(context, &logits, targets, shape, &mut gradient);
                assert_eq!(result, Err(expected.clone()), "{reduction:?} {targets:?} with gradient");
            }
        }
    }
}

/// The documented layout: the status block names the first bad row, and planes
/// 4 and 5 of the row outputs hold its raw words (an i64's two words, an i32
/// and its sign).
#[test]
fn the_bad_row_words_lie_in_planes_four_and_five() {
    let Some(context) = chunked() else { return };
    let shape = Shape::new(200, 64);
    let batch = Batch::new(context, shape);
    let (row, value) = (137, -7i64);
    let mut targets = valid_targets(shape.rows, shape.classes);
    targets[row] = value;
    for kind in [TargetKind::I32, TargetKind::I64] {
        let loss = CrossEntropyLoss::new().reduction(Reduction::None);
        let result = batch.run(&loss, &targets, kind, Gradient::Skip, false);
        assert!(matches!(result, Err(Error::TargetOutOfRange { .. })), "{result:?}");
        let status: Vec<u32> =
            bytemuck::pod_collect_to_vec(&common::read_buffer(context, batch.outputs.status_buffer()));
        assert_eq!(status[0], u32::MAX - row as u32, "{kind:?}");
        let planes: Vec<u32> =
            bytemuck::pod_collect_to_vec(&common::read_buffer(context, batch.outputs.row_losses_buffer()));
        assert!(planes.len() >= 6 * shape.rows, "{} words", planes.len());
        let words = [planes[4 * shape.rows + row], planes[5 * shape.rows + row]];
        assert_eq!(words, [value as u32, (value >> 32) as u32], "{kind:?}");
    }
}
