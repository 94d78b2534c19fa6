// The softcap x' = t·tanh(u), u = s·x / t, written once for the row kernels
// (shaders/cross_entropy.wgsl) and the sharded statistics (shaders/sharded.wgsl).
//
// WGSL's tanh is only as accurate as (e^u − e^-u)/(e^u + e^-u): an absolute error
// of about an f32 ulp of 1, which near u = 0 is no relative accuracy at all
// (u = 1e-8 comes out 0, and t = 1e8 turns the logits 1 and 2 into 0 and 1.5).
// A softcap far above the logits must leave them as they are, as PyTorch's does.
// So, as Cephes' tanhf: for |u| < 0.625 the odd polynomial
// tanh(u) = u + u·z·P(z), z = u² (relative error about 1 ulp), written as
// x' = s·x·(1 + z·P(z)) so that a subnormal u (t = 3e38), which a GPU may flush
// to zero, still gives x' = s·x; above it 1 − 2/(e^{2|u|} + 1), whose
// cancellation costs under one bit there, and ±1 from |u| = 10 on (where
// tanh rounds to 1 in f32). A NaN u passes through.
fn softcap_transform(scaled: f32, cap: f32) -> f32 {
    let u = scaled / cap;
    let magnitude = abs(u);
    if (bitcast<u32>(u) & 0x7fffffffu) > 0x7f800000u {
        return u;
    }
    if magnitude < 0.625 {
        let z = u * u;
        let p = (((-5.70498872745e-3 * z + 2.06390887954e-2) * z - 5.37397155531e-2) * z + 1.33314422036e-1) * z
            - 3.33332819422e-1;
        return scaled + scaled * (z * p);
    }
    let e = exp(2.0 * min(magnitude, 10.0));
    let tanh_magnitude = 1.0 - 2.0 / (e + 1.0);
    return cap * select(tanh_magnitude, -tanh_magnitude, u < 0.0);
}
