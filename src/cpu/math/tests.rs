use super::*;

#[test]
fn ln_1p_matches_libm() {
    let mut worst = 0.0f64;
    let mut x = 1e-300f64;
    while x < 1e300 {
        for y in [x, x * 1.37, x * 2.9, x * 7.1] {
            let error = (ln_1p(y) - y.ln_1p()).abs() / y.ln_1p();
            worst = worst.max(error);
        }
        x *= 10.0;
    }
    assert!(worst <= 1e-15, "worst relative error {worst:e}");
    assert_eq!(ln_1p(0.0), 0.0);
    assert!(ln_1p(f64::NAN).is_nan());
}

#[test]
fn tanh_matches_libm() {
    for (name, tanh) in [
        ("plain", tanh_f64::<false> as fn(f64) -> f64),
        ("fused", tanh_f64::<true>),
    ] {
        let mut worst = 0.0f64;
        let mut u = -25.0f64;
        while u < 25.0 {
            worst = worst.max((tanh(u) - u.tanh()).abs());
            u += 1.37e-4;
        }
        println!("tanh_f64 ({name}): worst absolute error {worst:e}");
        assert!(worst <= 1e-15, "{name}: worst absolute error {worst:e}");
        // Relative accuracy near 0 too: a softcap t far above the logits needs t·tanh(x/t) ≈ x.
        let mut u = 1e-300f64;
        while u < 1.0 {
            for v in [u, u * 1.37, u * 2.9, u * 7.1, -u, -u * 3.3] {
                let error = (tanh(v) - v.tanh()).abs() / v.tanh().abs();
                assert!(
                    error <= 1e-12,
                    "{name}: tanh({v}) = {}, relative error {error:e}",
                    tanh(v)
                );
            }
            u *= 10.0;
        }
        for u in [1e-300, 1e-20, 1e-8, 0.3, 19.0, 20.0, 700.0, f64::INFINITY] {
            assert!(
                (tanh(u) - u.tanh()).abs() <= 2.0 * f64::EPSILON,
                "{name}: tanh({u}) = {}",
                tanh(u)
            );
            assert!((tanh(-u) + tanh(u)).abs() <= 2.0 * f64::EPSILON, "{name}: tanh(-{u})");
        }
        assert_eq!(tanh(0.0), 0.0, "{name}");
        assert_eq!(tanh(25.0), 1.0, "{name}");
        assert!(tanh(f64::NAN).is_nan(), "{name}");
    }
}
