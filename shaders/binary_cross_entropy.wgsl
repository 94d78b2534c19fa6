// Binary cross-entropy over an (N, C) batch, one loss per element. Compiled
// appended to shaders/family.wgsl, whose bindings, Params, flags, tiles,
// reduce_partials and logarithms it uses (and the Kahan sums and trees of
// shaders/sums.wgsl).
//
// Element i sits in class column c = i mod C. With its input x (a logit) or p (a
// probability), its target y, label smoothing ε (Keras: y' = y·(1-ε) + ε/2), the
// class weight w = w_c and the positive-class weight π = π_c (both 1 when absent):
//
// From logits (PyTorch BCEWithLogitsLoss), with l = log1p(exp(-|x|)) and
// A = 1 + (π - 1)·y' (exactly 1 for π = 1, whatever y'):
//
//   loss = w·[(1 - y')·x + A·(l + max(-x, 0))]        (PyTorch's stable form)
//        = w·[A·l + (1 - y')·x]      for x >= 0
//        = w·[A·l - π·y'·x]          for x < 0        ((1 - y') - A = -π·y')
//
//   The split form adds two non-negative terms (for y' in [0, 1], π >= 0), so a
//   loss of 1e-30 keeps its digits where the stable form cancels x against -x.
//   l + max(-x, 0) = softplus(-x) = -log σ(x) and d softplus(-x)/dx = -σ(-x), so
//
//   d loss / dx = w·[(1 - y') - A·σ(-x)]              (evaluated for x >= 0)
//               = w·[A·σ(x) - π·y']                   (evaluated for x < 0)
//
//   (equal, since A·σ(-x) = A - A·σ(x) and (1 - y') - A = -π·y'); each branch
//   takes σ of a non-positive argument, exp(-|x|) / (1 + exp(-|x|)), which never
//   overflows, and avoids the cancellation 1 - σ(|x|).
//
// From probabilities (PyTorch BCELoss), each log clamped at -100 as PyTorch does:
//
//   loss = -w·[y'·max(log p, -100) + (1 - y')·max(log(1 - p), -100)]
//   d loss / dp = w·(p - y') / max(p·(1 - p), 1e-12)
//
//   the derivative of the unclamped loss, -y'/p + (1 - y')/(1 - p), over a common
//   denominator clamped like PyTorch's backward (so p in {0, 1} stays finite).
//
// A probability outside [0, 1] gives a NaN loss and gradient (PyTorch raises; a
// host call checks first, a device-resident call cannot).
//
// The gradient is written times gradient_factor(element) (shaders/family.wgsl:
// the upstream gradient, over N·C for the mean); per-element losses are written
// for reduction `none`.

// max(log p, -100) for p in [0, 1] (PyTorch's clamp); -100 for p <= 0.
fn clamped_log(p: f32) -> f32 {
    if p >= 0.5 {
        return log1p_series(p - 1.0);
    }
    if p > 0.0 {
        return max(log_accurate(p), -100.0);
    }
    return -100.0;
}

// max(log(1 - p), -100) for p in [0, 1], without rounding 1 - p for small p.
fn clamped_log_complement(p: f32) -> f32 {
    if p <= 0.5 {
        return log1p_series(-p);
    }
    return clamped_log(1.0 - p);
}

// σ(-|x|) = exp(-|x|) / (1 + exp(-|x|)).
fn sigmoid_of_negative_magnitude(x: f32) -> f32 {
    let e = exp(-abs(x));
    return e / (1.0 + e);
}

struct ElementTerms {
    loss: f32,
    // d loss / d input, before gradient_factor.
    slope: f32,
}

fn bce_from_logits(x: f32, smoothed: f32, weight: f32, pos_weight: f32) -> ElementTerms {
    // Exactly 1 for π = 1 (no positive-class weight), whatever y', as on the CPU
    // (src/cpu/binary.rs, positive_factor): lavapipe's compiler turned
    // 1 + (1 - 1)·y' into 0 for y' ≥ 1e10, and an infinite y' would give 0·inf.
    let a = select(1.0 + (pos_weight - 1.0) * smoothed, 1.0, pos_weight == 1.0);
    let tail = log1p_series(exp(-abs(x)));
    let sigma = sigmoid_of_negative_magnitude(x);
    if x >= 0.0 {
        return ElementTerms(weight * (a * tail + (1.0 - smoothed) * x), weight * ((1.0 - smoothed) - a * sigma));
    }
    // NaN inputs land here and stay NaN.
    return ElementTerms(weight * (a * tail - pos_weight * smoothed * x), weight * (a * sigma - pos_weight * smoothed));
}

// p - y' is taken as (p - y) + ε·(y - 1/2): exact terms for hard targets, so the
// rounding of y' is not amplified by 1/(p·(1 - p)).
fn bce_from_probabilities(p: f32, y: f32, epsilon: f32, weight: f32) -> ElementTerms {
    let smoothed = y * (1.0 - epsilon) + 0.5 * epsilon;
    let loss = -weight * (smoothed * clamped_log(p) + (1.0 - smoothed) * clamped_log_complement(p));
    let difference = (p - y) + epsilon * (y - 0.5);
    let slope = weight * difference / max(p * (1.0 - p), 1e-12);
    return ElementTerms(loss, slope);
}

// The loss of element `element` of the chunk; writes its gradient (and loss) when asked.
fn bce_element(element: u32) -> f32 {
    let index = params.input_offset + element;
    let x = load_logit(index);
    let y = targets[params.targets_offset + element];
    let class_index = (params.first_index + element) % params.classes;
    let epsilon = params.label_smoothing;
    let weight = class_params[class_index];
    var terms: ElementTerms;
    if has_flag(FLAG_PROBABILITIES) {
        terms = bce_from_probabilities(x, y, epsilon, weight);
        // Outside [0, 1] (which a host call rejects; a device-resident call cannot):
        // NaN, never a number from the clamps.
        if is_nan(x) || x < 0.0 || x > 1.0 {
            terms = ElementTerms(nan_value(), nan_value());
        }
    } else {
        let smoothed = y * (1.0 - epsilon) + 0.5 * epsilon;
        terms = bce_from_logits(x, smoothed, weight, class_params[params.classes + class_index]);
    }
    if has_flag(FLAG_WRITE_GRADIENT) {
        store_gradient(index, terms.slope * gradient_factor(element));
    }
    if has_flag(FLAG_WRITE_LOSSES) {
        losses[index] = terms.loss;
    }
    return terms.loss;
}

// One workgroup per tile of TILE_ELEMENTS elements; writes the tile's loss sum
// (shaders/element_tiles.wgsl).
@compute @workgroup_size(WORKGROUP_SIZE)
fn bce_elements(
    @builtin(workgroup_id) workgroup_id: vec3<u32>,
    @builtin(num_workgroups) num_workgroups: vec3<u32>,
    @builtin(local_invocation_index) local_index: u32,
) {
    sum_element_tile(ELEMENT_BCE, workgroup_id, num_workgroups, local_index);
}
