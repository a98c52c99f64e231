//! On a control-plane node machined issues apid's credentials, writes its config and runs it as
//! a supervised child. A stand-in script plays apid here: it records how it was started.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use basalt_config::{
    ApidConfig, AuditSink, BundleCerts, CertAndKey, MachineConfig, MachineType, SecretsBundle,
};
use basalt_pki::{CaOptions, CertificateAuthority, Identity};
use machined::{ApidLaunch, Backoff};
use support::{Machined, within_deadline};

fn control_plane_config() -> (MachineConfig, String) {
    let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
    let os = CertAndKey::from_pem(ca.cert_pem(), ca.key_pem());
    let bundle = SecretsBundle::new(BundleCerts::os_only(os)).expect("bundle");
    let machine = MachineConfig::generate(&bundle, "dev", "127.0.0.1", MachineType::ControlPlane)
        .expect("machine config");
    (machine, ca.cert_pem().to_owned())
}

/// A fake apid that writes its pid and arguments next to itself, then sleeps until killed.
fn fake_apid(dir: &Path) -> PathBuf {
    let path = dir.join("fake-apid");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho $$ > {dir}/apid.pid.tmp && mv {dir}/apid.pid.tmp {dir}/apid.pid\n\
             echo \"$@\" > {dir}/apid.args\nexec sleep 30\n",
            dir = dir.display()
        ),
    )
    .expect("write fake apid");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

async fn eventually_read(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.is_empty()
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn machined_issues_apid_credentials_and_runs_apid_until_shutdown() {
    within_deadline(async {
        let (machine, ca_pem) = control_plane_config();
        let mut state = PathBuf::new();
        let machined = Machined::start_with(|config, dir| {
            state = dir.join("state");
            config.apid = Some(ApidLaunch {
                machine,
                state_dir: state.clone(),
                binary: fake_apid(dir),
                backoff: Backoff::default(),
            });
        })
        .await;
        let apid_dir = state.join("apid");

        // The config apid is started with passes apid's own validation and points at the files.
        let config = ApidConfig::load(&apid_dir.join("apid.yaml")).expect("apid.yaml loads");
        assert_eq!(config.machined_socket, machined.socket);
        assert_eq!(config.tls.cert, apid_dir.join("server.crt"));
        assert_eq!(config.tls.key, apid_dir.join("server.key"));
        assert_eq!(config.tls.ca, apid_dir.join("ca.pem"));
        assert_eq!(config.audit, AuditSink::File(apid_dir.join("audit.log")));
        assert_eq!(mode_of(&config.tls.key), 0o600);

        // The server certificate: serverAuth only, loopback and hostname SANs, 24 h.
        let cert = std::fs::read_to_string(&config.tls.cert).expect("server.crt");
        let identity = Identity::from_pem(&cert).expect("certificate parses");
        assert!(identity.ext_key_usage.server_auth);
        assert!(!identity.ext_key_usage.client_auth);
        assert!(
            identity.roles.is_empty(),
            "a server certificate carries no roles"
        );
        assert!(
            identity
                .ip_addresses
                .contains(&"127.0.0.1".parse().expect("ip"))
        );
        assert!(identity.dns_names.iter().any(|name| name == "node-1"));
        let lifetime = identity.not_after - identity.not_before;
        assert!(
            lifetime >= time::Duration::hours(24) && lifetime <= time::Duration::hours(25),
            "{lifetime}"
        );
        let bundle = std::fs::read_to_string(&config.tls.ca).expect("ca.pem");
        assert!(bundle.contains(ca_pem.trim()), "the issuing CA is accepted");

        // apid was started with --config, and is stopped with machined.
        let dir = machined.dir.path().to_owned();
        let args = eventually_read(&dir.join("apid.args")).await;
        assert_eq!(
            args.trim(),
            format!("--config {}", apid_dir.join("apid.yaml").display())
        );
        let pid = eventually_read(&dir.join("apid.pid")).await;
        let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
        assert!(proc_dir.exists(), "apid is running");
        machined.stop().await;
        assert!(
            !proc_dir.exists(),
            "apid was stopped and reaped with machined"
        );
    })
    .await;
}
