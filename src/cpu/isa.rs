//! Which build of the CPU loops runs: the portable one, or the same code compiled
//! with AVX2 and FMA, or with AVX-512 as well, chosen once per process from what the CPU supports. The
//! loops themselves add their builds and `Kernel` methods through [`x86_builds`], in
//! `cross_entropy/fast.rs` and `cross_entropy/general.rs`.

use std::sync::OnceLock;

/// Defines the builds of a row loop `body::<FUSED, VECTOR>(args…)`, which must be
/// `#[inline(always)]` all the way down, and the [`Kernel`] method that runs the
/// chosen one: `$avx2` compiled with AVX2 and FMA, `$avx512` with AVX-512
/// F/VL/DQ/BW as well — the feature sets [`Kernel::detected`] checks for,
/// written here once. Both call `body::<true, _>` (fused multiply-adds) and are
/// `unsafe`: the CPU must have those features, which is what choosing
/// [`Kernel::Avx2Fma`] or [`Kernel::Avx512`] guarantees, and the method
/// `Kernel::$method(self, args…)` (with the docs written above it) calls them
/// only then; [`Kernel::Portable`] runs `body::<false, 1>`. `VECTOR` is the
/// build's f32 lanes per vector instruction ([`AVX2_VECTOR`], [`AVX512_VECTOR`],
/// 1 for the portable build), for the loops that use explicit vector
/// instructions ([`crate::cpu::lanes::add_rest_terms`]).
macro_rules! x86_builds {
    (
        $(#[$doc:meta])*
        Kernel::$method:ident => $body:ident($($arg:ident: $type:ty),* $(,)?) => $avx2:ident, $avx512:ident
    ) => {
        impl $crate::cpu::isa::Kernel {
            $(#[$doc])*
            fn $method(self, $($arg: $type),*) {
                match self {
                    Self::Portable => $body::<false, 1>($($arg),*),
                    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                    // SAFETY: `Avx2Fma` is only chosen when the CPU reports AVX2 and FMA.
                    Self::Avx2Fma => unsafe { $avx2($($arg),*) },
                    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                    // SAFETY: `Avx512` is only chosen when the CPU reports AVX-512 F/VL/DQ/BW, AVX2 and FMA.
                    Self::Avx512 => unsafe { $avx512($($arg),*) },
                }
            }
        }

        #[doc = concat!("[`", stringify!($body), "`] compiled with AVX2 and FMA.")]
        ///
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2($($arg: $type),*) {
            $body::<true, { $crate::cpu::isa::AVX2_VECTOR }>($($arg),*)
        }

        #[doc = concat!("[`", stringify!($body), "`] compiled with AVX-512 (and AVX2, FMA): 16 f32 lanes per instruction.")]
        ///
        /// # Safety
        /// The CPU must support AVX-512 F, VL, DQ and BW, AVX2 and FMA.
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
        unsafe fn $avx512($($arg: $type),*) {
            $body::<true, { $crate::cpu::isa::AVX512_VECTOR }>($($arg),*)
        }
    };
}
pub(crate) use x86_builds;

/// f32 lanes of the AVX2 build's vectors (`VECTOR` of [`x86_builds`]).
pub(crate) const AVX2_VECTOR: usize = 8;
/// f32 lanes of the AVX-512 build's vectors (`VECTOR` of [`x86_builds`]).
pub(crate) const AVX512_VECTOR: usize = 16;

/// Which build of the row loops to run, detected once per process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// The baseline build for the compilation target.
    Portable,
    /// The same code compiled with AVX2 and FMA enabled.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    Avx2Fma,
    /// The same code compiled with AVX-512 (F, VL, DQ, BW) as well: 16 f32 lanes
    /// per instruction.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    Avx512,
}

impl Kernel {
    pub(crate) fn detected() -> Self {
        static KERNEL: OnceLock<Kernel> = OnceLock::new();
        *KERNEL.get_or_init(Self::detect)
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    fn detect() -> Self {
        let avx512 = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512bw");
        let avx2_fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if avx2_fma && avx512 {
            Self::Avx512
        } else if avx2_fma {
            Self::Avx2Fma
        } else {
            Self::Portable
        }
    }

    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    fn detect() -> Self {
        Self::Portable
    }

    /// Every build this CPU can run (for the tests): the portable one, AVX2+FMA
    /// and AVX-512 where the CPU has them.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Self> {
        let mut kernels = vec![Self::Portable];
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if Self::detected() == Self::Avx512 {
            kernels.push(Self::Avx2Fma);
        }
        if Self::detected() != Self::Portable {
            kernels.push(Self::detected());
        }
        kernels
    }
}
