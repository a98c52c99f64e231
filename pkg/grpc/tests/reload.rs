//! The credential reloader on its own: early failures, polling, on-demand reloads, and what
//! happens to the published config when an update is broken.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use basalt_authz::{Role, RoleSet};
use basalt_grpc::{CredentialFiles, ReloadError, ServerConfigReloader};
use basalt_pki::{
    CaOptions, CertificateAuthority, ClientCertRequest, ServerCertRequest, SubjectAltName,
};

struct Files {
    _dir: tempfile::TempDir,
    files: CredentialFiles,
    ca: CertificateAuthority,
}

fn issue_server(ca: &CertificateAuthority) -> (String, String) {
    let issued = ca
        .issue_server(&ServerCertRequest {
            common_name: None,
            sans: vec![SubjectAltName::Ip([127, 0, 0, 1].into())],
            ttl: Duration::from_secs(3600),
        })
        .expect("server cert");
    (issued.cert_pem, issued.key_pem)
}

fn files() -> Files {
    basalt_pki::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("ca");
    let (cert, key) = issue_server(&ca);
    let files = CredentialFiles {
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
        ca: dir.path().join("ca.pem"),
    };
    std::fs::write(&files.cert, cert).expect("cert");
    std::fs::write(&files.key, key).expect("key");
    std::fs::write(&files.ca, ca.cert_pem()).expect("ca");
    Files {
        _dir: dir,
        files,
        ca,
    }
}

fn build() -> Arc<basalt_grpc::reload::BuildConfig> {
    Arc::new(|pem| basalt_pki::server_config_for_apid(&pem.cert, &pem.key, &pem.ca))
}

fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[test]
fn loading_fails_early_on_missing_or_broken_files() {
    let f = files();
    std::fs::remove_file(&f.files.ca).expect("remove");
    let err = ServerConfigReloader::load(f.files.clone(), build()).expect_err("missing CA");
    assert!(matches!(err, ReloadError::Read { .. }), "{err:?}");

    std::fs::write(&f.files.ca, "junk").expect("write");
    let err = ServerConfigReloader::load(f.files.clone(), build()).expect_err("broken CA");
    assert!(matches!(err, ReloadError::Build { .. }), "{err:?}");
    // The key path never appears in Debug output.
    assert!(!format!("{:?}", f.files).contains("server.key"));
}

#[tokio::test]
async fn polling_goes_on_after_every_reload_handle_is_dropped() {
    let f = files();
    let (reloader, mut config, handle) =
        ServerConfigReloader::load(f.files.clone(), build()).expect("load");
    drop(handle);
    let task = tokio::spawn(reloader.run(Duration::from_millis(20)));
    let (cert, key) = issue_server(&f.ca);
    replace(&f.files.key, &key);
    replace(&f.files.cert, &cert);
    tokio::time::timeout(Duration::from_secs(10), config.changed())
        .await
        .expect("reload within the deadline")
        .expect("reloader alive");
    drop(config);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("reloader stops")
        .expect("reloader task");
}

#[tokio::test]
async fn a_changed_file_is_picked_up_by_polling_and_a_broken_one_is_not() {
    let f = files();
    let (reloader, mut config, handle) =
        ServerConfigReloader::load(f.files.clone(), build()).expect("load");
    let task = tokio::spawn(reloader.run(Duration::from_millis(20)));
    let first = config.borrow_and_update().clone();

    let (cert, key) = issue_server(&f.ca);
    replace(&f.files.key, &key);
    replace(&f.files.cert, &cert);
    tokio::time::timeout(Duration::from_secs(10), config.changed())
        .await
        .expect("reload within the deadline")
        .expect("reloader alive");
    let second = config.borrow_and_update().clone();
    assert!(!Arc::ptr_eq(&first, &second));

    // A client certificate is not a usable server certificate (wrong key): kept out.
    let client =
        f.ca.issue_client(&ClientCertRequest {
            common_name: None,
            roles: RoleSet::from([Role::Admin]),
            ttl: Duration::from_secs(60),
        })
        .expect("client");
    replace(&f.files.cert, &client.cert_pem);
    assert!(matches!(
        handle.reload().await,
        Err(ReloadError::Build { .. })
    ));
    assert!(Arc::ptr_eq(&second, &config.borrow()));

    // The reloader stops once nobody reads the config any more.
    drop(config);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("reloader stops")
        .expect("reloader task");
    assert!(matches!(handle.reload().await, Err(ReloadError::Stopped)));
}
