//! The sandbox core, end to end, each test in a namespace of its own.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use common::{in_netns, ports, Ctx};
use podnet::{Network, Phase};

async fn network(ctx: &Ctx, bridge: &str) -> Network {
    Network::builder(bridge)
        .subnet("10.88.0.0/16".parse().unwrap())
        .state_dir(&ctx.state)
        .build()
        .await
        .expect("build network")
}

#[test]
fn smoke_create_and_remove() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let pod = net.sandbox("web").create().await.expect("create");
        assert_eq!(pod.phase(), Phase::Running);
        assert_eq!(pod.ip().to_string(), "10.88.0.2");
        assert_eq!(ports(&ctx.nl, "pn0").await.len(), 1);
        let out = pod.command("cat").arg("/proc/net/route").output().await.unwrap();
        let routes = String::from_utf8_lossy(&out.stdout);
        assert!(routes.contains("eth0"), "{routes}");
        pod.remove().await.expect("remove");
        assert_eq!(pod.phase(), Phase::Succeeded);
        assert!(ports(&ctx.nl, "pn0").await.is_empty());
        net.remove().await.unwrap();
        assert!(common::files_under(&ctx.state).is_empty());
    });
}
