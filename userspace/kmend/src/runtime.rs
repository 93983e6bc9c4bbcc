//! Running the async parts (tough's TUF client and editor) from kmend's
//! synchronous jobs.

use std::future::Future;

/// Runs `f` to completion: on the runtime this thread belongs to (the
/// daemon runs jobs with `spawn_blocking`), else on a new current-thread
/// runtime (the CLI verbs). Must not be called from async code.
pub fn block_on<F: Future>(f: F) -> Result<F::Output, String> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => Ok(handle.block_on(f)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(f))
            .map_err(|e| format!("cannot start the async runtime: {e}")),
    }
}
