//! The files that make pods use the network's DNS without configuration:
//! the resolv.conf and /etc/hosts that commands and pod members see in a
//! mount namespace of their own, and the real resolvers (glibc's `getent`,
//! Python, curl) that read them. The host's files are only ever read.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{in_netns, network, network_builder, Ctx, BRIDGE, SUBNET};
use podnet::{Member, Network, Output, Sandbox};

/// What `program args` prints in `sandbox`; the test fails if it fails.
async fn stdout_of(sandbox: &Sandbox, program: &str, args: &[&str]) -> String {
    let out = sandbox.command(program).args(args).output().await.unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The addresses `getent <database> <name>` prints in `sandbox`.
async fn getent(sandbox: &Sandbox, database: &str, name: &str) -> Vec<IpAddr> {
    let out = stdout_of(sandbox, "getent", &[database, name]).await;
    let mut addrs: Vec<IpAddr> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// A member that sleeps until the pod is removed.
fn sleeper() -> Member {
    Member::new("sleep", "sleep").arg("infinity")
}

fn host_file(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

async fn dual_stack(ctx: &Ctx) -> Network {
    network_builder(&ctx.state, BRIDGE, &[SUBNET, "fd00:88::/64"])
        .build()
        .await
        .unwrap()
}

#[test]
fn a_command_sees_a_resolv_conf_naming_the_network_dns_and_domain() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        let conf = stdout_of(&web, "cat", &["/etc/resolv.conf"]).await;
        let lines: Vec<&str> = conf.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines, ["search podnet.internal", "nameserver 10.88.0.1"]);
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_command_sees_localhost_and_its_own_name_in_etc_hosts() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        assert_eq!(
            getent(&web, "ahostsv4", "localhost").await,
            ["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        let hosts = stdout_of(&web, "cat", &["/etc/hosts"]).await;
        assert!(
            hosts.contains(&format!("{}\tweb.podnet.internal web\n", web.ip())),
            "{hosts}"
        );
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

/// Run a command in a sandbox and start a pod; the host's resolv.conf and
/// /etc/hosts read the same before and after.
async fn commands_and_pods_leave_the_host_files_alone(ctx: Ctx) {
    let before = (host_file("/etc/resolv.conf"), host_file("/etc/hosts"));
    let net = network(&ctx).await;
    let web = net.sandbox("web").create().await.unwrap();
    stdout_of(&web, "cat", &["/etc/resolv.conf"]).await;
    let pod = net.pod("db").member(sleeper()).start().await.unwrap();
    assert_eq!(
        (host_file("/etc/resolv.conf"), host_file("/etc/hosts")),
        before
    );
    pod.remove().await.unwrap();
    web.remove().await.unwrap();
    net.remove().await.unwrap();
}

#[test]
fn the_host_files_stay_as_they_were() {
    in_netns(commands_and_pods_leave_the_host_files_alone);
}

/// Where the host's mounts are shared (systemd makes `/` shared), the
/// files mounted for commands and pods still stay out of the host's view.
/// The test runs itself again in a mount namespace of its own whose mounts
/// are made shared (`unshare --mount --propagation shared`), and checks
/// there.
#[test]
fn the_host_files_stay_as_they_were_where_mounts_are_shared() {
    const INSIDE: &str = "PODNET_TEST_SHARED_MOUNTS";
    if std::env::var_os(INSIDE).is_some() {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            mountinfo
                .lines()
                .any(|l| l.split_whitespace().nth(4) == Some("/") && l.contains(" shared:")),
            "/ is not shared here:\n{mountinfo}"
        );
        return in_netns(commands_and_pods_leave_the_host_files_alone);
    }
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "shared", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_host_files_stay_as_they_were_where_mounts_are_shared",
            "--nocapture",
        ])
        .env(INSIDE, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("unshare failed") {
        let why = format!("cannot make a mount namespace: {stderr}");
        assert_ne!(
            std::env::var("PODNET_REQUIRE_PRIV").as_deref(),
            Ok("1"),
            "PODNET_REQUIRE_PRIV=1 but {why}"
        );
        return eprintln!("SKIPPED: {why}");
    }
    assert!(
        out.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

#[test]
fn a_run_closure_sees_the_host_files() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        stdout_of(&web, "true", &[]).await;
        let inside = web
            .run(|| std::fs::read("/etc/resolv.conf").unwrap_or_default())
            .await
            .unwrap();
        assert_eq!(inside, host_file("/etc/resolv.conf"));
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn commands_on_a_network_without_dns_see_the_host_files() {
    in_netns(|ctx| async move {
        let net = network_builder(&ctx.state, BRIDGE, &[SUBNET])
            .dns(false)
            .build()
            .await
            .unwrap();
        let web = net.sandbox("web").create().await.unwrap();
        let conf = stdout_of(&web, "cat", &["/etc/resolv.conf"]).await;
        assert_eq!(conf.as_bytes(), host_file("/etc/resolv.conf"));
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn getent_resolves_another_pod_by_name_and_by_fqdn() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        let client = net.sandbox("client").create().await.unwrap();
        for name in ["web", "web.podnet.internal"] {
            assert_eq!(
                getent(&client, "ahostsv4", name).await,
                [web.ip()],
                "{name}"
            );
        }
        client.remove().await.unwrap();
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn getent_finds_the_aaaa_of_a_dual_stack_pod() {
    in_netns(|ctx| async move {
        let net = dual_stack(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        let client = net.sandbox("client").create().await.unwrap();
        let v6 = IpAddr::V6(web.ipv6().unwrap());
        assert_eq!(getent(&client, "ahostsv6", "web").await, [v6]);
        client.remove().await.unwrap();
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn getent_names_a_pod_from_its_address() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        let client = net.sandbox("client").create().await.unwrap();
        let out = stdout_of(&client, "getent", &["hosts", &web.ip().to_string()]).await;
        let name = out.split_whitespace().nth(1).unwrap_or_default();
        assert_eq!(name, "web.podnet.internal", "{out}");
        client.remove().await.unwrap();
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn getent_returns_both_pods_of_a_shared_alias() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let a = net.sandbox("a").alias("db").create().await.unwrap();
        let b = net.sandbox("b").alias("db").create().await.unwrap();
        let client = net.sandbox("client").create().await.unwrap();
        let mut both = vec![a.ip(), b.ip()];
        both.sort();
        assert_eq!(getent(&client, "ahostsv4", "db").await, both);
        for s in [client, b, a] {
            s.remove().await.unwrap();
        }
        net.remove().await.unwrap();
    });
}

#[test]
fn python_resolves_a_pod_by_name() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        let client = net.sandbox("client").create().await.unwrap();
        let out = stdout_of(
            &client,
            "python3",
            &["-c", "import socket; print(socket.gethostbyname('web'))"],
        )
        .await;
        assert_eq!(out.trim(), web.ip().to_string());
        client.remove().await.unwrap();
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

/// A pod `web` whose member serves HTTP on port 8000 with Python's
/// `http.server`, which looks its own address up when it binds.
async fn http_pod(net: &Network) -> podnet::Pod {
    let server = Member::new("http", "python3")
        .args(["-m", "http.server", "--bind", "0.0.0.0", "8000"])
        .current_dir("/")
        .stdout(Output::Null)
        .stderr(Output::Null);
    net.pod("web").member(server).start().await.unwrap()
}

/// curl `url` from `client` until it answers 200, for at most `within`;
/// how long that took.
async fn curl_until_ok(client: &Sandbox, url: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let out = client
            .command("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "1",
                url,
            ])
            .output()
            .await
            .unwrap();
        if out.stdout == b"200" {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{url} did not answer 200 within {within:?}: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn curl_reaches_a_pod_by_name() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let web = http_pod(&net).await;
        let client = net.sandbox("client").create().await.unwrap();
        curl_until_ok(&client, "http://web:8000/", Duration::from_secs(10)).await;
        curl_until_ok(
            &client,
            "http://web.podnet.internal:8000/",
            Duration::from_secs(1),
        )
        .await;
        client.remove().await.unwrap();
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

/// glibc waits 5 s for a nameserver that does not answer (`timeout:5`),
/// which is what `http.server` met when pods had no DNS: it now answers
/// well before a single such timeout.
#[test]
fn python_http_server_in_a_pod_answers_before_a_resolver_timeout() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let client = net.sandbox("client").create().await.unwrap();
        let start = Instant::now();
        let web = http_pod(&net).await;
        let url = format!("http://{}:8000/", web.ip());
        curl_until_ok(&client, &url, Duration::from_secs(4)).await;
        eprintln!(
            "http.server answered {:?} after the pod's start",
            start.elapsed()
        );
        client.remove().await.unwrap();
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_pod_member_sees_the_pod_name_and_its_hostname() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = net
            .pod("web")
            .hostname("frontend")
            .member(sleeper())
            .start()
            .await
            .unwrap();
        let out = pod.command("cat").arg("/etc/hosts").output().await.unwrap();
        let hosts = String::from_utf8(out.stdout).unwrap();
        assert!(
            hosts.contains(&format!("{}\tweb.podnet.internal web frontend\n", pod.ip())),
            "{hosts}"
        );
        let out = pod
            .command("getent")
            .args(["hosts", "frontend"])
            .output()
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(&pod.ip().to_string()));
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_command_after_inner_mut_sees_the_files_too() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        let mut cmd = web.command("cat");
        cmd.arg("/etc/hosts");
        cmd.inner_mut().env("UNUSED", "1");
        let out = cmd.output().await.unwrap();
        let hosts = String::from_utf8(out.stdout).unwrap();
        assert!(hosts.contains("web.podnet.internal"), "{hosts}");
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_command_starts_in_the_directory_it_was_given_or_the_callers() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        let here = std::env::current_dir().unwrap();
        let pwd = stdout_of(&web, "pwd", &[]).await;
        assert_eq!(pwd.trim(), here.to_str().unwrap());
        let pwd = web
            .command("pwd")
            .current_dir("/usr")
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&pwd.stdout).trim(), "/usr");
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

/// `uid()` still works: the child is spawned from a thread that has
/// joined both namespaces, with nothing to do between fork and exec. As
/// uid 65534 where it is mapped (as root on the host), else as our own.
#[test]
fn a_command_run_as_another_user_sees_the_files() {
    let all_mapped = std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().nth(2) == Some("4294967295"));
    let id = if all_mapped && nix::unistd::geteuid().is_root() {
        65534
    } else {
        nix::unistd::geteuid().as_raw()
    };
    in_netns(move |ctx| async move {
        let net = network(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        let out = web
            .command("sh")
            .args(["-c", "id -u; cat /etc/resolv.conf"])
            .uid(id)
            .gid(id)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.starts_with(&format!("{id}\n")), "{text}");
        assert!(text.contains("nameserver 10.88.0.1"), "{text}");
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn the_files_leave_nothing_in_the_store() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        let before = common::files_under(&common::store_dir(&ctx));
        stdout_of(&web, "cat", &["/etc/hosts"]).await;
        let pod = net.pod("db").member(sleeper()).start().await.unwrap();
        pod.remove().await.unwrap();
        let mut after = common::files_under(&common::store_dir(&ctx));
        after.retain(|p| !p.to_string_lossy().contains("/sandbox/db"));
        assert_eq!(after, before);
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_pod_whose_files_cannot_be_mounted_is_an_error_and_leaves_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let before = common::snapshot(&ctx.nl).await;
        common::refuse_on_this_thread(nix::libc::SYS_open_tree, nix::libc::EIO);
        let err = net.pod("db").member(sleeper()).start().await.unwrap_err();
        assert_eq!(err.errno(), Some(nix::errno::Errno::EIO), "{err}");
        assert_eq!(common::snapshot(&ctx.nl).await, before);
        let left = common::state_entries(&ctx, &["addr", "sandbox", "volumes"]);
        assert!(left.is_empty(), "{left:?}");
        assert!(net.sandboxes().await.unwrap().is_empty());
        net.remove().await.unwrap();
    });
}

#[test]
fn a_command_whose_files_cannot_be_mounted_never_starts() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        common::refuse_on_this_thread(nix::libc::SYS_open_tree, nix::libc::EIO);
        let mut cmd = web.command("true");
        cmd.inner_mut();
        let first = cmd.status().await.unwrap_err();
        assert_eq!(first.errno(), Some(nix::errno::Errno::EIO), "{first}");
        let second = cmd.status().await.unwrap_err();
        assert_eq!(second.errno(), Some(nix::errno::Errno::EIO), "{second}");
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_pod_member_with_a_volume_sees_the_files_and_the_volume() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let dir = ctx.state.with_extension("vol");
        std::fs::create_dir_all(&dir).unwrap();
        let script = format!(
            "grep -q 'nameserver 10.88.0.1' /etc/resolv.conf && getent hosts web > {}/out",
            dir.display()
        );
        let pod = net
            .pod("web")
            .restart_policy(podnet::RestartPolicy::Never)
            .volume(podnet::Volume::new("v"))
            .member(
                Member::new("m", "sh")
                    .args(["-c", &script])
                    .mount("v", &dir),
            )
            .start()
            .await
            .unwrap();
        assert_eq!(
            pod.wait().await,
            podnet::Phase::Succeeded,
            "{:#?}",
            pod.members()
        );
        let out = pod
            .command("cat")
            .arg(dir.join("out"))
            .output()
            .await
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&pod.ip().to_string()),
            "{out:?}"
        );
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
        std::fs::remove_dir(&dir).unwrap();
    });
}
