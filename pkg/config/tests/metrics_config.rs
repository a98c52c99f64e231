//! Where the Prometheus endpoints are configured: `machine.metrics` in the machine config
//! (off by default), and `metrics:` in apid's and trustd's own configs, which machined writes.

use basalt_config::{
    ApidConfig, BundleCerts, CertAndKey, MachineConfig, MachineType, SecretsBundle,
};

// Fake PEM: basalt-config only looks at the labels.
const CA_CERT: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBPzCB8qADAgECAhEA\n-----END CERTIFICATE-----\n";
const CA_KEY: &str = "-----BEGIN ED25519 PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIE\n-----END ED25519 PRIVATE KEY-----\n";

fn base_config() -> MachineConfig {
    let bundle = SecretsBundle::new(BundleCerts::os_only(CertAndKey::from_pem(CA_CERT, CA_KEY)))
        .expect("bundle");
    MachineConfig::generate(&bundle, "dev", "127.0.0.1", MachineType::ControlPlane)
        .expect("generate")
}

#[test]
fn machine_metrics_are_off_by_default_and_round_trip_when_set() {
    let config = base_config();
    assert_eq!(config.apid_metrics(), None);
    assert_eq!(config.trustd_metrics(), None);
    assert!(!config.to_yaml().expect("yaml").contains("metrics"));

    let mut raw = config.to_raw();
    raw.machine.metrics = Some(basalt_config::machine::RawMetrics {
        apid: Some("127.0.0.1:9100".to_owned()),
        trustd: None,
    });
    let config = MachineConfig::try_from(raw).expect("valid");
    assert_eq!(
        config.apid_metrics(),
        Some("127.0.0.1:9100".parse().expect("addr"))
    );
    assert_eq!(config.trustd_metrics(), None);
    let again = MachineConfig::from_yaml(&config.to_yaml().expect("yaml")).expect("reads back");
    assert_eq!(again, config);
}

#[test]
fn a_bad_metrics_address_is_a_validation_problem_naming_the_key() {
    let mut raw = base_config().to_raw();
    raw.machine.metrics = Some(basalt_config::machine::RawMetrics {
        apid: Some("localhost".to_owned()),
        trustd: Some("127.0.0.1:9101".to_owned()),
    });
    let err = MachineConfig::try_from(raw).expect_err("invalid");
    let text = err.to_string();
    assert!(text.contains("machine.metrics.apid"), "{text}");
    assert!(text.contains("\"localhost\""), "{text}");
}

#[test]
fn apid_config_metrics_key_parses_and_renders() {
    let yaml = "tls: {cert: /c, key: /k, ca: /a}\nmachinedSocket: /s\nmetrics: 127.0.0.1:9100\n";
    let config = ApidConfig::from_yaml(yaml).expect("valid");
    assert_eq!(
        config.metrics,
        Some("127.0.0.1:9100".parse().expect("addr"))
    );
    assert_eq!(
        ApidConfig::from_yaml(&config.to_yaml().expect("yaml")).expect("again"),
        config
    );
    let err = ApidConfig::from_yaml(
        "tls: {cert: /c, key: /k, ca: /a}\nmachinedSocket: /s\nmetrics: nine\n",
    )
    .expect_err("bad address");
    assert!(err.to_string().contains("metrics"), "{err}");
    let off = ApidConfig::from_yaml("tls: {cert: /c, key: /k, ca: /a}\nmachinedSocket: /s\n")
        .expect("valid");
    assert_eq!(off.metrics, None);
}
