//! Diagnostics a user can turn on: podnet emits `tracing` spans and events
//! (and installs no subscriber); these tests install one on their own
//! thread and read what it wrote.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::in_netns;
use podnet::Phase;

/// What the subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Held by each test: tracing caches whether a callsite is enabled across
/// the subscribers alive at once, so tests with different levels must not
/// overlap.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A subscriber for this thread at `level`, writing to the returned buffer.
fn capture(level: tracing::Level) -> (Captured, tracing::subscriber::DefaultGuard) {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(move || writer.clone())
        .finish();
    (out, tracing::subscriber::set_default(subscriber))
}

#[test]
fn gc_says_what_it_reclaimed_in_its_span_at_info() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    in_netns(|ctx| async move {
        let net = common::build_network(&ctx.state, "pn0", "10.88.0.0/16")
            .await
            .unwrap();
        let pod = net.sandbox("gone").create().await.unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pod.holder_pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(pod.wait().await, Phase::Failed);
        let (out, _guard) = capture(tracing::Level::INFO);
        let report = net.gc().await.unwrap();
        assert_eq!(report.sandboxes, ["gone"]);
        let text = out.text();
        let line = text
            .lines()
            .find(|l| l.contains("gc reclaimed"))
            .unwrap_or_else(|| panic!("no gc event in {text:?}"));
        assert!(
            line.contains("podnet.gc") && line.contains("\"gone\""),
            "{line}"
        );
        assert!(line.contains("INFO"), "{line}");
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn netlink_batches_are_debug_events_with_their_kinds_and_duration() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    in_netns(|ctx| async move {
        let net = common::build_network(&ctx.state, "pn0", "10.88.0.0/16")
            .await
            .unwrap();
        let (out, guard) = capture(tracing::Level::DEBUG);
        let pod = net.sandbox("web").create().await.unwrap();
        drop(guard);
        let text = out.text();
        let batch = text
            .lines()
            .find(|l| l.contains("netlink batch") && l.contains("NewLink"))
            .unwrap_or_else(|| panic!("no batch with the veth in {text:?}"));
        assert!(
            batch.contains("elapsed_us=") && batch.contains("DEBUG"),
            "{batch}"
        );
        // Inside the create's span, which names the sandbox.
        assert!(batch.contains("podnet.create{sandbox=web}"), "{batch}");
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn nothing_is_written_at_a_level_podnet_has_no_events_for() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    in_netns(|ctx| async move {
        let net = common::build_network(&ctx.state, "pn0", "10.88.0.0/16")
            .await
            .unwrap();
        let (out, _guard) = capture(tracing::Level::ERROR);
        let pod = net.sandbox("quiet").create().await.unwrap();
        pod.remove().await.unwrap();
        net.gc().await.unwrap();
        assert_eq!(out.text(), "");
        net.remove().await.unwrap();
    });
}
