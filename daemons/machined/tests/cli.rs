//! Smoke tests of the `machined` binary.

use std::process::Command;

const MACHINED: &str = env!("CARGO_BIN_EXE_machined");

fn short_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bs")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

#[test]
fn check_config_with_a_bad_config_exits_64_and_names_the_problem() {
    let dir = short_tempdir();
    let config = dir.path().join("machine.yaml");
    std::fs::write(
        &config,
        "version: v1alpha1\nmachine:\n  type: toaster\ncluster:\n  name: dev\n",
    )
    .expect("write config");
    let output = Command::new(MACHINED)
        .arg("--config")
        .arg(&config)
        .arg("--state")
        .arg(dir.path())
        .arg("--check-config")
        .env("BASALT_LOG", "info")
        .output()
        .expect("run machined");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "stderr: {stderr}");
    assert!(stderr.contains("machine.type"), "stderr: {stderr}");
    assert!(stderr.contains("toaster"), "stderr: {stderr}");
}

#[test]
fn a_missing_config_file_exits_64() {
    let dir = short_tempdir();
    let output = Command::new(MACHINED)
        .arg("--config")
        .arg(dir.path().join("absent.yaml"))
        .arg("--state")
        .arg(dir.path())
        .arg("--check-config")
        .output()
        .expect("run machined");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("absent.yaml"));
}

#[test]
fn an_unknown_flag_exits_64() {
    let output = Command::new(MACHINED)
        .arg("--frobnicate")
        .output()
        .expect("run machined");
    assert_eq!(output.status.code(), Some(64));
}

#[test]
fn help_and_version_go_to_stdout_and_exit_0() {
    for flag in ["--help", "--version"] {
        let output = Command::new(MACHINED)
            .arg(flag)
            .output()
            .expect("run machined");
        assert!(output.status.success(), "{flag}: {output:?}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("machined"),
            "{flag}: {output:?}"
        );
    }
}

#[test]
fn a_bad_log_filter_exits_64_and_quotes_it() {
    let dir = short_tempdir();
    let output = Command::new(MACHINED)
        .arg("--config")
        .arg(dir.path().join("absent.yaml"))
        .arg("--state")
        .arg(dir.path())
        .env("BASALT_LOG", "info,=[")
        .output()
        .expect("run machined");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "stderr: {stderr}");
    assert!(
        stderr.starts_with("machined: BASALT_LOG=\"info,=[\" is not a valid log filter: "),
        "stderr: {stderr}"
    );
}

fn write_control_plane_config(dir: &std::path::Path) -> std::path::PathBuf {
    use basalt_config::{BundleCerts, CertAndKey, MachineConfig, SecretsBundle};
    let ca =
        basalt_pki::CertificateAuthority::generate(&basalt_pki::CaOptions::talos_os()).expect("CA");
    let os = CertAndKey::from_pem(ca.cert_pem(), ca.key_pem());
    let bundle = SecretsBundle::new(BundleCerts::os_only(os)).expect("bundle");
    let machine = MachineConfig::generate(
        &bundle,
        "dev",
        "127.0.0.1",
        basalt_config::MachineType::ControlPlane,
    )
    .expect("machine config");
    let path = dir.join("controlplane.yaml");
    std::fs::write(&path, machine.to_yaml().expect("yaml")).expect("write config");
    path
}

#[test]
fn check_config_with_a_valid_control_plane_config_exits_0() {
    let dir = short_tempdir();
    let config = write_control_plane_config(dir.path());
    let output = Command::new(MACHINED)
        .arg("--config")
        .arg(&config)
        .arg("--state")
        .arg(dir.path())
        .arg("--check-config")
        .output()
        .expect("run machined");
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_binary_serves_version_and_exits_cleanly_on_sigterm() {
    use std::time::{Duration, Instant};

    use basalt_api::machine::machine_service_client::MachineServiceClient;
    use hyper_util::rt::TokioIo;
    use tonic::transport::{Endpoint, Uri};

    let dir = short_tempdir();
    let config = write_control_plane_config(dir.path());
    let socket = dir.path().join("run/machined.sock");
    let mut child = tokio::process::Command::new(MACHINED)
        .arg("--config")
        .arg(&config)
        .arg("--state")
        .arg(dir.path())
        .arg("--no-apid")
        .kill_on_drop(true)
        .spawn()
        .expect("start machined");

    // The binary binds before it serves; wait (bounded) for the socket to appear.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "machined never created its socket"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let path = socket.clone();
    let channel = Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .expect("connect");
    let mut request = tonic::Request::new(());
    request
        .metadata_mut()
        .insert("talos-role", "os:admin".parse().expect("ascii"));
    let reply = MachineServiceClient::new(channel)
        .version(request)
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(reply.messages.len(), 1);

    let pid = child.id().expect("running");
    basalt_sys::terminate(pid).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("machined exits after SIGTERM")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists(), "the socket is removed on shutdown");
}
