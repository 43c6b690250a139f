//! The network's DNS: pods' names, aliases, reverse names, forwarding,
//! several serving processes, and what it refuses. Every query comes from
//! a sandbox (or the test's own host namespace) of the test's namespace;
//! the only upstream is the test's fake server on its own loopback.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    child_command, dns_addresses, dns_ask, dns_exchange, dns_query, in_netns, network_builder, Ctx,
    FakeUpstream, BRIDGE, SUBNET,
};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use podnet::{DnsUpstream, Network};

const GW: &str = "10.88.0.1";

fn gw() -> IpAddr {
    GW.parse().unwrap()
}

/// The test's network with no upstream, unless the test says otherwise.
async fn net_with(ctx: &Ctx, subnets: &[&str], upstream: DnsUpstream) -> Network {
    network_builder(&ctx.state, BRIDGE, subnets)
        .dns_upstream(upstream)
        .build()
        .await
        .unwrap()
}

async fn net(ctx: &Ctx) -> Network {
    net_with(ctx, &[SUBNET], DnsUpstream::None).await
}

/// A fake upstream at 127.0.0.53 (a loopback stub, as systemd-resolved's),
/// named by a resolv.conf in the test's state directory.
fn stub(ctx: &Ctx) -> (FakeUpstream, DnsUpstream) {
    let fake = FakeUpstream::start("127.0.0.53:53".parse().unwrap());
    std::fs::create_dir_all(&ctx.state).unwrap();
    let conf = ctx.state.join("resolv.conf");
    std::fs::write(&conf, "nameserver 127.0.0.53\noptions edns0\n").unwrap();
    (fake, DnsUpstream::ResolvConf(conf))
}

fn code(m: &Option<Message>) -> Option<ResponseCode> {
    m.as_ref().map(|m| m.metadata.response_code)
}

#[test]
fn a_pod_resolves_another_by_name_and_by_fqdn() {
    in_netns(|ctx| async move {
        let net = net(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        let client = net.sandbox("client").create().await.unwrap();
        for name in ["web", "web.podnet.internal", "WEB.podnet.internal."] {
            let got = dns_ask(&client, gw(), name, RecordType::A).await.unwrap();
            assert_eq!(got.metadata.response_code, ResponseCode::NoError, "{name}");
            assert_eq!(dns_addresses(&got), [web.ip()], "{name}");
        }
        client.remove().await.unwrap();
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_dual_stack_pod_has_aaaa_and_its_addresses_have_pointers() {
    in_netns(|ctx| async move {
        let net = net_with(&ctx, &[SUBNET, "fd00:88::/64"], DnsUpstream::None).await;
        let web = net.sandbox("web").create().await.unwrap();
        let client = net.sandbox("client").create().await.unwrap();
        let v6 = web.ipv6().unwrap();
        let got = dns_ask(&client, gw(), "web", RecordType::AAAA)
            .await
            .unwrap();
        assert_eq!(dns_addresses(&got), [IpAddr::V6(v6)]);
        // Over the IPv6 gateway too.
        let gw6: IpAddr = "fd00:88::1".parse().unwrap();
        let got = dns_ask(&client, gw6, "web", RecordType::A).await.unwrap();
        assert_eq!(dns_addresses(&got), [web.ip()]);
        let IpAddr::V4(v4) = web.ip() else { panic!() };
        let [a, b, c, d] = v4.octets();
        let ptr = format!("{d}.{c}.{b}.{a}.in-addr.arpa");
        let got = dns_ask(&client, gw(), &ptr, RecordType::PTR).await.unwrap();
        let names: Vec<String> = got
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_ascii()),
                _ => None,
            })
            .collect();
        assert_eq!(names, ["web.podnet.internal."]);
        // An address of the pool that nobody has: NXDOMAIN.
        let got = dns_ask(&client, gw(), "200.0.88.10.in-addr.arpa", RecordType::PTR).await;
        assert_eq!(code(&got), Some(ResponseCode::NXDomain));
        client.remove().await.unwrap();
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn an_alias_shared_by_two_pods_returns_both_in_turn() {
    in_netns(|ctx| async move {
        let net = net(&ctx).await;
        let a = net.sandbox("a").alias("db").create().await.unwrap();
        let b = net.sandbox("b").alias("db").create().await.unwrap();
        let client = net.sandbox("client").create().await.unwrap();
        let first = dns_addresses(&dns_ask(&client, gw(), "db", RecordType::A).await.unwrap());
        let second = dns_addresses(&dns_ask(&client, gw(), "db", RecordType::A).await.unwrap());
        let mut sorted = first.clone();
        sorted.sort();
        let mut want = vec![a.ip(), b.ip()];
        want.sort();
        assert_eq!(sorted, want);
        assert_eq!(second, [first[1], first[0]], "the order turns");
        assert_eq!(net.resolve("db.podnet.internal").unwrap().len(), 2);
        for s in [client, b, a] {
            s.remove().await.unwrap();
        }
        net.remove().await.unwrap();
    });
}

#[test]
fn a_bad_alias_is_refused_before_anything_is_made() {
    in_netns(|ctx| async move {
        let net = net(&ctx).await;
        let err = net
            .sandbox("a")
            .alias("Bad_Name")
            .create()
            .await
            .unwrap_err();
        assert!(matches!(err, podnet::Error::InvalidName { .. }), "{err}");
        assert!(net.sandboxes().await.unwrap().is_empty());
        net.remove().await.unwrap();
    });
}

#[test]
fn a_removed_sandbox_is_nxdomain_as_soon_as_remove_returns() {
    in_netns(|ctx| async move {
        let net = net(&ctx).await;
        let client = net.sandbox("client").create().await.unwrap();
        for _ in 0..5 {
            let web = net.sandbox("web").create().await.unwrap();
            let got = dns_ask(&client, gw(), "web", RecordType::A).await;
            assert_eq!(dns_addresses(&got.unwrap()), [web.ip()]);
            web.remove().await.unwrap();
            let got = dns_ask(&client, gw(), "web.podnet.internal", RecordType::A).await;
            assert_eq!(code(&got), Some(ResponseCode::NXDomain));
            assert!(net.resolve("web").is_err());
        }
        client.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_killed_holders_name_is_nxdomain_once_it_has_died() {
    in_netns(|ctx| async move {
        let net = net(&ctx).await;
        let client = net.sandbox("client").create().await.unwrap();
        let web = net.sandbox("web").create().await.unwrap();
        assert!(net.resolve("web").is_ok());
        let pid = web.holder_pid();
        common::sigkill(pid);
        let took = common::eventually(
            "the dead holder's name is gone",
            Duration::from_secs(2),
            async || {
                code(&dns_ask(&client, gw(), "web.podnet.internal", RecordType::A).await)
                    == Some(ResponseCode::NXDomain)
            },
        )
        .await;
        eprintln!("NXDOMAIN {took:?} after SIGKILL");
        net.gc().await.unwrap();
        client.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_sandbox_made_by_another_process_resolves_until_it_goes() {
    in_netns(|ctx| async move {
        let net = net(&ctx).await;
        let client = net.sandbox("client").create().await.unwrap();
        let (mut other, line) = common::spawn_until(
            child_command(&ctx, "create-and-wait theirs").stdin(Stdio::piped()),
            "ip=",
            Duration::from_secs(60),
        );
        let ip: IpAddr = line.split("ip=").nth(1).unwrap().trim().parse().unwrap();
        let got = dns_ask(&client, gw(), "theirs", RecordType::A)
            .await
            .unwrap();
        assert_eq!(dns_addresses(&got), [ip]);
        drop(other.stdin.take()); // the child removes it and exits
        assert!(other.wait().unwrap().success());
        let got = dns_ask(&client, gw(), "theirs.podnet.internal", RecordType::A).await;
        assert_eq!(code(&got), Some(ResponseCode::NXDomain));
        client.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn another_process_keeps_answering_when_one_is_killed() {
    in_netns(|ctx| async move {
        let net = net(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        let client = net.sandbox("client").create().await.unwrap();
        let (mut server, _) = common::spawn_until(
            child_command(&ctx, "serve").stdin(Stdio::piped()),
            "serving",
            Duration::from_secs(60),
        );
        // This process stops serving: the child answers alone.
        drop(net);
        let answered = async |n: usize| {
            let mut ok = 0;
            for _ in 0..n {
                let got = dns_ask(&client, gw(), "web", RecordType::A).await;
                ok += usize::from(got.is_some_and(|m| dns_addresses(&m) == [web.ip()]));
            }
            ok
        };
        assert_eq!(answered(50).await, 50, "the other process answers");
        // A new server here, then the child dies: this one answers alone.
        let net = common::build_network(&ctx.state, BRIDGE, SUBNET)
            .await
            .unwrap();
        server.kill().unwrap();
        server.wait().unwrap();
        assert_eq!(
            answered(50).await,
            50,
            "this process answers after the other died"
        );
        client.remove().await.unwrap();
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn other_names_go_to_a_loopback_stub_over_udp_and_tcp_with_edns() {
    in_netns(|ctx| async move {
        let (fake, upstream) = stub(&ctx);
        let net = net_with(&ctx, &[SUBNET], upstream).await;
        let client = net.sandbox("client").create().await.unwrap();
        let got = dns_ask(&client, gw(), "example.test", RecordType::A)
            .await
            .unwrap();
        assert_eq!(
            dns_addresses(&got),
            ["198.18.0.99".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            fake.seen.lock().unwrap().last().unwrap(),
            &("example.test".into(), false)
        );
        let q = dns_query("edns.test", RecordType::A, true);
        let got = client
            .run(move || dns_exchange(gw(), &q, Duration::from_secs(1)))
            .await
            .unwrap();
        assert!(got.unwrap().edns.is_some(), "EDNS comes back");
        assert_eq!(
            fake.seen.lock().unwrap().last().unwrap(),
            &("edns.test".into(), true)
        );
        let got = tcp_ask(&client, "tcp.test").await.unwrap();
        assert_eq!(
            dns_addresses(&got),
            ["198.18.0.99".parse::<IpAddr>().unwrap()]
        );
        // At least once: under load the server may ask again after its
        // per-try timeout.
        assert!(fake.count("tcp.test") >= 1);
        client.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_truncated_answer_reaches_the_client_which_gets_it_whole_over_tcp() {
    in_netns(|ctx| async move {
        let (_fake, upstream) = stub(&ctx);
        let net = net_with(&ctx, &[SUBNET], upstream).await;
        let client = net.sandbox("client").create().await.unwrap();
        let got = dns_ask(&client, gw(), "big.test", RecordType::A)
            .await
            .unwrap();
        assert!(got.metadata.truncation);
        let got = tcp_ask(&client, "big.test").await.unwrap();
        assert_eq!(dns_addresses(&got).len(), 100);
        client.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_local_answer_too_big_for_udp_is_truncated_and_whole_over_tcp() {
    in_netns(|ctx| async move {
        let net = net(&ctx).await;
        let mut pods = Vec::new();
        for i in 0..40 {
            pods.push(
                net.sandbox(format!("p{i}"))
                    .alias("many")
                    .create()
                    .await
                    .unwrap(),
            );
        }
        let got = dns_ask(&pods[0], gw(), "many", RecordType::A)
            .await
            .unwrap();
        assert!(got.metadata.truncation, "40 answers do not fit 512 bytes");
        let got = tcp_ask(&pods[0], "many").await.unwrap();
        assert_eq!(dns_addresses(&got).len(), 40);
        for p in pods {
            p.remove().await.unwrap();
        }
        net.remove().await.unwrap();
    });
}

#[test]
fn without_upstream_other_names_are_refused_at_once() {
    in_netns(|ctx| async move {
        let net = net(&ctx).await;
        let client = net.sandbox("client").create().await.unwrap();
        let t = Instant::now();
        let got = dns_ask(&client, gw(), "example.test", RecordType::A).await;
        let took = t.elapsed();
        assert_eq!(code(&got), Some(ResponseCode::Refused));
        assert!(took < Duration::from_millis(100), "{took:?}");
        client.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn an_upstream_that_is_not_there_or_silent_is_servfail_before_the_client_gives_up() {
    in_netns(|ctx| async move {
        let (_fake, upstream) = stub(&ctx);
        // 127.0.0.54: nothing listens. The ICMP port unreachable ends the
        // wait at once, unless the kernel's ICMP rate limit drops it; then
        // the server's per-try timeout (1 s) does.
        let conf = ctx.state.join("down.conf");
        std::fs::write(&conf, "nameserver 127.0.0.54\n").unwrap();
        let down = network_builder(&ctx.state, "pn1", &["198.19.0.0/16"])
            .dns_upstream(DnsUpstream::ResolvConf(conf))
            .build()
            .await
            .unwrap();
        let net = net_with(&ctx, &[SUBNET], upstream).await;
        let c1 = down.sandbox("c1").create().await.unwrap();
        let t = Instant::now();
        let got = dns_ask(
            &c1,
            "198.19.0.1".parse().unwrap(),
            "example.test",
            RecordType::A,
        )
        .await;
        assert_eq!(code(&got), Some(ResponseCode::ServFail));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let c2 = net.sandbox("c2").create().await.unwrap();
        let q = dns_query("x.slow.test", RecordType::A, false);
        let t = Instant::now();
        let got = c2
            .run(move || dns_exchange(gw(), &q, Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(code(&got), Some(ResponseCode::ServFail));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        c1.remove().await.unwrap();
        c2.remove().await.unwrap();
        down.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_query_from_outside_the_pods_is_refused() {
    in_netns(|ctx| async move {
        let net = net(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        // From the host namespace: its own address on the bridge.
        let got = dns_exchange(
            gw(),
            &dns_query("web", RecordType::A, false),
            Duration::from_secs(1),
        );
        assert_eq!(code(&got), Some(ResponseCode::Refused));
        // From another address of the host namespace.
        let out = std::process::Command::new("ip")
            .args(["addr", "add", "198.18.0.7/32", "dev", "lo"])
            .status()
            .unwrap();
        assert!(out.success());
        let sock = std::net::UdpSocket::bind("198.18.0.7:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        sock.send_to(&dns_query("web", RecordType::A, false), (gw(), 53))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        let got = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(got.metadata.response_code, ResponseCode::Refused);
        assert!(got.answers.is_empty());
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn garbage_packets_are_dropped_or_formerr_and_the_server_goes_on() {
    in_netns(|ctx| async move {
        let net = net(&ctx).await;
        let web = net.sandbox("web").create().await.unwrap();
        let got = web
            .run(move || {
                let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut seed = 0x9e37_79b9_7f4a_7c15u64;
                let mut codes = Vec::new();
                for i in 0..2000usize {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let len = usize::try_from(seed % 600).unwrap();
                    let mut p: Vec<u8> = (0..len)
                        .map(|j| (seed >> (j % 57)).to_le_bytes()[0])
                        .collect();
                    if i % 3 == 0 && p.len() > 12 {
                        p[2] &= 0x7f; // a query, not a response
                    }
                    sock.send_to(&p, (gw(), 53)).unwrap();
                }
                let mut buf = [0u8; 2048];
                while let Ok(n) = sock.recv(&mut buf) {
                    if let Ok(m) = Message::from_vec(&buf[..n]) {
                        codes.push(m.metadata.response_code);
                    }
                }
                codes
            })
            .await
            .unwrap();
        assert!(!got.is_empty(), "some garbage is answered (FORMERR)");
        let ok = dns_ask(&web, gw(), "web", RecordType::A).await.unwrap();
        assert_eq!(dns_addresses(&ok), [web.ip()], "still answering");
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_flood_of_forwarded_queries_from_one_pod_leaves_room_for_the_others() {
    in_netns(|ctx| async move {
        let (_fake, upstream) = stub(&ctx);
        let net = net_with(&ctx, &[SUBNET], upstream).await;
        let flooder = net.sandbox("flooder").create().await.unwrap();
        let other = net.sandbox("other").create().await.unwrap();
        // 2,000 queries the upstream never answers: more than the table.
        flooder
            .run(|| {
                let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                for i in 0..2000 {
                    let q = dns_query(&format!("q{i}.slow.test"), RecordType::A, false);
                    sock.send_to(&q, (gw(), 53)).unwrap();
                }
            })
            .await
            .unwrap();
        let got = dns_ask(&other, gw(), "fine.test", RecordType::A).await;
        assert_eq!(code(&got), Some(ResponseCode::NoError));
        flooder.remove().await.unwrap();
        other.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_burst_from_several_pods_is_answered_right_each_from_the_gateway_asked() {
    in_netns(|ctx| async move {
        let net = net_with(&ctx, &[SUBNET, "fd00:88::/64"], DnsUpstream::None).await;
        let mut named = Vec::new();
        for i in 0..6 {
            named.push(net.sandbox(format!("p{i}")).create().await.unwrap());
        }
        // What each query must get: (name, type, the addresses).
        let mut asks: Vec<(String, RecordType, Vec<IpAddr>)> = Vec::new();
        for p in &named {
            let v4 = vec![p.ip()];
            let v6 = vec![IpAddr::V6(p.ipv6().unwrap())];
            asks.push((p.name().to_owned(), RecordType::A, v4.clone()));
            asks.push((format!("{}.podnet.internal", p.name()), RecordType::A, v4));
            asks.push((p.name().to_owned(), RecordType::AAAA, v6));
        }
        let asks = std::sync::Arc::new(asks);
        let gateways: Vec<IpAddr> = vec![gw(), "fd00:88::1".parse().unwrap()];
        const CLIENTS: usize = 3;
        let start = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            clients.push(net.sandbox(format!("c{i}")).create().await.unwrap());
        }
        let runs = clients.iter().map(|c| {
            let (asks, gateways, start) = (asks.clone(), gateways.clone(), start.clone());
            c.run(move || burst(&asks, &gateways, &start))
        });
        let results = futures::future::join_all(runs).await;
        for (c, r) in clients.iter().zip(results) {
            let problems = r.unwrap();
            assert!(problems.is_empty(), "{}: {problems:#?}", c.name());
        }
        for s in clients.into_iter().chain(named) {
            s.remove().await.unwrap();
        }
        net.remove().await.unwrap();
    });
}

/// Send every query of `asks` to each of `gateways` back to back, and one
/// that does not parse, then read the answers; again for those with no
/// answer, up to four times. What was wrong, or missing at the end.
fn burst(
    asks: &[(String, RecordType, Vec<IpAddr>)],
    gateways: &[IpAddr],
    start: &std::sync::Barrier,
) -> Vec<String> {
    // The one that does not parse: nine questions in the header, one there.
    const BROKEN: u16 = 0xbad;
    let mut problems = Vec::new();
    let socks: Vec<std::net::UdpSocket> = gateways
        .iter()
        .map(|g| {
            let any: IpAddr = if g.is_ipv4() {
                "0.0.0.0".parse().unwrap()
            } else {
                "::".parse().unwrap()
            };
            let s = std::net::UdpSocket::bind((any, 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            s
        })
        .collect();
    // Per gateway: the IDs still unanswered (an ask's index; BROKEN).
    let mut open: Vec<Vec<u16>> = gateways
        .iter()
        .map(|_| {
            (0..u16::try_from(asks.len()).unwrap())
                .chain([BROKEN])
                .collect()
        })
        .collect();
    start.wait();
    for _ in 0..4 {
        for ((sock, gw), ids) in socks.iter().zip(gateways).zip(&open) {
            for &id in ids {
                let mut q = if id == BROKEN {
                    let mut q = dns_query("p0", RecordType::A, false);
                    q[5] = 9;
                    q
                } else {
                    let (name, qtype, _) = &asks[usize::from(id)];
                    dns_query(name, *qtype, false)
                };
                q[..2].copy_from_slice(&id.to_be_bytes());
                sock.send_to(&q, (*gw, 53)).unwrap();
            }
        }
        for ((sock, gw), ids) in socks.iter().zip(gateways).zip(&mut open) {
            let mut buf = [0u8; 2048];
            while !ids.is_empty() {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    break;
                };
                if from != SocketAddr::new(*gw, 53) {
                    problems.push(format!("an answer to {gw} came from {from}"));
                }
                let m = Message::from_vec(&buf[..n]).unwrap();
                let id = m.metadata.id;
                let Some(at) = ids.iter().position(|&x| x == id) else {
                    continue; // answered already (a retry's twin)
                };
                ids.swap_remove(at);
                let code = m.metadata.response_code;
                if id == BROKEN {
                    if code != ResponseCode::FormErr {
                        problems.push(format!("{gw}: the broken query got {code:?}"));
                    }
                    continue;
                }
                let (name, qtype, want) = &asks[usize::from(id)];
                let asked = m.queries.first().map(|q| q.name().to_ascii());
                if code != ResponseCode::NoError
                    || dns_addresses(&m) != *want
                    || asked.as_deref() != Some(&format!("{name}."))
                {
                    problems.push(format!(
                        "{gw}: {name} {qtype}: {code:?} {asked:?} {:?}, not {want:?}",
                        dns_addresses(&m)
                    ));
                }
            }
        }
        if open.iter().all(Vec::is_empty) {
            break;
        }
    }
    for (gw, ids) in gateways.iter().zip(&open) {
        if !ids.is_empty() {
            problems.push(format!("{gw}: no answer to {} queries", ids.len()));
        }
    }
    problems
}

/// Ask over TCP from inside `pod`.
async fn tcp_ask(pod: &podnet::Sandbox, name: &str) -> Option<Message> {
    let q = dns_query(name, RecordType::A, false);
    pod.run(move || {
        let mut c = std::net::TcpStream::connect(SocketAddr::new(gw(), 53)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut out = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
        out.extend(&q);
        c.write_all(&out).ok()?;
        let mut len = [0u8; 2];
        c.read_exact(&mut len).ok()?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        c.read_exact(&mut buf).ok()?;
        Message::from_vec(&buf).ok()
    })
    .await
    .unwrap()
}

/// This binary run as another process of the network (see
/// `common::child_command`).
#[test]
#[ignore = "run by the tests above as a child process"]
fn child_process() {
    common::child_main(|state, action| async move {
        let net = network_builder(&state, BRIDGE, &[SUBNET])
            .dns_upstream(DnsUpstream::None)
            .build()
            .await
            .unwrap();
        let wait_for_stdin = || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        };
        match action.split_whitespace().collect::<Vec<_>>()[..] {
            ["create-and-wait", name] => {
                let pod = net.sandbox(name).create().await.unwrap();
                println!("holder={} ip={}", pod.holder_pid(), pod.ip());
                std::io::stdout().flush().unwrap();
                wait_for_stdin();
                pod.remove().await.unwrap();
            }
            ["serve"] => {
                println!("serving");
                std::io::stdout().flush().unwrap();
                wait_for_stdin();
            }
            _ => panic!("unknown action {action:?}"),
        }
    });
}
