//! trustd reloads its join tokens, issuing CA and accepted CA bundle when its files change
//! (machined rewrites them on token and CA rotation), and keeps the previous ones when a new
//! file is bad.

mod support;

use std::time::{Duration, SystemTime};

use basalt_config::{AcceptedToken, Token, TrustdConfig};
use basalt_pki::{CaOptions, CertificateAuthority, KeyAlgorithm};
use support::{
    Pki, RETIRED, TOKEN, Trustd, certificate, eventually, within_deadline, worker_csr, write_config,
};
use tonic::Code;

const NEW: &str = "newtok.0123456789abcdef";

fn token(text: &str, expires: Option<SystemTime>) -> AcceptedToken {
    AcceptedToken {
        token: Token::parse(text).expect("token"),
        expires,
    }
}

fn csr() -> String {
    worker_csr("worker-1", &["127.0.0.1"], KeyAlgorithm::Ed25519)
}

/// Rewrites the config file with `tokens` and waits until trustd has loaded it.
async fn swap_tokens(trustd: &Trustd, tokens: Vec<AcceptedToken>) -> TrustdConfig {
    let before = trustd.trust.reloaded();
    let mut config = trustd.config.clone();
    config.tokens = tokens;
    write_config(&trustd.config_path, &config);
    // The poll (once a second) picks the change up by itself.
    eventually("the new tokens are loaded", || {
        trustd.trust.reloaded() > before
    })
    .await;
    config
}

async fn status_with(trustd: &Trustd, token: &str) -> Result<(), Code> {
    certificate(&mut trustd.client(), csr(), Some(token))
        .await
        .map(|_| ())
        .map_err(|status| status.code())
}

#[tokio::test]
async fn swapped_tokens_take_effect_without_a_restart() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        assert_eq!(status_with(&trustd, NEW).await, Err(Code::Unauthenticated));

        swap_tokens(&trustd, vec![token(NEW, None), token(RETIRED, None)]).await;
        assert_eq!(status_with(&trustd, NEW).await, Ok(()));
        assert_eq!(status_with(&trustd, RETIRED).await, Ok(()));
        // Removed from the file: refused from now on.
        assert_eq!(
            status_with(&trustd, TOKEN).await,
            Err(Code::Unauthenticated)
        );
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_retired_token_is_refused_once_its_expiry_passes() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let expires = SystemTime::now() + Duration::from_secs(2);
        swap_tokens(&trustd, vec![token(NEW, None), token(TOKEN, Some(expires))]).await;
        assert_eq!(status_with(&trustd, TOKEN).await, Ok(()));

        tokio::time::sleep_until(
            tokio::time::Instant::now()
                + expires
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                + Duration::from_millis(100),
        )
        .await;
        assert_eq!(
            status_with(&trustd, TOKEN).await,
            Err(Code::Unauthenticated)
        );
        assert_eq!(status_with(&trustd, NEW).await, Ok(()));

        // Already expired when written: refused at once.
        swap_tokens(
            &trustd,
            vec![
                token(NEW, None),
                token(RETIRED, Some(SystemTime::now() - Duration::from_secs(1))),
            ],
        )
        .await;
        assert_eq!(
            status_with(&trustd, RETIRED).await,
            Err(Code::Unauthenticated)
        );
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_file_keeps_the_previous_tokens_and_ca() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;

        std::fs::write(&trustd.config_path, "tokens: [{token: not a token}\n").expect("write");
        eventually("the bad config is refused", || trustd.trust.failed() >= 1).await;
        assert_eq!(trustd.trust.reloaded(), 0);
        assert_eq!(status_with(&trustd, TOKEN).await, Ok(()));
        assert_eq!(status_with(&trustd, NEW).await, Err(Code::Unauthenticated));

        // A CA key that does not match the certificate: still signing with the old CA.
        let other = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
        let failed = trustd.trust.failed();
        std::fs::write(&trustd.config.ca.key, other.key_pem()).expect("write key");
        eventually("the mismatched key is refused", || {
            trustd.trust.failed() > failed
        })
        .await;
        let issued = certificate(&mut trustd.client(), csr(), Some(TOKEN))
            .await
            .expect("still issuing");
        let crt = issued.into_inner().crt;
        let leaf = basalt_pki::certificates_from_pem(&crt).expect("pem");
        assert!(basalt_pki::is_issued_by(&leaf[0], pki.ca.cert_der()).expect("check"));

        // On-demand reloads report the problem too.
        assert!(trustd.trust.reload().await.is_err());
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_new_ca_signs_and_the_bundle_keeps_the_accepted_one() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let new_ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");

        // What machined does on rotation: new CA files, the old CA in the accepted bundle.
        let dir = trustd.dir.path();
        let mut config = trustd.config.clone();
        config.ca.cert = dir.join("ca-new.crt");
        config.ca.key = dir.join("ca-new.key");
        std::fs::write(&config.ca.key, new_ca.key_pem()).expect("write");
        std::fs::write(&config.ca.cert, new_ca.cert_pem()).expect("write");
        let accepted = dir.join("accepted.pem");
        std::fs::write(&accepted, pki.ca_pem()).expect("write");
        config.accepted_cas = Some(accepted);
        write_config(&trustd.config_path, &config);
        eventually("the new CA is loaded", || trustd.trust.reloaded() >= 1).await;

        let response = certificate(&mut trustd.client(), csr(), Some(TOKEN))
            .await
            .expect("issued")
            .into_inner();
        let leaf = basalt_pki::certificates_from_pem(&response.crt).expect("pem");
        assert!(basalt_pki::is_issued_by(&leaf[0], new_ca.cert_der()).expect("check"));
        let bundle = basalt_pki::certificates_from_pem(&response.ca).expect("bundle");
        assert_eq!(bundle.len(), 2);
        assert_eq!(&bundle[0][..], new_ca.cert_der());
        assert_eq!(&bundle[1][..], pki.ca.cert_der());
        trustd.stop().await;
    })
    .await;
}
