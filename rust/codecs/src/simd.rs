//! One build, two instruction sets: row encoders compiled for baseline
//! x86-64 (SSE2) and again for AVX2, picked at run time.
//!
//! The search loops are written as fixed-width lane arithmetic that the
//! compiler vectorises; with AVX2 the same loops run 8 lanes wide instead
//! of 4. The bytes do not change: only additions, multiplications,
//! divisions, square roots, comparisons and selects are vectorised, each
//! exactly rounded by IEEE 754 whatever the vector width, the order of every
//! sum is fixed by the source, and Rust never contracts `a * b + c` into a
//! fused multiply-add (FMA is not enabled anyway). `simd_tests` checks both
//! builds byte for byte. Other CPUs (and x86-64 without AVX2) run the
//! baseline build.

#[cfg(test)]
use std::sync::atomic::{AtomicBool, Ordering};

/// Tests switch the AVX2 build off to compare it with the baseline one.
#[cfg(test)]
pub(crate) static FORCE_BASELINE: AtomicBool = AtomicBool::new(false);

/// Whether the AVX2 build may run on this CPU (detected once, then cached by std).
#[inline]
#[allow(dead_code)] // unused on targets other than x86-64
pub(crate) fn use_avx2() -> bool {
    #[cfg(test)]
    if FORCE_BASELINE.load(Ordering::Relaxed) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines a row encoder `fn name(args)` whose body is compiled twice (see
/// the module doc). Everything the body calls in its hot loops must be
/// `#[inline(always)]`, or it runs as the baseline build.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if crate::simd::use_avx2() {
                    // SAFETY: the CPU was just checked to support AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;
