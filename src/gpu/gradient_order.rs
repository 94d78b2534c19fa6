//! In which order the categorical cross-entropy's gradient pass walks a row
//! ([`GradientOrder`]).

/// The order in which the gradient pass of the categorical cross-entropy's
/// fused row kernel walks the whole 4-logit groups of a contiguous row
/// ([`ContextOptions::gradient_order`](crate::ContextOptions::gradient_order)).
/// The values, and so the bits, are the same either way.
///
/// A row longer than the row cache is read twice: by the statistics pass, front
/// to back, then by the gradient pass. When the rows in flight outgrow the
/// device's last-level cache, the logits still cached when the gradient pass
/// starts are the ones the statistics pass read last, the row's end. `Backward`
/// reads those first, so that more of the second read hits the cache; `Forward`
/// reads the row's start first, which the cache evicted first.
///
/// - `Forward` (the default): lower classes first, as the statistics pass.
/// - `Backward`: higher classes first. On lavapipe it is slower (1024×32000
///   fused, side by side: 133.0 / 129.9 ms against 123.6 / 123.4 ms forward),
///   where the rows fit the CPU's caches and its prefetchers favour ascending
///   streams; on a GPU it is not measured yet.
///
/// `xent bench --gradient-order forward,backward` times both side by side.
///
/// ```no_run
/// use xent::{Context, ContextOptions, GradientOrder};
///
/// let context = Context::with_options(ContextOptions {
///     gradient_order: GradientOrder::Backward,
///     ..ContextOptions::default()
/// })?;
/// assert_eq!(context.gradient_order(), GradientOrder::Backward);
/// # Ok::<(), xent::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GradientOrder {
    /// Lower classes first.
    #[default]
    Forward,
    /// Higher classes first.
    Backward,
}
