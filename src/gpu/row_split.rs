//! The split-row policy of the categorical cross-entropy, in one place: when a
//! call runs the split-row kernel (shaders/cross_entropy_split.wgsl, one
//! workgroup per slice of a row, every logit read once) instead of the fused
//! row kernel (one workgroup per row, long rows read twice), and with which
//! slice size.

use crate::error::{Error, Result};
use crate::types::{LogitType, Shape};

/// `vec4`s of logits each invocation holds in registers in the split-row
/// kernel: a slice is `workgroup_size × vec4s × 4` logits.
///
/// ```
/// // Workgroups of 256 with 4 vec4s each: slices of 4096 logits, 8 per row of 32 768.
/// assert!(xent::ROW_SPLIT_VEC4S_CHOICES.contains(&4));
/// assert_eq!(32_768usize.div_ceil(256 * 4 * 4), 8);
/// ```
pub const ROW_SPLIT_VEC4S_CHOICES: [u32; 4] = [1, 2, 4, 8];

/// Polls of the other slices' statistics a slice makes before it hands its
/// gradient to the repair dispatch (see [`RowSplit`]).
///
/// ```
/// let split = xent::RowSplit::Forced { vec4s_per_invocation: 4, spin_limit: xent::DEFAULT_SPIN_LIMIT };
/// assert_ne!(split, xent::RowSplit::default());
/// ```
pub const DEFAULT_SPIN_LIMIT: u32 = 4096;

/// `vec4`s per invocation under [`RowSplit::Auto`].
const AUTO_VEC4S: u32 = 4;

/// Whether the categorical cross-entropy splits long rows across workgroups
/// ([`ContextOptions::row_split`](crate::ContextOptions::row_split)).
///
/// The split-row kernel cuts each row into slices of `workgroup_size × vec4s ×
/// 4` logits, one workgroup each; a slice holds its logits in registers,
/// publishes its partial statistics, waits (a bounded number of polls) for the
/// rest of its row's and writes its gradient from registers: one read and one
/// write of each logit. A slice that times out is finished by a second
/// dispatch, so no schedule can hang, and the result is bit for bit the same
/// whichever path a slice takes. Rows it does not serve (N-d inputs, f16/bf16
/// rows that are not in aligned groups of 4 logits, more than 256 slices) run
/// the fused kernel, as do all rows under [`RowSplit::Off`].
///
/// It is off by default: it has not yet been timed on a GPU
/// (`xent bench --row-split` compares it with the fused kernel).
///
/// ```no_run
/// use xent::{Context, ContextOptions, RowSplit};
///
/// let context = Context::with_options(ContextOptions {
///     row_split: RowSplit::Forced { vec4s_per_invocation: 4, spin_limit: xent::DEFAULT_SPIN_LIMIT },
///     ..ContextOptions::default()
/// })?;
/// assert_eq!(context.row_split(), RowSplit::Forced { vec4s_per_invocation: 4, spin_limit: 4096 });
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RowSplit {
    /// Always the fused row kernel (the default).
    #[default]
    Off,
    /// The split-row kernel for rows longer than the fused kernel's on-chip row
    /// cache, on hardware adapters only (a software adapter runs one workgroup
    /// per thread, where waiting slices mostly time out).
    Auto,
    /// The split-row kernel for every row it serves, on any adapter, with
    /// `vec4s_per_invocation` (one of [`ROW_SPLIT_VEC4S_CHOICES`]) and
    /// `spin_limit` polls before a slice leaves its gradient to the repair
    /// dispatch (0: every slice does; tests use it).
    Forced {
        /// `vec4`s of logits per invocation.
        vec4s_per_invocation: u32,
        /// Polls before a slice gives up waiting.
        spin_limit: u32,
    },
}

impl RowSplit {
    /// An [`Error::InvalidOption`] for a `vec4s_per_invocation` outside the choices.
    pub(crate) fn validate(self) -> Result<Self> {
        if let Self::Forced {
            vec4s_per_invocation, ..
        } = self
            && !ROW_SPLIT_VEC4S_CHOICES.contains(&vec4s_per_invocation)
        {
            return Err(Error::InvalidOption(format!(
                "row split of {vec4s_per_invocation} vec4s per invocation is not one of {ROW_SPLIT_VEC4S_CHOICES:?}"
            )));
        }
        Ok(self)
    }
}

/// How one call's rows are split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SplitPlan {
    pub(crate) vec4s_per_invocation: u32,
    pub(crate) spin_limit: u32,
    /// Slices per row.
    pub(crate) slices: u32,
}

/// What the policy looks at besides the option.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SplitSituation {
    pub(crate) software_adapter: bool,
    pub(crate) workgroup_size: u32,
    /// Logits the fused kernel keeps on chip (rows up to it are read once already).
    pub(crate) row_cache_size: u32,
    /// The adapter has room for the split kernel's workgroup memory.
    pub(crate) fits_adapter: bool,
    /// Most slices the split kernel gathers per row.
    pub(crate) max_slices: u32,
    /// Bytes one binding may hold (the partials of all rows are bound at once).
    pub(crate) max_binding: u64,
    /// Bytes of partials per slice (its record and its pending flag).
    pub(crate) partial_bytes_per_slice: u64,
}

/// The split of `shape` (`logit_type` logits) under `split`, or `None` for the
/// fused kernel. `groups_of_4`: the rows can be read and written in aligned
/// groups of 4 (what 16-bit logits need, so that each invocation stores whole
/// 32-bit words of its own; f32 rows split either way).
pub(crate) fn split_plan(
    split: RowSplit,
    situation: SplitSituation,
    shape: Shape,
    logit_type: LogitType,
    groups_of_4: bool,
) -> Option<SplitPlan> {
    let (vec4s_per_invocation, spin_limit) = match split {
        RowSplit::Off => return None,
        RowSplit::Auto if situation.software_adapter || shape.classes <= situation.row_cache_size as usize => {
            return None;
        }
        RowSplit::Auto => (AUTO_VEC4S, DEFAULT_SPIN_LIMIT),
        RowSplit::Forced {
            vec4s_per_invocation,
            spin_limit,
        } => (vec4s_per_invocation, spin_limit),
    };
    let slice_size = u64::from(situation.workgroup_size) * u64::from(vec4s_per_invocation) * 4;
    let slices = (shape.classes as u64).div_ceil(slice_size);
    let partial_bytes = (shape.rows as u64)
        .saturating_mul(slices)
        .saturating_mul(situation.partial_bytes_per_slice);
    let served = situation.fits_adapter
        && partial_bytes <= situation.max_binding
        && shape.spatial == 1
        && (logit_type == LogitType::F32 || groups_of_4)
        && (1..=u64::from(situation.max_slices)).contains(&slices);
    served.then_some(SplitPlan {
        vec4s_per_invocation,
        spin_limit,
        slices: slices as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITUATION: SplitSituation = SplitSituation {
        software_adapter: false,
        workgroup_size: 256,
        row_cache_size: 8192,
        fits_adapter: true,
        max_slices: 256,
        max_binding: 1 << 27,
        partial_bytes_per_slice: 32,
    };

    #[test]
    fn auto_splits_only_long_rows_on_hardware() {
        let long = Shape::new(4, 32_768);
        let plan = split_plan(RowSplit::Auto, SITUATION, long, LogitType::F32, false).expect("split");
        assert_eq!(plan.slices, 8);
        assert_eq!(
            split_plan(RowSplit::Auto, SITUATION, Shape::new(4, 8192), LogitType::F32, false),
            None
        );
        let software = SplitSituation {
            software_adapter: true,
            ..SITUATION
        };
        assert_eq!(split_plan(RowSplit::Auto, software, long, LogitType::F32, false), None);
        assert_eq!(split_plan(RowSplit::Off, SITUATION, long, LogitType::F32, false), None);
    }

    #[test]
    fn forced_serves_contiguous_f32_rows_up_to_the_slice_limit() {
        let forced = RowSplit::Forced {
            vec4s_per_invocation: 1,
            spin_limit: 0,
        };
        let software = SplitSituation {
            software_adapter: true,
            workgroup_size: 64,
            ..SITUATION
        };
        let plan = split_plan(forced, software, Shape::new(2, 257), LogitType::F32, false).expect("split");
        assert_eq!((plan.slices, plan.spin_limit), (2, 0));
        assert_eq!(
            split_plan(forced, software, Shape::new(2, 256 * 256 + 1), LogitType::F32, false),
            None
        );
        assert_eq!(
            split_plan(
                forced,
                software,
                Shape {
                    rows: 6,
                    classes: 300,
                    spatial: 3
                },
                LogitType::F32,
                false
            ),
            None
        );
        assert_eq!(
            split_plan(forced, software, Shape::new(2, 300), LogitType::Bf16, false),
            None
        );
        assert!(split_plan(forced, software, Shape::new(2, 300), LogitType::Bf16, true).is_some());
        // 2^22 rows of 2 slices: 2^28 bytes of partials, above the binding.
        assert_eq!(
            split_plan(forced, software, Shape::new(1 << 22, 257), LogitType::F32, false),
            None
        );
    }

    #[test]
    fn forced_vec4s_outside_the_choices_is_an_error() {
        let bad = RowSplit::Forced {
            vec4s_per_invocation: 3,
            spin_limit: 1,
        };
        assert!(matches!(bad.validate(), Err(Error::InvalidOption(_))));
        assert_eq!(RowSplit::Auto.validate().ok(), Some(RowSplit::Auto));
    }
}
