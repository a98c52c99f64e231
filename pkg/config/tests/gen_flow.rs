//! The `basaltctl gen` flow through the public API: secrets bundle → machine configs → client
//! config, each written to disk and read back the way the CLI and the daemons will.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use basalt_config::fs::{Overwrite, ensure_private_dir, write_atomic};
use basalt_config::{
    Base64Pem, BundleCerts, CertAndKey, ClientConfig, Context, Error, MachineConfig, MachineType,
    RawMachineConfig, SecretsBundle, client,
};

// Fake PEM: basalt-config only looks at the labels.
const CA_CERT: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBPzCB8qADAgECAhEA\n-----END CERTIFICATE-----\n";
const CA_KEY: &str = "-----BEGIN ED25519 PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIE\n-----END ED25519 PRIVATE KEY-----\n";

#[test]
fn gen_secrets_then_configs_then_client_config() {
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("out");
    ensure_private_dir(&out).unwrap();

    // gen secrets
    let bundle =
        SecretsBundle::new(BundleCerts::os_only(CertAndKey::from_pem(CA_CERT, CA_KEY))).unwrap();
    let secrets_path = out.join("secrets.yaml");
    let yaml = bundle.to_yaml().unwrap();
    write_atomic(&secrets_path, yaml.as_bytes(), 0o600, Overwrite::Refuse).unwrap();
    assert_eq!(mode(&secrets_path), 0o600);
    // A second `gen secrets` without --force must not clobber the bundle.
    let err = write_atomic(&secrets_path, b"x", 0o600, Overwrite::Refuse).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    let bundle = SecretsBundle::load(&secrets_path).unwrap();

    // gen config: controlplane gets the CA key, the worker only the certificate; the CLI may
    // add certSANs to the raw form before validating.
    let mut raw = RawMachineConfig::generate(&bundle, "dev", "10.0.0.1", MachineType::ControlPlane);
    raw.machine.cert_sans.push("cp.example".into());
    let controlplane = MachineConfig::try_from(raw).unwrap();
    let worker = MachineConfig::generate(&bundle, "dev", "10.0.0.1", MachineType::Worker).unwrap();
    for (name, config) in [
        ("controlplane.yaml", &controlplane),
        ("worker.yaml", &worker),
    ] {
        let path = out.join(name);
        let yaml = config.to_yaml().unwrap();
        write_atomic(&path, yaml.as_bytes(), 0o600, Overwrite::Refuse).unwrap();
        assert_eq!(&MachineConfig::load(&path).unwrap(), config, "{name}");
    }
    assert_eq!(controlplane.ca_key(), Some(&bundle.certs.os.key));
    assert_eq!(controlplane.cert_sans()[0].to_string(), "cp.example");
    assert_eq!(worker.ca_key(), None);
    assert_eq!(worker.token().as_str(), bundle.trustdinfo.token);

    // The client config lands in ~/.basalt/config, merged into whatever is there.
    let home = out.join("home");
    let path = client::default_path(&home);
    let mut config = ClientConfig::load_or_default(&path).unwrap();
    let renames = config.merge(ClientConfig::with_context(
        "admin@dev",
        Context {
            endpoints: vec!["10.0.0.1".into()],
            ca: Some(bundle.certs.os.crt.clone()),
            crt: Some(Base64Pem::from_pem(CA_CERT)),
            key: Some(Base64Pem::from_pem(CA_KEY)),
            ..Context::default()
        },
    ));
    assert!(renames.is_empty());
    config.save(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);

    let loaded = ClientConfig::load(&path).unwrap();
    let (name, current) = loaded.current().unwrap();
    assert_eq!(name, "admin@dev");
    assert_eq!(current.ca.as_ref(), Some(&bundle.certs.os.crt));
}
