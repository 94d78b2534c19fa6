//! The loss alone reads each row once and keeps nothing on chip for a gradient
//! pass it does not run: its kernel is compiled without the row cache, also
//! for rows the fused call caches. Both calls run the same statistics pass, so
//! the loss alone must give the fused call's per-row losses, lse and argmax bit
//! for bit, and match the f64 reference: rows the fused call caches (1000 and
//! 4000 classes, several and one row per workgroup) and rows it streams (9000),
//! with smoothing and a z-loss on some.

mod common;

use xent::reference::cross_entropy_f64;
use xent::{CrossEntropyLoss, Loss, LossOutput, Reduction, Shape, Targets};

fn bits(output: &LossOutput) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let Loss::PerRow(losses) = &output.loss else {
        panic!("reduction none gives per-row losses");
    };
    let floats = |values: &[f32]| values.iter().map(|value| value.to_bits()).collect::<Vec<_>>();
    (
        floats(losses),
        floats(output.lse.as_deref().expect("lse")),
        output.argmax.clone().expect("argmax"),
    )
}

#[test]
fn the_loss_alone_gives_the_fused_calls_row_outputs_bit_for_bit() {
    let Some(context) = common::gpu() else { return };
    for (rows, classes, smoothing, z_loss) in [(64, 1000, 0.0, 0.0), (16, 4000, 0.1, 1e-4), (8, 9000, 0.0, 1e-4)] {
        let what = format!("{rows}x{classes}");
        let shape = Shape::new(rows, classes);
        let (logits, targets) = common::batch(rows, classes, common::Logits::Random, 7);
        let loss = CrossEntropyLoss::new()
            .reduction(Reduction::None)
            .label_smoothing(smoothing)
            .z_loss(z_loss);
        let outputs = |gradient| {
            common::device_outputs(context, &loss, &logits, Targets::I64(&targets), shape, gradient)
                .expect("record")
                .read_all(context, true)
                .expect("read")
        };
        let alone = outputs(false);
        let fused = outputs(true);
        assert_eq!(bits(&alone), bits(&fused), "{what}");
        let reference = cross_entropy_f64(&logits, Targets::I64(&targets), shape, loss.options());
        let Loss::PerRow(losses) = &alone.loss else {
            unreachable!()
        };
        common::assert_row_losses(losses, &reference.row_losses, &what);
    }
}
