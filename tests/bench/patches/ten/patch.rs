// SPDX-License-Identifier: GPL-2.0
//! Replacements of the ten-function benchmark patch.

/// `bench_fn!(name, n)`: a replacement for `int kmend_bench_fN(int x)`.
macro_rules! bench_fn {
    ($name:ident, $n:expr) => {
        /// Replacement: returns x + 100 + n.
        #[no_mangle]
        pub(crate) extern "C" fn $name(x: kernel::ffi::c_int) -> kernel::ffi::c_int {
            crate::kmend_traceable!();
            x.wrapping_add(100 + $n)
        }
    };
}

bench_fn!(bench_f0, 0);
bench_fn!(bench_f1, 1);
bench_fn!(bench_f2, 2);
bench_fn!(bench_f3, 3);
bench_fn!(bench_f4, 4);
bench_fn!(bench_f5, 5);
bench_fn!(bench_f6, 6);
bench_fn!(bench_f7, 7);
bench_fn!(bench_f8, 8);
bench_fn!(bench_f9, 9);
