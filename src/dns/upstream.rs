//! Where forwarded queries go: the servers of a resolv.conf (re-read when
//! the file changes, as glibc does), a fixed list, or none; never the
//! network's own gateways (that would loop).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::DnsUpstream;

/// glibc reads at most this many `nameserver` lines (MAXNS).
const MAX_SERVERS: usize = 3;

/// The upstream servers, as of the last look at their source.
#[derive(Debug)]
pub(crate) struct Upstreams {
    source: Source,
    servers: Vec<SocketAddr>,
    /// Addresses never forwarded to: the network's gateways.
    own: Vec<IpAddr>,
}

#[derive(Debug)]
enum Source {
    File {
        path: PathBuf,
        /// What the file was when last read: (dev, ino, mtime ns, size).
        seen: Option<(u64, u64, i128, u64)>,
    },
    Fixed,
    None,
}

impl Upstreams {
    pub(crate) fn new(upstream: &DnsUpstream, own: Vec<IpAddr>) -> Upstreams {
        let (source, servers) = match upstream {
            DnsUpstream::HostResolvConf => (
                Source::File {
                    path: "/etc/resolv.conf".into(),
                    seen: None,
                },
                Vec::new(),
            ),
            DnsUpstream::ResolvConf(path) => (
                Source::File {
                    path: path.clone(),
                    seen: None,
                },
                Vec::new(),
            ),
            DnsUpstream::Servers(list) => (Source::Fixed, list.clone()),
            DnsUpstream::None => (Source::None, Vec::new()),
        };
        let mut up = Upstreams {
            source,
            servers,
            own,
        };
        up.servers.retain(|s| !up.own.contains(&s.ip()));
        up.refresh();
        up
    }

    /// Whether names are forwarded at all.
    pub(crate) fn forwarding(&self) -> bool {
        !matches!(self.source, Source::None)
    }

    /// The servers now: a resolv.conf is looked at (one `stat`) and read
    /// again if it changed.
    pub(crate) fn current(&mut self) -> Vec<SocketAddr> {
        self.refresh();
        self.servers.clone()
    }

    fn refresh(&mut self) {
        let Source::File { path, seen } = &mut self.source else {
            return;
        };
        let now = std::fs::metadata(&*path).ok().map(|m| {
            let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
            (m.dev(), m.ino(), mtime, m.size())
        });
        if now.is_some() && now == *seen {
            return;
        }
        *seen = now;
        let text = std::fs::read_to_string(&*path).unwrap_or_default();
        let mut servers = parse_resolv_conf(&text);
        servers.retain(|s| !self.own.contains(&s.ip()));
        tracing::debug!(path = %path.display(), ?servers, "dns: upstreams read");
        self.servers = servers;
    }
}

/// The `nameserver`s of a resolv.conf, port 53, at most three; with none,
/// the local host's, as glibc does (resolv.conf(5)).
pub(crate) fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // A zone index (`fe80::1%eth0`) names an interface of the host:
        // such a server is left out.
        let Some(Ok(addr)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        if out.len() < MAX_SERVERS {
            out.push(SocketAddr::new(addr, 53));
        }
    }
    if out.is_empty() {
        out.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
        out.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 53));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nameservers_are_read_in_order_and_the_rest_is_skipped() {
        let got = parse_resolv_conf(
            "# c\nsearch x\nnameserver 127.0.0.53\nnameserver   ::1\noptions edns0\n\
             nameserver fe80::1%eth0\nnameserver bogus\nnameserver 10.0.0.1\nnameserver 10.0.0.2\n",
        );
        let want: Vec<SocketAddr> = ["127.0.0.53:53", "[::1]:53", "10.0.0.1:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn no_nameserver_means_the_local_host_as_glibc_says() {
        assert_eq!(parse_resolv_conf("search a\n").len(), 2);
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let dir = std::env::temp_dir().join(format!("podnet-up-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(&path, "nameserver 198.18.0.1\n").unwrap();
        let mut up = Upstreams::new(&DnsUpstream::ResolvConf(path.clone()), vec![]);
        assert_eq!(up.current(), ["198.18.0.1:53".parse().unwrap()]);
        std::fs::write(&path, "nameserver 198.18.0.2\nnameserver 10.88.0.1\n").unwrap();
        let mut up2 = Upstreams::new(
            &DnsUpstream::ResolvConf(path.clone()),
            vec!["10.88.0.1".parse().unwrap()],
        );
        assert_eq!(up2.current(), ["198.18.0.2:53".parse().unwrap()]);
        // The same length and maybe the same mtime tick: the size differs.
        std::fs::write(&path, "nameserver 198.18.0.33\n").unwrap();
        assert_eq!(up.current(), ["198.18.0.33:53".parse().unwrap()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        #[test]
        fn any_text_parses_without_a_panic(text in "\\PC{0,200}") {
            prop_assert!(!parse_resolv_conf(&text).is_empty());
        }
    }
}
