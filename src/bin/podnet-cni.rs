//! `podnet-cni`: podnet as a CNI plugin (spec 1.1.0 and the versions
//! runtimes still send). The runtime runs it with the verb and the
//! attachment in `CNI_*` variables and the network configuration on
//! stdin; it prints the result (or the spec's error JSON) on stdout and
//! exits 0 on success, 1 on failure. docs/cni.md describes it.

use std::io::Read;
use std::process::ExitCode;

/// The most bytes of configuration read from stdin: a conflist entry with
/// a prevResult is a few KiB; more is not a configuration.
const STDIN_MAX: u64 = 4 << 20;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(STDIN_MAX).read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => podnet::cni::plugin::run(std::env::vars_os(), &stdin),
        Err(e) => podnet::cni::plugin::Outcome {
            stdout: podnet::cni::CniError::io(
                "cannot read the configuration on stdin",
                e.to_string(),
            )
            .to_json(podnet::cni::version::requested(&stdin)),
            success: false,
        },
    };
    // DEL, CHECK, GC and STATUS print nothing when they succeed.
    if !outcome.stdout.is_empty() {
        println!("{}", outcome.stdout);
    }
    if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
