//! How trustd's per-peer limits key a peer, with real sockets (docs/SECURITY.md #43): an IPv6
//! peer is its /64, so a host cannot dodge a lockout by rotating through its own addresses, and
//! an IPv4 peer reaching a dual-stack listener (as `::ffff:a.b.c.d`) is its IPv4 address.
//!
//! Loopback has no /64 to rotate through, so the scenario runs in a network namespace this test
//! creates (`unshare --net`, which needs root), with addresses from the documentation prefix
//! 2001:db8::/32 on its own `lo`. The outer test re-runs this binary there for the inner one;
//! without `unshare` or the right to use it, the outer test says so and passes.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use basalt_api::securityapi::security_service_client::SecurityServiceClient;
use basalt_config::trustd::CertKeyFiles;
use basalt_pki::{KeyAlgorithm, ServerCertRequest, SubjectAltName};
use support::{Pki, TOKEN, Trustd, certificate, channel, within_deadline, worker_csr};
use tonic::Code;
use tonic::transport::Channel;

/// Set for the inner test by the outer one, inside the namespace.
const IN_NAMESPACE: &str = "BASALT_TRUSTD_NETNS";

/// The inner test's name, for the outer one to run it.
const INNER: &str = "inside_the_namespace_peers_are_keyed_by_64_and_mapped_ipv4";

/// trustd's address in the namespace.
const SERVER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);

/// Two addresses of one /64, and one of another.
const ATTACKER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const ATTACKER_ROTATED: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0xffff, 0, 0, 3);
const NEIGHBOUR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1);

#[test]
fn ipv6_peers_are_limited_per_64_and_mapped_ipv4_as_ipv4() {
    let probe = Command::new("unshare").args(["--net", "true"]).output();
    if !probe.as_ref().is_ok_and(|out| out.status.success()) {
        eprintln!("skipped: `unshare --net` is not available here ({probe:?})");
        return;
    }
    let mut setup = String::from("ip link set lo up");
    for addr in [SERVER, ATTACKER, ATTACKER_ROTATED, NEIGHBOUR] {
        setup.push_str(&format!(" && ip -6 addr add {addr}/64 dev lo nodad"));
    }
    let exe = std::env::current_exe().expect("this test binary");
    let out = Command::new("unshare")
        .args(["--net", "--", "sh", "-c"])
        .arg(format!("{setup} && exec \"$0\" \"$@\""))
        .arg(exe)
        .args(["--exact", INNER, "--ignored", "--nocapture"])
        .env(IN_NAMESPACE, "1")
        .output()
        .expect("run unshare");
    let text = format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the inner test ran: {text}"
    );
}

fn csr() -> String {
    worker_csr("worker-1", &["worker-1"], KeyAlgorithm::Ed25519)
}

fn client(trustd: SocketAddr, pki: &Pki, source: IpAddr) -> SecurityServiceClient<Channel> {
    SecurityServiceClient::new(channel(trustd, pki.ca_pem(), source))
}

/// Five bad tokens from `source`: the lockout threshold.
async fn lock_out(trustd: SocketAddr, pki: &Pki, source: IpAddr) {
    let mut attacker = client(trustd, pki, source);
    for _ in 0..5 {
        let status = certificate(&mut attacker, csr(), Some("guess.0123456789abcdef"))
            .await
            .expect_err("a bad token");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
}

/// A good token from `source` is refused because `key` is locked out.
async fn refused_as(trustd: SocketAddr, pki: &Pki, source: IpAddr, key: &str) {
    let status = certificate(&mut client(trustd, pki, source), csr(), Some(TOKEN))
        .await
        .expect_err("locked out");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        format!("too many failed attempts from {key}; retry after 60s")
    );
}

#[tokio::test]
#[ignore = "run inside a network namespace by ipv6_peers_are_limited_per_64_and_mapped_ipv4_as_ipv4"]
async fn inside_the_namespace_peers_are_keyed_by_64_and_mapped_ipv4() {
    if std::env::var_os(IN_NAMESPACE).is_none() {
        eprintln!("skipped: only meaningful inside the namespace the outer test makes");
        return;
    }
    within_deadline(async {
        let pki = Pki::new();
        // A dual-stack listener, and a server certificate for both ways of reaching it.
        let server = pki
            .ca
            .issue_server(&ServerCertRequest {
                common_name: Some("trustd".to_owned()),
                sans: vec![
                    SubjectAltName::Ip(IpAddr::V6(SERVER)),
                    SubjectAltName::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                ],
                ttl: Duration::from_secs(3600),
            })
            .expect("server cert");
        let files = support::short_tempdir();
        let (cert, key) = (files.path().join("dual.crt"), files.path().join("dual.key"));
        std::fs::write(&cert, &server.cert_pem).expect("write cert");
        std::fs::write(&key, &server.key_pem).expect("write key");
        let trustd = Trustd::start_with(&pki, |config| {
            config.listen = "[::]:0".parse().expect("addr");
            config.tls = CertKeyFiles { cert, key };
        })
        .await;
        let port = trustd.addr.port();
        let v6 = SocketAddr::new(IpAddr::V6(SERVER), port);
        let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);

        // Rotating to another address of the same /64 does not escape the lockout; another
        // /64 is another peer.
        lock_out(v6, &pki, IpAddr::V6(ATTACKER)).await;
        refused_as(v6, &pki, IpAddr::V6(ATTACKER_ROTATED), "2001:db8::/64").await;
        certificate(
            &mut client(v6, &pki, IpAddr::V6(NEIGHBOUR)),
            csr(),
            Some(TOKEN),
        )
        .await
        .expect("another /64 gets its certificate");

        // IPv4 arrives as ::ffff:127.0.0.2 and is keyed, and named, as 127.0.0.2.
        let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        lock_out(v4, &pki, attacker).await;
        refused_as(v4, &pki, attacker, "127.0.0.2").await;
        certificate(
            &mut client(v4, &pki, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))),
            csr(),
            Some(TOKEN),
        )
        .await
        .expect("another IPv4 address gets its certificate");

        let peers: Vec<String> = trustd.journal().into_iter().map(|r| r.peer).collect();
        assert_eq!(peers.len(), 2, "{peers:?}");
        assert!(peers[0].starts_with("[2001:db8:0:1::1]:"), "{peers:?}");
        assert!(peers[1].contains("127.0.0.3"), "{peers:?}");
        trustd.stop().await;
    })
    .await;
}
