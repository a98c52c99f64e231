//! Per-peer limits and size caps: lockout after bad tokens (and only for that peer), the rate
//! limit, the CSR size cap and the gRPC message limit.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use basalt_config::RateLimit;
use basalt_pki::KeyAlgorithm;
use support::{Pki, TOKEN, Trustd, certificate, within_deadline, worker_csr};
use tonic::Code;
use trustd::RETRY_AFTER_METADATA;

fn csr() -> String {
    worker_csr("worker-1", &["worker-1"], KeyAlgorithm::Ed25519)
}

#[tokio::test]
async fn five_bad_tokens_lock_the_peer_out_even_with_a_good_token_but_not_other_peers() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        assert_eq!(trustd.config.rate_limit.lockout_after, 5);
        let mut attacker = trustd.client();
        for _ in 0..5 {
            let status = certificate(&mut attacker, csr(), Some("guess.0123456789abcdef"))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated);
        }
        // Now even the right token is refused from that address, on a new connection too.
        for mut client in [attacker, trustd.client()] {
            let status = certificate(&mut client, csr(), Some(TOKEN))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert_eq!(
                status.message(),
                "too many failed attempts from 127.0.0.1; retry after 60s"
            );
            let retry: u64 = status
                .metadata()
                .get(RETRY_AFTER_METADATA)
                .expect("retry metadata")
                .to_str()
                .expect("ascii")
                .parse()
                .expect("seconds");
            assert!((59..=60).contains(&retry), "{retry}");
        }
        // Another peer is not affected.
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        certificate(&mut trustd.client_from(other), csr(), Some(TOKEN))
            .await
            .expect("another peer still gets its certificate");
        let journal = trustd.journal();
        assert_eq!(journal.len(), 1);
        assert!(journal[0].peer.starts_with("127.0.0.2:"), "{journal:?}");
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_good_token_resets_the_count_of_bad_ones() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let mut client = trustd.client();
        for _ in 0..3 {
            for _ in 0..4 {
                let status = certificate(&mut client, csr(), Some("wrong"))
                    .await
                    .unwrap_err();
                assert_eq!(status.code(), Code::Unauthenticated);
            }
            certificate(&mut client, csr(), Some(TOKEN))
                .await
                .expect("four bad tokens in a row do not lock out");
        }
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn exceeding_the_rate_limit_is_resource_exhausted() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start_with(&pki, |config| {
            config.rate_limit = RateLimit {
                per_peer_per_minute: 3,
                ..RateLimit::default()
            };
        })
        .await;
        let mut client = trustd.client();
        for _ in 0..3 {
            certificate(&mut client, csr(), Some(TOKEN))
                .await
                .expect("within the limit");
        }
        let status = certificate(&mut client, csr(), Some(TOKEN))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().starts_with(
                "rate limit of 3 requests per minute exceeded for 127.0.0.1; retry after "
            ),
            "{}",
            status.message()
        );
        assert!(status.metadata().get(RETRY_AFTER_METADATA).is_some());
        // Requests without a valid token use the budget too, and are refused the same way.
        let status = certificate(&mut client, csr(), None).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        // Another peer has its own budget.
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        certificate(&mut trustd.client_from(other), csr(), Some(TOKEN))
            .await
            .expect("another peer");
        assert_eq!(trustd.journal().len(), 4);
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn oversize_csr_is_invalid_argument_before_parsing() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start_with(&pki, |config| {
            config.policy.max_csr_bytes = 2048;
        })
        .await;
        let mut client = trustd.client();
        // Not even PEM: the size is what gets it refused, not its contents.
        let status = certificate(&mut client, vec![b'A'; 2049], Some(TOKEN))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "CSR is 2049 bytes, more than the limit of 2048"
        );
        // Far beyond the cap, tonic's message limit refuses it before it is buffered.
        let status = certificate(&mut client, vec![b'A'; 1 << 20], Some(TOKEN))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        // trustd keeps serving.
        certificate(&mut client, csr(), Some(TOKEN))
            .await
            .expect("a normal CSR afterwards");
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn lockout_ends_after_its_duration() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start_with(&pki, |config| {
            config.rate_limit = RateLimit {
                lockout_after: 1,
                lockout_for: Duration::from_secs(1),
                ..RateLimit::default()
            };
        })
        .await;
        let mut client = trustd.client();
        let status = certificate(&mut client, csr(), Some("wrong"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let status = certificate(&mut client, csr(), Some(TOKEN))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        // The one place a test waits: the lockout is defined in wall-clock time.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        certificate(&mut client, csr(), Some(TOKEN))
            .await
            .expect("lockout over");
        trustd.stop().await;
    })
    .await;
}

/// The `n`th of the distinct loopback sources from 127.1.0.1 on: all of 127/8 is local on
/// Linux, so a client can bind any of them without configuring an address.
fn nth_peer(n: usize) -> IpAddr {
    let n = u32::try_from(n).expect("a small n") + 1;
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + n))
}

/// docs/SECURITY.md #43's bound, with real sockets: the peer table holds `MAX_TRACKED_PEERS`
/// peers without dropping one that has state; past that, the least recently seen goes. A
/// locked-out peer that keeps trying stays fresh, so it stays locked out; an idle one ages out
/// once that many other addresses have called since (the price of a bounded table, as the
/// limiter's docs say).
#[tokio::test]
async fn the_peer_table_holds_its_bound_then_drops_the_least_recently_seen() {
    // 4,100 handshakes against a debug trustd: longer than the usual deadline.
    tokio::time::timeout(Duration::from_secs(120), async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let guess = Some("guess.0123456789abcdef");
        let request = csr();
        let bad_token_from = |source: IpAddr| {
            let mut client = trustd.client_from(source);
            let request = request.clone();
            async move {
                let status = certificate(&mut client, request, guess)
                    .await
                    .err()
                    .unwrap_or_else(|| panic!("{source}: a bad token was accepted"));
                assert_eq!(status.code(), Code::Unauthenticated, "{source}: {status:?}");
            }
        };
        let locked = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        for _ in 0..5 {
            bad_token_from(locked).await;
        }

        // One bad token from each of as many other peers as fills the table exactly: every
        // entry has state (a failure or the lockout), so none may be dropped.
        let others: Vec<usize> = (0..trustd::MAX_TRACKED_PEERS - 1).collect();
        for batch in others.chunks(32) {
            let mut calls = tokio::task::JoinSet::new();
            for &n in batch {
                calls.spawn(bad_token_from(nth_peer(n)));
            }
            while let Some(call) = calls.join_next().await {
                call.expect("a call's task");
            }
        }
        let still_locked = |what: &'static str| {
            let mut client = trustd.client_from(locked);
            let request = request.clone();
            async move {
                let status = certificate(&mut client, request, Some(TOKEN))
                    .await
                    .err()
                    .unwrap_or_else(|| panic!("{what}: the locked-out peer got a certificate"));
                assert_eq!(status.code(), Code::ResourceExhausted, "{what}: {status:?}");
            }
        };
        still_locked("with the table full").await;

        // One peer more: the least recently seen entry goes. That is the first of the others
        // (the locked-out peer was just seen), so its one failure is forgotten: four more
        // bad tokens do not lock it out, and its good token is answered.
        bad_token_from(nth_peer(others.len())).await;
        let first = nth_peer(0);
        for _ in 0..4 {
            bad_token_from(first).await;
        }
        certificate(&mut trustd.client_from(first), request.clone(), Some(TOKEN))
            .await
            .expect("the first peer's earlier failure was dropped with its entry");
        still_locked("after the table dropped its oldest entries").await;
        assert_eq!(trustd.journal().len(), 1);
        trustd.stop().await;
    })
    .await
    .expect("test exceeded its deadline");
}
