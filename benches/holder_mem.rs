//! Memory of a holder: Rss, Pss and private kB from `/proc/PID/smaps_rollup`,
//! beside `sleep infinity` and (if `PAUSE_BIN` names a built
//! `benches/peers/pause.c`) a minimal pause holder, measured
//! in the same run; then again after the creating process has touched a
//! 1 GiB heap, to show the holder keeps none of it.
//!
//! ```text
//! gcc -O2 -o /tmp/pause benches/peers/pause.c   # optional
//! PAUSE_BIN=/tmp/pause cargo bench --bench holder_mem
//! ```
//! Runs in namespaces of its own (`rootless::enter_private`), leaves nothing.

use std::process::{Child, Command, ExitCode};

use podnet::Network;

fn main() -> ExitCode {
    if let Err(e) = podnet::rootless::enter_private() {
        eprintln!("holder_mem: {e}");
        return ExitCode::FAILURE;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let state = std::env::temp_dir().join(format!("podnet-bench-mem-{}", std::process::id()));
    let result = rt.block_on(async {
        let net = Network::builder("pnmem")
            .subnet("10.88.0.0/16".parse().expect("pool"))
            .state_dir(&state)
            .build()
            .await?;
        println!(
            "{:<44} {:>8} {:>8} {:>8}",
            "process", "Rss kB", "Pss kB", "Priv kB"
        );
        let mut others: Vec<(String, Child)> = vec![(
            "sleep infinity (coreutils)".into(),
            Command::new("sleep")
                .arg("infinity")
                .spawn()
                .expect("sleep"),
        )];
        if let Ok(pause) = std::env::var("PAUSE_BIN") {
            others.push((
                "pause.c (dynamic glibc)".into(),
                Command::new(pause).spawn().expect("pause"),
            ));
        }
        let a = net.sandbox("a").create().await?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        for (name, child) in &others {
            row(name, child.id());
        }
        row("podnet holder", a.holder_pid());
        // Grow this process by 1 GiB of touched memory, then make another.
        let heap: Vec<u8> = vec![1; 1 << 30];
        let b = net.sandbox("b").create().await?;
        row(
            "podnet holder, creator holding a 1 GiB heap",
            b.holder_pid(),
        );
        row("the creator itself", std::process::id());
        drop(heap);
        for (_, mut child) in others {
            let _ = child.kill();
            let _ = child.wait();
        }
        a.remove().await?;
        b.remove().await?;
        net.remove().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("holder_mem: {e}");
            ExitCode::FAILURE
        }
    }
}

fn row(name: &str, pid: u32) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |key: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(key))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    };
    println!(
        "{name:<44} {:>8} {:>8} {:>8}",
        field("Rss:"),
        field("Pss:"),
        field("Private_Clean:") + field("Private_Dirty:")
    );
}
