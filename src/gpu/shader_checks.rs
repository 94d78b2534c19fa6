//! Which of wgpu's run-time checks the kernels are compiled with ([`ShaderChecks`]).

/// The run-time checks naga compiles into every kernel of a context
/// ([`ContextOptions::shader_checks`](crate::ContextOptions::shader_checks)).
/// The values, and so the bits, are the same either way (tests/shader_checks.rs).
///
/// - `Trusted` (the default): every check of wgpu's `create_shader_module`,
///   bounds checks included, but the forced loop bound. That bound is a 64-bit
///   counter naga adds to every loop (incremented, compared and branched on at
///   each iteration) so that a loop which would never end still does. It costs
///   every iteration of every hot loop, and it can keep the driver's compiler
///   from unrolling a loop; it has been reported to slow compute shaders down by
///   up to 100× (gfx-rs/wgpu#7698). None of xent's loops needs it: each is a
///   `for` over a counter that moves one way toward a bound it cannot pass,
///   and a unit test (src/gpu/kernels/loop_form.rs) holds every shader file
///   and every composed kernel source to that form. On
///   lavapipe the fused loss + gradient ran faster than under `Full` in all 16
///   side-by-side pairs timed (1024×32000, 256×50257, 64×128256 and 4096×1000,
///   f32 and bf16, two runs), by 3–21 % (BENCHMARKS.md); on a GPU it is not
///   measured yet.
/// - `Full`: exactly what `create_shader_module` compiles, the loop bound too.
///
/// `xent bench --shader-checks trusted,full` times both side by side.
///
/// ```no_run
/// use xent::{Context, ContextOptions, ShaderChecks};
///
/// let context = Context::with_options(ContextOptions {
///     shader_checks: ShaderChecks::Full,
///     ..ContextOptions::default()
/// })?;
/// assert_eq!(context.shader_checks(), ShaderChecks::Full);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ShaderChecks {
    /// wgpu's checks without the forced loop bound.
    #[default]
    Trusted,
    /// All of wgpu's checks.
    Full,
}

impl ShaderChecks {
    /// The checks xent compiles its kernels with, for
    /// `wgpu::Device::create_shader_module_trusted` (which is `unsafe`: under
    /// `Trusted` a shader compiled with them must have no loop that never ends).
    ///
    /// ```
    /// use xent::ShaderChecks;
    ///
    /// assert!(ShaderChecks::Full.runtime_checks().force_loop_bounding);
    /// let trusted = ShaderChecks::Trusted.runtime_checks();
    /// assert!(!trusted.force_loop_bounding && trusted.bounds_checks);
    /// ```
    pub fn runtime_checks(self) -> wgpu::ShaderRuntimeChecks {
        let mut checks = wgpu::ShaderRuntimeChecks::checked();
        if self == Self::Trusted {
            checks.force_loop_bounding = false;
        }
        checks
    }
}

#[cfg(test)]
mod tests {
    use super::ShaderChecks;

    #[test]
    fn trusted_drops_the_loop_bound_alone() {
        let full = ShaderChecks::Full.runtime_checks();
        let trusted = ShaderChecks::Trusted.runtime_checks();
        assert!(full.force_loop_bounding && !trusted.force_loop_bounding);
        assert!(trusted.bounds_checks && trusted.int_div_checks);
        let mut restored = trusted;
        restored.force_loop_bounding = true;
        assert_eq!(
            format!("{restored:?}"),
            format!("{:?}", wgpu::ShaderRuntimeChecks::checked())
        );
    }
}
