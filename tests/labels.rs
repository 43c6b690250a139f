//! Sandboxes' labels (issue 16's vocabulary): given at create, kept in the
//! store for every process of the network, replaced whole at run time,
//! gone with the sandbox or by gc. In namespaces the tests make.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use common::{in_netns, Ctx};
use podnet::{Error, Labels, Network};

const BRIDGE: &str = "pnl0";

async fn network(ctx: &Ctx) -> Network {
    common::network_without_dns(ctx, BRIDGE).await
}

/// Sandbox "web" labelled app=web.
async fn web(net: &Network, persistent: bool) -> podnet::Sandbox {
    net.sandbox("web")
        .label("app", "web")
        .persistent(persistent)
        .create()
        .await
        .unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied()).unwrap()
}

/// The labels files of the test's store.
fn labels_files(ctx: &Ctx) -> Vec<std::path::PathBuf> {
    common::state_entries(ctx, &["labels"])
}

#[test]
fn a_sandbox_has_the_labels_it_was_made_with_in_every_listing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = net
            .sandbox("web")
            .label("app", "web")
            .label("tier", "front")
            .create()
            .await
            .unwrap();
        let want = labels(&[("app", "web"), ("tier", "front")]);
        assert_eq!(pod.labels().unwrap(), want);
        let listed = net.sandboxes().await.unwrap();
        assert_eq!(listed[0].labels, want);
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn set_labels_replaces_them_for_every_handle_of_the_network() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = web(&net, true).await;
        let other = network(&ctx).await;
        let seen = other.open_sandbox("web").await.unwrap();
        pod.set_labels(&labels(&[("app", "db")])).await.unwrap();
        assert_eq!(seen.labels().unwrap(), labels(&[("app", "db")]));
        drop(seen);
        drop(other);
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_bad_label_fails_create_and_makes_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let err = net
            .sandbox("web")
            .label("-bad", "x")
            .create()
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidName {
                    what: "label key",
                    ..
                }
            ),
            "{err}"
        );
        assert!(net.sandboxes().await.unwrap().is_empty());
        assert!(labels_files(&ctx).is_empty());
        net.remove().await.unwrap();
    });
}

#[test]
fn removing_a_sandbox_removes_its_labels() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = web(&net, false).await;
        assert_eq!(labels_files(&ctx).len(), 1);
        pod.remove().await.unwrap();
        assert!(labels_files(&ctx).is_empty());
        net.remove().await.unwrap();
    });
}

#[test]
fn gc_removes_the_labels_of_a_sandbox_whose_holder_died() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = web(&net, true).await;
        // Dead as gc sees it once it is a zombie (or reaped).
        common::sigkill(pod.holder_pid());
        let pid = i32::try_from(pod.holder_pid()).unwrap();
        common::eventually(
            "the holder dies",
            std::time::Duration::from_secs(5),
            async || common::proc_stat(pid).is_none_or(|(state, _)| state == 'Z'),
        )
        .await;
        net.gc().await.unwrap();
        assert!(labels_files(&ctx).is_empty());
        drop(pod);
        net.remove().await.unwrap();
    });
}

#[test]
fn set_labels_of_a_removed_sandbox_is_not_found() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = net.sandbox("web").create().await.unwrap();
        let same = net.open_sandbox("web").await.unwrap();
        pod.remove().await.unwrap();
        let err = same.set_labels(&labels(&[("app", "x")])).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert!(labels_files(&ctx).is_empty());
        drop(same);
        net.remove().await.unwrap();
    });
}
