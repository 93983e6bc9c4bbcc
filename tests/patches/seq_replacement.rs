// SPDX-License-Identifier: GPL-2.0
// Shared by the test patches (pulled in with `include!`): defines a
// replacement for a seq_file show function that prints a fixed line, so
// each test step can tell by behaviour which version runs.

/// `seq_replacement!(fn_name, "text")`: a replacement for
/// `int show(struct seq_file *m, void *v)` that prints `text` and a newline.
macro_rules! seq_replacement {
    ($name:ident, $text:expr) => {
        /// Test replacement: prints a fixed line.
        ///
        /// # Safety
        ///
        /// Called by the kernel in place of a seq_file show function, with
        /// a live `seq_file`.
        #[no_mangle]
        pub(crate) unsafe extern "C" fn $name(
            m: *mut kernel::bindings::seq_file,
            _v: *mut kernel::ffi::c_void,
        ) -> kernel::ffi::c_int {
            crate::kmend_traceable!();
            // SAFETY: `m` is the live seq_file of this show call.
            let m = unsafe { kernel::seq_file::SeqFile::from_raw(m) };
            kernel::seq_print!(m, "{}\n", $text);
            0
        }
    };
}
