//! The socket file machined serves on: directory and socket modes, stale sockets, and paths
//! that must not be touched.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use machined::{Config, Error, Server};
use support::{Machined, short_tempdir, with_roles, within_deadline};

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

fn config(socket: &std::path::Path) -> Config {
    Config::new(socket, Arc::new(basalt_sys::ContainerHost::default()))
}

#[tokio::test]
async fn socket_dir_is_0750_and_socket_is_0660() {
    within_deadline(async {
        let machined = Machined::start().await;
        assert_eq!(mode_of(machined.socket.parent().expect("dir")), 0o750);
        assert_eq!(mode_of(&machined.socket), 0o660);
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    within_deadline(async {
        let dir = short_tempdir();
        let socket = dir.path().join("machined.sock");
        drop(UnixListener::bind(&socket).expect("bind a socket nobody serves"));
        let bound = Server::bind(config(&socket))
            .await
            .expect("stale socket replaced");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async move {
            let _ = rx.await;
        }));
        let channel = support::connect(&socket).await;
        basalt_api::machine::machine_service_client::MachineServiceClient::new(channel)
            .version(with_roles((), &["os:reader"]))
            .await
            .expect("the new server answers");
        tx.send(()).expect("shutdown");
        task.await.expect("no panic").expect("clean stop");
        assert!(!socket.exists(), "the socket is removed on shutdown");
    })
    .await;
}

#[tokio::test]
async fn a_regular_file_at_the_socket_path_is_refused_and_kept() {
    within_deadline(async {
        let dir = short_tempdir();
        let socket = dir.path().join("machined.sock");
        std::fs::write(&socket, b"not a socket").expect("write file");
        let err = Server::bind(config(&socket))
            .await
            .expect_err("must refuse");
        assert!(matches!(err, Error::PrepareSocket { .. }), "{err:?}");
        let chain = format!("{err}: {}", std::error::Error::source(&err).expect("cause"));
        assert!(
            chain.contains("exists and is a regular file, not a socket; refusing to remove it"),
            "{chain}"
        );
        assert_eq!(std::fs::read(&socket).expect("file kept"), b"not a socket");
    })
    .await;
}

#[tokio::test]
async fn a_second_server_on_a_live_socket_is_refused() {
    within_deadline(async {
        let machined = Machined::start().await;
        let err = Server::bind(config(&machined.socket))
            .await
            .expect_err("socket in use");
        assert!(matches!(err, Error::PrepareSocket { .. }), "{err:?}");
        machined.stop().await;
    })
    .await;
}
