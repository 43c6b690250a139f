//! Crash points for this crate's own tests (the `failpoints` feature):
//! a step named by `PODNET_FAILPOINT` kills, stops or panics the process
//! there, so a test can see what a crash at that step leaves and that gc
//! takes it away. Without the feature every call is a no-op. A module of
//! its own so that any layer (the store's users in `host` as well as
//! `sandbox` and `pod`) can mark its steps.

/// Die here with SIGKILL if `PODNET_FAILPOINT` names this step, stop with
/// SIGSTOP if it is `stop:<step>` (a create caught in progress, until the
/// test sends SIGCONT or SIGKILL), or panic if it is `panic:<step>` (a
/// task that fails).
#[cfg(feature = "failpoints")]
pub(crate) fn failpoint(step: &str) {
    use nix::sys::signal::{raise, Signal};
    let Ok(want) = std::env::var("PODNET_FAILPOINT") else {
        return;
    };
    if want == step {
        let _ = raise(Signal::SIGKILL);
    } else if want.strip_prefix("stop:") == Some(step) {
        let _ = raise(Signal::SIGSTOP);
    } else if want.strip_prefix("panic:") == Some(step) {
        panic!("failpoint {step}");
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn failpoint(_step: &str) {}
