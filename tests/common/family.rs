//! The BCE / KL / entropy / probability cross-entropy family's test losses and
//! their random inputs, shared by the family's device-door suites.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xent::Shape;

/// The losses under test, each with the targets it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    BceLogits,
    BceProbabilities,
    Kl,
    KlLogTarget,
    EntropyProbabilities,
    EntropyLogits,
    PceSoft,
    PceClasses,
}

pub const KINDS: [Kind; 8] = [
    Kind::BceLogits,
    Kind::BceProbabilities,
    Kind::Kl,
    Kind::KlLogTarget,
    Kind::EntropyProbabilities,
    Kind::EntropyLogits,
    Kind::PceSoft,
    Kind::PceClasses,
];

/// One call's random data: the input, the per-element targets (BCE, KL, soft
/// probability cross-entropy) and the class indices (probability cross-entropy
/// on classes).
pub struct Data {
    pub input: Vec<f32>,
    pub soft: Vec<f32>,
    pub classes: Vec<u32>,
}

impl Data {
    /// The input and per-element targets in the ranges `kind` takes, from
    /// `seed`; the class indices from `seed + 1`.
    pub fn new(kind: Kind, shape: Shape, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let elements = shape.rows * shape.classes;
        let mut uniform =
            |low: f32, high: f32| -> Vec<f32> { (0..elements).map(|_| rng.random_range(low..high)).collect() };
        let (input, soft) = match kind {
            Kind::BceLogits | Kind::EntropyLogits => (uniform(-6.0, 6.0), uniform(0.0, 1.0)),
            Kind::BceProbabilities => (uniform(0.01, 0.99), uniform(0.0, 1.0)),
            Kind::Kl => (uniform(-5.0, -0.1), uniform(0.0, 1.0)),
            Kind::KlLogTarget => (uniform(-5.0, -0.1), uniform(-5.0, 0.0)),
            Kind::EntropyProbabilities | Kind::PceSoft | Kind::PceClasses => (uniform(0.001, 1.0), uniform(0.0, 1.0)),
        };
        let mut rng = StdRng::seed_from_u64(seed + 1);
        let classes = (0..shape.rows)
            .map(|_| rng.random_range(0..shape.classes as u32))
            .collect();
        Self { input, soft, classes }
    }
}
