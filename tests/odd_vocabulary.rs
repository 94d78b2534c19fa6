//! Vocabularies that are not multiples of 4 (7, 13, 1001, 50257 classes; 1024
//! as the aligned control) in f32, f16 and bf16, for the reductions `mean` and
//! `none`, with a separate gradient and in place, with the slices at offset 0
//! and at unaligned offsets (the logits and the gradient at different element
//! phases within 4-element groups and 32-bit words).
//!
//! Each call is checked three ways: against the f64 reference; byte for byte
//! outside the caller's slices (a 16-bit gradient entry sharing a 32-bit word
//! with a neighbour outside the slice must not clobber it); and, on the adapter
//! they were recorded on, against digests of the loss bits and gradient bytes
//! that the row kernel of commit 9a9827d (before groups of 4 with masked edges
//! replaced the per-element atomic bf16 stores) gave, in
//! tests/fixtures/odd_vocabulary_digests.txt (f32 rows on the default context of
//! a software adapter go entry by entry, as then; `UnalignedF32::Vectors` sums
//! in another order, tests/row_kernel_variants.rs). `XENT_RECORD_DIGESTS=1` rewrites
//! that file from the current kernel.

mod common;

use xent::reference::cross_entropy_f64;
use xent::{Context, CrossEntropyLoss, LogitType, Loss, Reduction, Shape, Targets};

const CLASSES: [usize; 5] = [7, 13, 1001, 1024, 50257];
const LOGIT_TYPES: [LogitType; 3] = [LogitType::F32, LogitType::F16, LogitType::Bf16];
const DIGESTS: &str = "tests/fixtures/odd_vocabulary_digests.txt";
const IGNORE_INDEX: i64 = -100;
const IGNORED_ROW: usize = 1;

/// One call of the suite.
#[derive(Clone, Copy, Debug)]
struct Case {
    classes: usize,
    logit_type: LogitType,
    reduction: Reduction,
    in_place: bool,
    /// Slices an odd number of elements past an aligned offset, else at 0.
    unaligned: bool,
}

impl Case {
    fn rows(self) -> usize {
        if self.classes > 10_000 { 3 } else { 5 }
    }

    fn shape(self) -> Shape {
        Shape::new(self.rows(), self.classes)
    }

    /// Byte offset of the logits (`phase` 3) or the gradient (`phase` 6) slice.
    fn lead(self, context: &Context, phase: u64) -> u64 {
        let alignment = u64::from(context.device().limits().min_storage_buffer_offset_alignment);
        if self.unaligned {
            alignment + phase * self.logit_type.size_in_bytes() as u64
        } else {
            0
        }
    }

    /// The batch (one ignored row) and the logits as their type holds them.
    fn batch(self) -> (Vec<u8>, Vec<f32>, Vec<i64>) {
        let (logits, mut targets) = common::batch(self.rows(), self.classes, common::Logits::Random, 67);
        targets[IGNORED_ROW] = IGNORE_INDEX;
        let (bytes, seen) = common::encoded(&logits, self.logit_type);
        (bytes, seen, targets)
    }
}

fn every_case() -> impl Iterator<Item = Case> {
    CLASSES.into_iter().flat_map(|classes| {
        LOGIT_TYPES.into_iter().flat_map(move |logit_type| {
            [Reduction::Mean, Reduction::None]
                .into_iter()
                .flat_map(move |reduction| {
                    [false, true].into_iter().flat_map(move |in_place| {
                        [false, true].into_iter().map(move |unaligned| Case {
                            classes,
                            logit_type,
                            reduction,
                            in_place,
                            unaligned,
                        })
                    })
                })
        })
    })
}

/// The loss and the gradient's bytes of `case` on `context`.
fn run(context: &Context, case: Case) -> (Loss, Vec<u8>) {
    let (logit_bytes, _, targets) = case.batch();
    let leads = (case.lead(context, 3), (!case.in_place).then(|| case.lead(context, 6)));
    let call = common::SliceCall::plain(&logit_bytes, case.logit_type, &targets, case.shape(), leads);
    call.run(
        context,
        &CrossEntropyLoss::new().reduction(case.reduction),
        &format!("{case:?}"),
    )
}

/// Checks the loss and gradient of `case` against the f64 reference.
fn assert_matches_reference(case: Case, loss: &Loss, gradient_bytes: &[u8]) {
    let what = format!("{case:?}");
    let (_, seen, targets) = case.batch();
    let options = CrossEntropyLoss::new().reduction(case.reduction).options().clone();
    let reference = cross_entropy_f64(&seen, Targets::I64(&targets), case.shape(), &options);
    common::assert_loss_matches(loss, &reference, &what);
    let gradient = common::decoded(gradient_bytes, case.logit_type);
    let ignored = &gradient[IGNORED_ROW * case.classes..(IGNORED_ROW + 1) * case.classes];
    assert!(ignored.iter().all(|&value| value == 0.0), "{what}: ignored row");
    common::assert_gradient_within_rounding(&gradient, &reference.gradient, case.logit_type, &what);
}

#[test]
fn odd_vocabularies_match_the_reference_the_previous_kernel_and_stay_in_their_slices() {
    common::digests::check_every_case(DIGESTS, |_: &Context| every_case(), run, assert_matches_reference);
}
