//! What each fuzz target does with its input, as plain functions: the libFuzzer entry points
//! in `fuzz_targets/` are one-line wrappers, and a crash found by a target can be replayed as
//! an ordinary regression test by calling the same function.
//!
//! Every function must return normally for every input: a panic, an abort, an overflow or a
//! sanitizer report is a bug in the code under test.

use std::sync::OnceLock;

use basalt_pki::{CaOptions, CertificateAuthority, Identity, KeyAlgorithm, SigningPolicy};
use base64::Engine as _;

/// Wraps raw bytes in a PEM envelope with `label`, so the fuzzer reaches the DER parser
/// behind the PEM decoder as well as the PEM decoder itself.
fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
}

/// One CA per process: generating keys on every input would drown the fuzzer.
fn ca(algorithm: KeyAlgorithm) -> &'static CertificateAuthority {
    static ED25519: OnceLock<CertificateAuthority> = OnceLock::new();
    static P256: OnceLock<CertificateAuthority> = OnceLock::new();
    let cell = match algorithm {
        KeyAlgorithm::EcdsaP256 => &P256,
        _ => &ED25519,
    };
    cell.get_or_init(|| {
        CertificateAuthority::generate(&CaOptions {
            algorithm,
            ..CaOptions::talos_os()
        })
        .expect("generate the fuzzing CA")
    })
}

/// trustd's path for a CSR: parse (PEM as given, and the bytes as DER inside PEM), verify the
/// signature, apply the policy, sign; then read the issued certificate back and check the
/// policy's promises (never a CA, serverAuth only, no Organization).
pub fn csr_policy(data: &[u8]) {
    let policy = SigningPolicy {
        require_ca_key_type: true,
        ..SigningPolicy::default()
    };
    for input in [data.to_vec(), pem("CERTIFICATE REQUEST", data).into_bytes()] {
        let Ok(csr) = policy.parse_csr(&input) else {
            continue;
        };
        for algorithm in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256] {
            let Ok(cert) = ca(algorithm).sign_csr(&csr, &policy) else {
                continue;
            };
            let leaf = Identity::from_pem(&cert).expect("an issued certificate parses");
            assert!(!leaf.is_ca, "the policy issued a CA");
            assert!(leaf.organizations.is_empty(), "the policy kept an O value");
            assert!(
                leaf.ext_key_usage.server_auth && !leaf.ext_key_usage.client_auth,
                "the policy issued other than serverAuth"
            );
        }
    }
}

/// apid's path for a verified leaf, and the CLI's for a client config's certificate.
pub fn cert_identity(data: &[u8]) {
    let _ = Identity::from_der(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Identity::from_pem(text);
    }
    let _ = Identity::from_pem(&pem("CERTIFICATE", data));
}

/// machined's path for `ApplyConfiguration` and its own config file.
pub fn machine_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = basalt_config::MachineConfig::from_yaml(text) {
        // What validated must render and read back to the same config.
        let yaml = config.to_yaml().expect("a valid config renders");
        let again =
            basalt_config::MachineConfig::from_yaml(&yaml).expect("a rendered config reads back");
        assert_eq!(again, config, "round trip changed the config");
    }
}

/// The CLI's path for a client config (talosconfig layout), which may come from anywhere.
pub fn client_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = basalt_config::ClientConfig::from_yaml(text);
    }
}

/// apid's fan-out: a node's unary reply gets per-node `common.Metadata` spliced in at the byte
/// level. The first input byte picks the hostname length (its top bit adds a failure); the
/// rest is hostname then reply. Splicing must never panic, and a reply that decodes before
/// splicing must decode after it, with every element naming the node.
pub fn fanout_splice(data: &[u8]) {
    use apid::fanout::splice::{NodeFailure, metadata, splice_stream, splice_unary};
    use prost::Message as _;

    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let host_len = usize::from(first & 0x3f).min(rest.len());
    let (host, reply) = rest.split_at(host_len);
    let hostname = String::from_utf8_lossy(host);
    let failure = (first & 0x80 != 0).then_some(NodeFailure {
        code: 14,
        message: "node unreachable",
    });
    let md = metadata(&hostname, failure);
    let _ = splice_stream(reply, &md);
    let Ok(spliced) = splice_unary(reply, &md) else {
        return;
    };
    let Ok(before) = basalt_api::machine::VersionResponse::decode(reply) else {
        return;
    };
    let after = basalt_api::machine::VersionResponse::decode(spliced.as_slice())
        .expect("a spliced valid reply decodes");
    assert_eq!(after.messages.len(), before.messages.len().max(1));
    for message in &after.messages {
        let metadata = message
            .metadata
            .as_ref()
            .expect("every element has metadata");
        assert_eq!(metadata.hostname, hostname);
    }
}
