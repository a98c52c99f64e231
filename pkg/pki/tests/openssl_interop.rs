//! Interoperability with the real `openssl` binary (OpenSSL 3): what basalt issues verifies
//! under openssl, and what openssl makes (CSRs, keys, a CA) basalt reads and signs.
//!
//! Everything is generated at test time in a temporary directory; no key is committed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use basalt_authz::RoleSet;
use basalt_pki::{
    CaOptions, CertificateAuthority, ClientCertRequest, Csr, Error, KeyAlgorithm, PrivateKey,
    ServerCertRequest, SigningPolicy,
};

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Runs openssl in `dir`, asserts success, and returns stdout followed by stderr.
fn openssl(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl binary is needed for these tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "openssl {args:?} failed:\n{text}");
    text
}

fn openssl_bytes(dir: &Path, args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl binary is needed for these tests");
    assert!(
        output.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) {
    std::fs::write(dir.join(name), contents).expect("write temp file");
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).expect("read temp file")
}

fn ca(alg: KeyAlgorithm) -> CertificateAuthority {
    CertificateAuthority::generate(&CaOptions {
        algorithm: alg,
        ..CaOptions::talos_os()
    })
    .expect("generate CA")
}

/// Generates a key of `alg` with openssl into `name`.
fn openssl_key(dir: &Path, alg: KeyAlgorithm, name: &str) {
    match alg {
        KeyAlgorithm::Ed25519 => openssl(dir, &["genpkey", "-algorithm", "ed25519", "-out", name]),
        KeyAlgorithm::EcdsaP256 => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                name,
            ],
        ),
    };
}

fn assert_verifies(dir: &Path, purpose: &str, cert: &str) {
    let out = openssl(
        dir,
        &["verify", "-CAfile", "ca.pem", "-purpose", purpose, cert],
    );
    assert!(out.contains(&format!("{cert}: OK")), "{out}");
}

#[test]
fn client_cert_from_our_ca_passes_openssl_verify_with_reader_role_and_client_auth_only() {
    for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256] {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir = dir.path();
        let ca = ca(alg);
        let issued = ca
            .issue_client(&ClientCertRequest {
                common_name: None,
                roles: RoleSet::parse(["os:reader"]),
                ttl: DAY,
            })
            .expect("issue client");
        write(dir, "ca.pem", ca.cert_pem());
        write(dir, "cert.pem", &issued.cert_pem);
        write(dir, "key.pem", &issued.key_pem);

        openssl(dir, &["verify", "-CAfile", "ca.pem", "cert.pem"]);
        assert_verifies(dir, "sslclient", "cert.pem");

        let out = openssl(
            dir,
            &[
                "x509",
                "-in",
                "cert.pem",
                "-noout",
                "-subject",
                "-ext",
                "extendedKeyUsage",
            ],
        );
        assert!(out.contains("O = os:reader"), "{out}");
        assert!(out.contains("TLS Web Client Authentication"), "{out}");
        assert!(!out.contains("Server Authentication"), "{out}");
        let eku_line = out
            .lines()
            .skip_while(|l| !l.contains("Extended Key Usage"))
            .nth(1)
            .expect("EKU value line");
        assert_eq!(eku_line.trim(), "TLS Web Client Authentication");

        // The key openssl reads back is the one the certificate was issued for.
        let cert_pub = openssl_bytes(dir, &["x509", "-in", "cert.pem", "-noout", "-pubkey"]);
        let key_pub = openssl_bytes(dir, &["pkey", "-in", "key.pem", "-pubout"]);
        assert_eq!(cert_pub, key_pub);
    }
}

#[test]
fn multi_role_client_cert_lists_one_organization_per_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let ca = ca(KeyAlgorithm::Ed25519);
    let issued = ca
        .issue_client(&ClientCertRequest {
            common_name: Some("admin".to_owned()),
            roles: RoleSet::parse(["os:reader", "os:admin"]),
            ttl: DAY,
        })
        .expect("issue client");
    write(dir, "ca.pem", ca.cert_pem());
    write(dir, "cert.pem", &issued.cert_pem);
    assert_verifies(dir, "sslclient", "cert.pem");
    let out = openssl(dir, &["x509", "-in", "cert.pem", "-noout", "-subject"]);
    assert!(
        out.contains("O = os:admin, O = os:reader, CN = admin"),
        "{out}"
    );
}

#[test]
fn server_cert_passes_openssl_verify_as_a_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let ca = ca(KeyAlgorithm::Ed25519);
    let issued = ca
        .issue_server(&ServerCertRequest {
            common_name: Some("node-1".to_owned()),
            sans: vec![
                "127.0.0.1".parse().expect("ip"),
                "localhost".parse().expect("dns"),
            ],
            ttl: DAY,
        })
        .expect("issue server");
    write(dir, "ca.pem", ca.cert_pem());
    write(dir, "cert.pem", &issued.cert_pem);
    assert_verifies(dir, "sslserver", "cert.pem");
    let out = openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-verify_ip",
            "127.0.0.1",
            "cert.pem",
        ],
    );
    assert!(out.contains("OK"), "{out}");
    let out = openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-verify_hostname",
            "localhost",
            "cert.pem",
        ],
    );
    assert!(out.contains("OK"), "{out}");
}

#[test]
fn openssl_csrs_sign_under_a_ca_of_the_same_key_type_and_verify() {
    for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256] {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir = dir.path();
        openssl_key(dir, alg, "key.pem");
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                "key.pem",
                "-subj",
                "/CN=talos-default-worker-1",
                "-addext",
                "subjectAltName=DNS:talos-default-worker-1,IP:10.5.0.4",
                "-out",
                "csr.pem",
            ],
        );

        let csr = Csr::from_pem(read(dir, "csr.pem").as_bytes()).expect("parse openssl CSR");
        assert_eq!(csr.key_algorithm(), Some(alg));
        assert_eq!(csr.common_name(), Some("talos-default-worker-1"));
        assert_eq!(csr.sans().len(), 2);

        let ca = ca(alg);
        let cert = ca
            .sign_csr(&csr, &SigningPolicy::default())
            .expect("sign CSR");
        write(dir, "ca.pem", ca.cert_pem());
        write(dir, "cert.pem", &cert);
        assert_verifies(dir, "sslserver", "cert.pem");

        let cert_pub = openssl_bytes(dir, &["x509", "-in", "cert.pem", "-noout", "-pubkey"]);
        let key_pub = openssl_bytes(dir, &["pkey", "-in", "key.pem", "-pubout"]);
        assert_eq!(cert_pub, key_pub, "leaf carries the CSR's key");
        let out = openssl(
            dir,
            &[
                "x509",
                "-in",
                "cert.pem",
                "-noout",
                "-ext",
                "subjectAltName",
            ],
        );
        assert!(
            out.contains("DNS:talos-default-worker-1, IP Address:10.5.0.4"),
            "{out}"
        );
    }
}

#[test]
fn openssl_csr_asking_for_admin_ca_and_client_auth_gets_a_plain_server_leaf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    openssl_key(dir, KeyAlgorithm::Ed25519, "key.pem");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "key.pem",
            "-subj",
            "/O=os:admin/CN=worker-1",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "extendedKeyUsage=serverAuth,clientAuth",
            "-addext",
            "keyUsage=critical,keyCertSign,digitalSignature",
            "-out",
            "csr.pem",
        ],
    );
    let csr = Csr::from_pem(read(dir, "csr.pem").as_bytes()).expect("parse");
    assert!(csr.requested_ca());
    assert_eq!(csr.requested_organizations(), ["os:admin"]);

    let ca = ca(KeyAlgorithm::Ed25519);
    let cert = ca.sign_csr(&csr, &SigningPolicy::default()).expect("sign");
    write(dir, "ca.pem", ca.cert_pem());
    write(dir, "cert.pem", &cert);
    assert_verifies(dir, "sslserver", "cert.pem");

    let text = openssl(dir, &["x509", "-in", "cert.pem", "-noout", "-text"]);
    let subject = text
        .lines()
        .find(|l| l.trim_start().starts_with("Subject:"))
        .expect("subject line");
    assert_eq!(subject.trim(), "Subject: CN = worker-1");
    assert!(!text.contains("os:admin"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(!text.contains("CA:TRUE"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(!text.contains("TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("Certificate Sign"), "{text}");

    // A client cert for the same identity is refused by openssl as a client.
    let out = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            "ca.pem",
            "-purpose",
            "sslclient",
            "cert.pem",
        ])
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        !out.status.success(),
        "a server-only leaf must not pass as a client"
    );
}

#[test]
fn p256_csr_to_an_ed25519_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    openssl_key(dir, KeyAlgorithm::EcdsaP256, "key.pem");
    openssl(
        dir,
        &[
            "req", "-new", "-key", "key.pem", "-subj", "/CN=node", "-out", "csr.pem",
        ],
    );
    let csr = Csr::from_pem(read(dir, "csr.pem").as_bytes()).expect("parse");
    let err = ca(KeyAlgorithm::Ed25519)
        .sign_csr(&csr, &SigningPolicy::default())
        .expect_err("mismatch");
    assert!(matches!(err, Error::KeyTypeMismatch { .. }), "{err}");
}

#[test]
fn rsa_csr_is_refused_as_unsupported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    openssl(
        dir,
        &[
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-subj",
            "/CN=node", "-out", "csr.pem",
        ],
    );
    let csr = Csr::from_pem(read(dir, "csr.pem").as_bytes()).expect("RSA CSRs still parse");
    assert_eq!(csr.key_algorithm(), None);
    let policy = SigningPolicy {
        require_ca_key_type: false,
        ..SigningPolicy::default()
    };
    let err = ca(KeyAlgorithm::Ed25519)
        .sign_csr(&csr, &policy)
        .expect_err("rsa");
    assert!(
        matches!(err, Error::UnsupportedKeyAlgorithm { .. }),
        "{err}"
    );
}

#[test]
fn openssl_keys_load_with_every_label() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();

    // SEC1 "EC PRIVATE KEY", with and without the leading EC PARAMETERS block.
    openssl(
        dir,
        &[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
            "ec.pem",
        ],
    );
    openssl(
        dir,
        &[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-out",
            "ec-params.pem",
        ],
    );
    // PKCS#8 "PRIVATE KEY".
    openssl_key(dir, KeyAlgorithm::Ed25519, "ed.pem");
    openssl_key(dir, KeyAlgorithm::EcdsaP256, "p256.pem");

    for (name, alg) in [
        ("ec.pem", KeyAlgorithm::EcdsaP256),
        ("ec-params.pem", KeyAlgorithm::EcdsaP256),
        ("ed.pem", KeyAlgorithm::Ed25519),
        ("p256.pem", KeyAlgorithm::EcdsaP256),
    ] {
        let key = PrivateKey::from_pem(&read(dir, name)).expect(name);
        assert_eq!(key.algorithm(), alg, "{name}");
        let openssl_pub = openssl_bytes(dir, &["pkey", "-in", name, "-pubout", "-outform", "DER"]);
        assert_eq!(key.public_key_der(), openssl_pub, "{name}");
        // What we write back, openssl reads.
        write(dir, "back.pem", key.to_pem());
        let back_pub = openssl_bytes(
            dir,
            &["pkey", "-in", "back.pem", "-pubout", "-outform", "DER"],
        );
        assert_eq!(back_pub, openssl_pub, "{name}");
    }

    // Talos's "ED25519 PRIVATE KEY" label over a PKCS#8 body.
    let ed = read(dir, "ed.pem").replace("PRIVATE KEY", "ED25519 PRIVATE KEY");
    let key = PrivateKey::from_pem(&ed).expect("ED25519 PRIVATE KEY");
    assert_eq!(key.algorithm(), KeyAlgorithm::Ed25519);
}

#[test]
fn openssl_made_talos_style_ca_loads_and_issues_verifiable_leaves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    openssl_key(dir, KeyAlgorithm::Ed25519, "ca-key.pem");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca-key.pem",
            "-subj",
            "/O=talos",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,digitalSignature",
            "-out",
            "ca.pem",
        ],
    );
    let key = read(dir, "ca-key.pem").replace("PRIVATE KEY", "ED25519 PRIVATE KEY");
    let ca = CertificateAuthority::from_pem(&read(dir, "ca.pem"), &key).expect("load CA");
    assert_eq!(ca.algorithm(), KeyAlgorithm::Ed25519);

    let issued = ca
        .issue_client(&ClientCertRequest {
            common_name: None,
            roles: RoleSet::parse(["os:admin"]),
            ttl: DAY,
        })
        .expect("issue");
    write(dir, "cert.pem", &issued.cert_pem);
    assert_verifies(dir, "sslclient", "cert.pem");

    // A key that is not the CA's is refused.
    openssl_key(dir, KeyAlgorithm::Ed25519, "other.pem");
    assert!(matches!(
        CertificateAuthority::from_pem(&read(dir, "ca.pem"), &read(dir, "other.pem")),
        Err(Error::KeyMismatch)
    ));
}
