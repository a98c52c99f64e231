//! Token authentication: Talos's messages for missing and invalid tokens, rotation (a retired
//! token works until its expiry), and nothing journaled for a refused call.

mod support;

use basalt_pki::KeyAlgorithm;
use support::{
    EXPIRED, Pki, RETIRED, TOKEN, Trustd, certificate, request, within_deadline, worker_csr,
};
use tonic::Code;
use tonic::metadata::MetadataValue;

fn csr() -> String {
    worker_csr("worker-1", &["worker-1"], KeyAlgorithm::Ed25519)
}

#[tokio::test]
async fn missing_token_is_unauthenticated() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let status = certificate(&mut trustd.client(), csr(), None)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "missing token");
        assert!(trustd.journal().is_empty());
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn wrong_token_is_unauthenticated_and_nothing_is_journaled() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let mut client = trustd.client();
        for wrong in ["abcdef.0123456789abcdeX", "", "x", &"a".repeat(4000)] {
            let status = certificate(&mut client, csr(), Some(wrong))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{wrong:?}");
            assert_eq!(status.message(), "invalid token");
        }
        assert!(trustd.journal().is_empty());
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn retired_token_works_until_it_expires() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let mut client = trustd.client();
        certificate(&mut client, csr(), Some(RETIRED))
            .await
            .expect("retired but valid token");
        let status = certificate(&mut client, csr(), Some(EXPIRED))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        // An expired token reads exactly like an unknown one.
        assert_eq!(status.message(), "invalid token");
        let journal = trustd.journal();
        assert_eq!(journal.len(), 1);
        assert_eq!(journal[0].token, trustd::token_fingerprint(RETIRED));
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn only_the_first_token_value_counts() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let mut client = trustd.client();
        let mut wrong_first = request(csr(), Some("wrong"));
        wrong_first
            .metadata_mut()
            .append("token", MetadataValue::from_static(TOKEN));
        let status = client.certificate(wrong_first).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);

        let mut good_first = request(csr(), Some(TOKEN));
        good_first
            .metadata_mut()
            .append("token", MetadataValue::from_static("wrong"));
        client
            .certificate(good_first)
            .await
            .expect("first value is good");
        trustd.stop().await;
    })
    .await;
}
