//! The Rust↔WGSL contract, written once: the uniform blocks, the `flags` bits,
//! the target formats and the binding numbers. Each is declared here in Rust, and
//! its WGSL text (a `struct` with the same fields, or `const` lines) is generated
//! from the same declaration into the prelude of the shaders that use it; the
//! shaders themselves declare none of it.

/// A `#[repr(C)]` uniform block of 32-bit scalar fields (`u32`, `f32`), and
/// `WGSL`: the same struct in WGSL (the same name, field names, types and order,
/// with the fields' doc comments as comments), so the two layouts agree by
/// construction (a test checks the offsets naga gives against `offset_of!`).
macro_rules! wgsl_struct {
    (
        $(#[doc = $doc:literal])*
        $vis:vis struct $name:ident {
            $( $(#[doc = $field_doc:literal])* $field:ident: $ty:ident, )*
        }
    ) => {
        $(#[doc = $doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $( $(#[doc = $field_doc])* pub(crate) $field: $ty, )*
        }

        impl $name {
            /// The WGSL declaration of this struct.
            pub(crate) const WGSL: &'static str = concat!(
                "struct ", stringify!($name), " {\n",
                $( $("    //", $field_doc, "\n",)* "    ", stringify!($field), ": ", stringify!($ty), ",\n", )*
                "}\n"
            );

            /// Each field's name and byte offset in the Rust struct.
            #[cfg(test)]
            pub(crate) const FIELD_OFFSETS: &'static [(&'static str, usize)] =
                &[$((stringify!($field), std::mem::offset_of!($name, $field)),)*];
        }
    };
}

/// A module of `u32` constants, and `WGSL`: the same constants as WGSL `const`
/// declarations (the same names and values).
macro_rules! wgsl_constants {
    (
        $(#[doc = $doc:literal])*
        $vis:vis mod $module:ident {
            $( $(#[doc = $constant_doc:literal])* $name:ident = $value:literal; )*
        }
    ) => {
        $(#[doc = $doc])*
        $vis mod $module {
            $( $(#[doc = $constant_doc])* pub(crate) const $name: u32 = $value; )*

            /// The same constants as WGSL declarations.
            pub(crate) const WGSL: &str = concat!(
                $( "const ", stringify!($name), ": u32 = ", stringify!($value), "u;\n", )*
            );
        }
    };
}

wgsl_struct! {
    /// The uniform block of `cross_entropy_rows` (shaders/cross_entropy.wgsl)
    /// and the split-row kernels, one per chunk.
    pub(crate) struct RowParams {
        /// Rows in this chunk.
        rows: u32,
        classes: u32,
        /// Elements between a row's consecutive classes (1, or d1·…·dk for (N, C, d1, …, dk)).
        spatial: u32,
        /// Element offset of the chunk's first logit inside the bound logits window
        /// (and of its first gradient entry, when the gradient is written in place).
        logits_offset: u32,
        /// Word offset of the chunk's first target inside the bound window.
        targets_offset: u32,
        /// Index of the chunk's first row in the whole batch.
        first_row: u32,
        /// TARGET_U32, TARGET_I32, TARGET_I64 or TARGET_PROBABILITIES.
        target_format: u32,
        /// `row_flags` bits.
        flags: u32,
        /// Rows between the planes of `row_outputs` (`row_planes`).
        plane_stride: u32,
        /// ignore_index as the (low, high) words of an i64.
        ignore_low: u32,
        ignore_high: u32,
        label_smoothing: f32,
        z_loss: f32,
        softcap: f32,
        logit_scale: f32,
        /// Σ_c w_c (C without weights).
        weight_total: f32,
        /// Element offset of the chunk's first gradient entry inside the bound gradient window.
        gradient_offset: u32,
        /// Word offset of the first upstream value inside the bound upstream window.
        upstream_offset: u32,
        /// Upstream values between consecutive rows: 1 (one per row) or 0 (one for all).
        upstream_step: u32,
        /// Factor of the whole gradient (1 without an upstream gradient).
        upstream_scale: f32,
    }
}

wgsl_struct! {
    /// The uniform block of the split-row kernels `split_rows` and
    /// `split_repair` (shaders/cross_entropy_split.wgsl, bind group 1), one per
    /// chunk beside its `RowParams`.
    pub(crate) struct SplitParams {
        /// Slices (workgroups) per row.
        slices: u32,
        /// Polls of the partials a slice makes before it leaves its gradient to
        /// `split_repair` (0: every slice does).
        spin_limit: u32,
        /// Word offset of the chunk's first slice record in `partials`.
        records_offset: u32,
        /// Word offset of the chunk's first pending flag in `partials`.
        pending_offset: u32,
    }
}

wgsl_struct! {
    /// The uniform block of the reductions (shaders/reduce.wgsl).
    pub(crate) struct ReduceParams {
        rows: u32,
        classes: u32,
        target_format: u32,
        /// 1: the divisor is the weighted count of non-ignored rows; 0: constant_divisor.
        count_targets: u32,
        constant_divisor: f32,
        /// 1: divide the sums by the divisor (mean); 0: keep the sums.
        divide: u32,
        has_weights: u32,
        /// Rows between the planes of `row_outputs`.
        plane_stride: u32,
        ignore_low: u32,
        ignore_high: u32,
        /// Word offset of the first target inside the bound targets window.
        targets_offset: u32,
        /// 1: `reduce_losses` (and `loss_partials`) sum the divisor beside the
        /// losses and write it to the scalars (a loss-only mean, which
        /// dispatches no `compute_divisor`); 0: `reduce_losses` reads it there.
        fold_divisor: u32,
        /// Partial sums of the two-level reduction (many rows): `divisor_partials`
        /// and `loss_partials` write one per workgroup, `compute_divisor` and
        /// `reduce_losses` fold them. 0: one level, the folds read the rows.
        partials: u32,
        /// Rows each partial sum covers (the last one fewer).
        rows_per_partial: u32,
        padding_0: u32,
        padding_1: u32,
    }
}

wgsl_struct! {
    /// The uniform block of every family kernel (shaders/family.wgsl, read by
    /// shaders/binary_cross_entropy.wgsl and shaders/divergence.wgsl): one per
    /// chunk, then the reduction's.
    pub(crate) struct FamilyParams {
        /// Elements (elementwise kernels), rows (row kernels) or partial sums
        /// (reduce_partials) of this dispatch.
        count: u32,
        classes: u32,
        /// Global index of the chunk's first element (elementwise) or row (row kernels).
        first_index: u32,
        /// Word offset of the chunk's first input inside the bound input, gradient and
        /// losses windows.
        input_offset: u32,
        /// Word offset of the chunk's first target inside the bound targets window.
        targets_offset: u32,
        /// FLAG_* bits.
        flags: u32,
        label_smoothing: f32,
        /// Factor of the gradient: the upstream scale, over the divisor for a mean.
        scale: f32,
        /// reduce_partials: result = Σ partials / divisor.
        divisor: f32,
        /// Word offset of the chunk's first upstream value inside the bound upstream window.
        upstream_offset: u32,
        /// Upstream values between consecutive elements (elementwise) or rows (row
        /// kernels): 1 (one per loss value) or 0 (one for all).
        upstream_step: u32,
        padding_0: u32,
    }
}

wgsl_struct! {
    /// The uniform block of `shard_stats` and `shard_gradient` (shaders/sharded.wgsl),
    /// one per chunk of rows.
    pub(crate) struct ShardParams {
        /// Rows in this chunk.
        rows: u32,
        /// Classes of the shard: the length of a row of its logits.
        classes: u32,
        /// Element offset of the chunk's first logit (and gradient entry) inside the bound window.
        logits_offset: u32,
        /// Index of the chunk's first row in the whole call.
        first_row: u32,
        /// Rows between the planes of `row_data` (the call's row count).
        plane_stride: u32,
        /// 1: class weights are bound (the shard's range of them); 0: every weight is 1.
        has_weights: u32,
        /// 1: logits are soft-capped at `softcap`.
        has_softcap: u32,
        softcap: f32,
        logit_scale: f32,
        padding_0: u32,
        padding_1: u32,
        padding_2: u32,
    }
}

wgsl_constants! {
    /// `RowParams::flags` bits.
    pub(crate) mod row_flags {
        /// The reduction is a mean: the gradient is divided by the divisor.
        FLAG_MEAN = 4;
        /// The chunk holds the call's last row (the straddling-word pass then
        /// also writes the word after it, shared with bytes past the caller's slice).
        FLAG_LAST_CHUNK = 8;
    }
}

wgsl_constants! {
    /// `FamilyParams::flags` bits.
    pub(crate) mod family_flags {
        FLAG_WRITE_GRADIENT = 1;
        FLAG_WRITE_LOSSES = 2;
        FLAG_PROBABILITIES = 4;
        FLAG_LOG_TARGET = 8;
        FLAG_CLASS_TARGETS = 16;
        /// The chunk holds the call's last row (a bf16 row kernel's straddling-word
        /// pass then also writes the word after it, shared with bytes past the call).
        FLAG_FINAL_CHUNK = 32;
    }
}

wgsl_constants! {
    /// `target_format` codes of shaders/targets.wgsl.
    pub(crate) mod target_formats {
        TARGET_U32 = 0;
        TARGET_I32 = 1;
        TARGET_I64 = 2;
        TARGET_PROBABILITIES = 3;
    }
}

wgsl_constants! {
    /// Binding numbers of the row kernel's bind group (`cross_entropy_rows` and
    /// the split-row kernels; shaders/cross_entropy.wgsl, shaders/logit_words*.wgsl).
    pub(crate) mod row_bindings {
        BINDING_PARAMS = 0;
        BINDING_LOGITS = 1;
        BINDING_TARGETS = 2;
        BINDING_GRADIENT = 3;
        BINDING_ROW_OUTPUTS = 4;
        BINDING_STATUS = 5;
        BINDING_CLASS_WEIGHTS = 6;
        BINDING_SCALARS = 7;
        /// The upstream values (f32) the gradient is multiplied by.
        BINDING_UPSTREAM = 8;
    }
}

wgsl_constants! {
    /// The planes of the categorical cross-entropy's per-row outputs
    /// (`row_outputs`, `ROW_PLANES` planes of `plane_stride` rows each): written
    /// by the row kernels (shaders/cross_entropy.wgsl `write_row_losses`), summed
    /// by shaders/reduce.wgsl, read back by src/gpu/outputs.rs.
    pub(crate) mod row_planes {
        /// The row's loss (z-term included), f32.
        PLANE_LOSS = 0;
        /// The row's z-term, f32.
        PLANE_Z = 1;
        /// The row's log-sum-exp, f32.
        PLANE_LSE = 2;
        /// The row's argmax, u32.
        PLANE_ARGMAX = 3;
        /// The low word of the row's raw target (an i64's low word, an i32 or a
        /// u32), written only for a row whose class target is out of range
        /// (other rows may hold `PLANE_ROW_MAX` there).
        PLANE_TARGET_LOW = 4;
        /// The high word of the same (an i64's high word, an i32's sign), written
        /// only for a row whose class target is out of range.
        PLANE_TARGET_HIGH = 5;
        /// 16-bit contiguous rows not in aligned groups of 4: the row's first
        /// entry's gradient bits (low half) when its word straddles the row's
        /// start, its last entry's (high half) when its word straddles the end,
        /// for the straddling-word pass (shaders/straddling_words.wgsl).
        PLANE_EDGE_HALVES = 6;
        /// bf16 N-d rows with a gradient, a row with a valid class target only
        /// (which leaves the three planes above free): the row's maximum x'
        /// (f32), for the gradient-word pass (shaders/gradient_words.wgsl;
        /// `record_gradient_sums` in shaders/cross_entropy.wgsl).
        PLANE_ROW_MAX = 4;
        /// The same rows' spread mass Σ_c a_c (f32), with label smoothing or soft targets.
        PLANE_SPREAD_MASS = 5;
        /// The same rows' `rest` when their maximum is unique, else minus
        /// their sum of exponentials (f32; the sign bit says which).
        PLANE_SUM_EXP = 6;
        ROW_PLANES = 7;
    }
}

wgsl_constants! {
    /// The words of the categorical cross-entropy's status block (`status`,
    /// cleared at the start of every call): written by the row kernels
    /// (shaders/cross_entropy.wgsl, shaders/cross_entropy_split.wgsl), read back
    /// by src/gpu/outputs.rs.
    pub(crate) mod status_words {
        /// 0 when every class target was valid, else `u32::MAX − (first bad row)`
        /// (atomicMax: the first bad row wins whatever the workgroups' order).
        STATUS_FIRST_BAD_ROW = 0;
        /// Slices of the split-row kernel that gave up waiting for their row's
        /// other slices and were finished by `split_repair` (atomicAdd).
        STATUS_REPAIRED_SLICES = 1;
        /// The stamp of the recording that wrote the block (copied in by the
        /// host's commands after the kernels; src/gpu/outputs.rs checks it).
        STATUS_STAMP = 3;
        /// Words of the block (word 2 unused).
        STATUS_WORDS = 4;
    }
}

// The gradient-word pass's sums take exactly the planes that a row with a
// valid class target leaves free (the bad target's words, the straddling halves).
const _: () = {
    use row_planes::*;
    assert!(PLANE_ROW_MAX == PLANE_TARGET_LOW);
    assert!(PLANE_SPREAD_MASS == PLANE_TARGET_HIGH);
    assert!(PLANE_SUM_EXP == PLANE_EDGE_HALVES);
};

wgsl_constants! {
    /// The sharded cross-entropy's per-row words (shaders/sharded.wgsl): the
    /// local target codes, and the planes of `row_data` (statistics written by
    /// `shard_stats`, combined coefficients read by `shard_gradient`).
    pub(crate) mod shard_rows {
        /// The row's target is another shard's class.
        TARGET_NOT_IN_SHARD = 4294967295;
        /// The row's target is `ignore_index`.
        TARGET_IGNORED = 4294967294;
        STAT_MAX = 0;
        STAT_MAX_COUNT = 1;
        STAT_REST = 2;
        STAT_TARGET_LOGIT = 3;
        STAT_TARGET_COUNT = 4;
        STAT_SPREAD = 5;
        STAT_PLANES = 6;
        COEFFICIENT_MAX = 0;
        COEFFICIENT_LN_SUM_EXP = 1;
        COEFFICIENT_OTHER = 2;
        COEFFICIENT_SMOOTHING = 3;
        COEFFICIENT_TARGET = 4;
        /// `rest` when one logit alone attains the row's maximum, else −1.
        COEFFICIENT_CONFIDENT_REST = 5;
        COEFFICIENT_PLANES = 6;
    }
}

wgsl_constants! {
    /// Binding numbers of the sharded cross-entropy's bind group (shaders/sharded.wgsl).
    pub(crate) mod shard_bindings {
        BINDING_PARAMS = 0;
        BINDING_LOGITS = 1;
        BINDING_LOCAL_TARGETS = 2;
        BINDING_CLASS_WEIGHTS = 3;
        BINDING_ROW_DATA = 4;
        BINDING_GRADIENT = 5;
    }
}

wgsl_constants! {
    /// The split-row kernels' bind group 1 (shaders/cross_entropy_split.wgsl;
    /// group 0 is the row kernel's, `row_bindings`) and the size of the
    /// `partials` it holds (the layout of a record is the shader's own).
    pub(crate) mod split_bindings {
        BINDING_SPLIT_PARAMS = 0;
        /// Every slice's record (`RECORD_WORDS` words each), then every slice's pending flag.
        BINDING_PARTIALS = 1;
        /// Words of one slice's record.
        RECORD_WORDS = 8;
        /// Most slices a row may have (the workgroup array the partials are gathered in).
        MAX_SLICES = 256;
    }
}

wgsl_constants! {
    /// Binding numbers of the reductions' bind group (shaders/reduce.wgsl).
    pub(crate) mod reduce_bindings {
        BINDING_PARAMS = 0;
        BINDING_ROW_OUTPUTS = 1;
        BINDING_TARGETS = 2;
        BINDING_CLASS_WEIGHTS = 3;
        BINDING_SCALARS = 4;
        /// The two-level reduction's partial sums (vec4<f32> each).
        BINDING_PARTIALS = 5;
    }
}

wgsl_constants! {
    /// Binding numbers of the family kernels' bind group (declared in
    /// shaders/family.wgsl; the inputs, as `logits`, and the gradient in
    /// shaders/logit_words*.wgsl, which the cross-entropy shares).
    pub(crate) mod family_bindings {
        BINDING_PARAMS = 0;
        BINDING_LOGITS = 1;
        BINDING_TARGETS = 2;
        BINDING_GRADIENT = 3;
        /// Per-element losses; the straddling entries of bf16 rows of odd C
        /// (shaders/family_half_words.wgsl).
        BINDING_LOSSES = 4;
        BINDING_PARTIALS = 5;
        BINDING_CLASS_PARAMS = 6;
        BINDING_RESULT = 7;
        /// The upstream values (f32) the gradient is multiplied by.
        BINDING_UPSTREAM = 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The members (name, offset) and size naga lays out for `name` in `source`.
    fn wgsl_layout(source: &str, name: &str) -> (Vec<(String, u32)>, u32) {
        let module = wgpu::naga::front::wgsl::parse_str(source).expect("the generated WGSL parses");
        module
            .types
            .iter()
            .find_map(|(_, ty)| match (&ty.name, &ty.inner) {
                (Some(type_name), wgpu::naga::TypeInner::Struct { members, span }) if type_name == name => Some((
                    members
                        .iter()
                        .map(|member| (member.name.clone().unwrap_or_default(), member.offset))
                        .collect(),
                    *span,
                )),
                _ => None,
            })
            .expect("the struct is declared")
    }

    macro_rules! assert_same_layout {
        ($($ty:ident),*) => {$({
            let (members, size) = wgsl_layout($ty::WGSL, stringify!($ty));
            let expected: Vec<(String, u32)> = $ty::FIELD_OFFSETS
                .iter()
                .map(|&(name, offset)| (name.to_owned(), offset as u32))
                .collect();
            assert_eq!(members, expected, "{}", stringify!($ty));
            assert_eq!(size as usize, size_of::<$ty>(), "{}", stringify!($ty));
        })*};
    }

    #[test]
    fn generated_structs_have_the_rust_layout() {
        assert_same_layout!(RowParams, ReduceParams, FamilyParams, ShardParams, SplitParams);
    }

    #[test]
    fn generated_constants_have_the_rust_values() {
        let module = wgpu::naga::front::wgsl::parse_str(&format!(
            "{}{}{}{}{}",
            row_flags::WGSL,
            family_flags::WGSL,
            target_formats::WGSL,
            shard_rows::WGSL,
            row_planes::WGSL
        ))
        .expect("the generated WGSL parses");
        let value = |name: &str| {
            let (_, constant) = module
                .constants
                .iter()
                .find(|(_, constant)| constant.name.as_deref() == Some(name))
                .expect("declared");
            match module.global_expressions[constant.init] {
                wgpu::naga::Expression::Literal(wgpu::naga::Literal::U32(value)) => value,
                ref other => panic!("{name} = {other:?}"),
            }
        };
        assert_eq!(value("FLAG_MEAN"), row_flags::FLAG_MEAN);
        assert_eq!(value("FLAG_CLASS_TARGETS"), family_flags::FLAG_CLASS_TARGETS);
        assert_eq!(value("FLAG_FINAL_CHUNK"), family_flags::FLAG_FINAL_CHUNK);
        assert_eq!(value("TARGET_PROBABILITIES"), target_formats::TARGET_PROBABILITIES);
        assert_eq!(value("TARGET_NOT_IN_SHARD"), shard_rows::TARGET_NOT_IN_SHARD);
        assert_eq!(value("COEFFICIENT_PLANES"), shard_rows::COEFFICIENT_PLANES);
        assert_eq!(value("PLANE_TARGET_HIGH"), row_planes::PLANE_TARGET_HIGH);
        assert_eq!(value("ROW_PLANES"), row_planes::ROW_PLANES);
    }

    #[test]
    fn bindings_take_the_generated_constants() {
        let source = format!(
            "{}@group(0) @binding(BINDING_SCALARS) var<storage, read> scalars: array<f32>;\n\
             @compute @workgroup_size(1) fn main() {{ _ = scalars[0]; }}\n",
            row_bindings::WGSL
        );
        let module = wgpu::naga::front::wgsl::parse_str(&source).expect("parses");
        let (_, variable) = module.global_variables.iter().next().expect("declared");
        assert_eq!(
            variable.binding.as_ref().map(|binding| binding.binding),
            Some(row_bindings::BINDING_SCALARS)
        );
    }
}
