//! The file API and Dmesg end to end: `basaltctl` → apid (mTLS) → machined, real processes.
//! Reads round-trip byte-exact through the proxy, `cp` rebuilds the tree, `ls` prints Go
//! modes, and the path policy's refusals reach the CLI intact.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use basalt_e2e::cli::text;
use basalt_e2e::{Node, within_test_deadline};

/// `tree/{a.txt, sub/big.bin (3 MB), link -> a.txt}` inside the node's directory.
fn make_tree(node: &Node) -> PathBuf {
    let tree = std::fs::canonicalize(node.dir())
        .expect("node dir")
        .join("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    std::fs::write(tree.join("a.txt"), "alpha\n").expect("write");
    std::fs::write(tree.join("sub/big.bin"), big()).expect("write");
    std::os::unix::fs::symlink("a.txt", tree.join("link")).expect("symlink");
    // Fixed modes whatever the umask, so `ls -l` output is known.
    for (path, mode) in [
        ("", 0o755),
        ("sub", 0o755),
        ("a.txt", 0o644),
        ("sub/big.bin", 0o644),
    ] {
        std::fs::set_permissions(tree.join(path), Permissions::from_mode(mode)).expect("chmod");
    }
    tree
}

fn big() -> Vec<u8> {
    (0..3_000_000_u32)
        .map(|i| (i % 253) as u8 ^ (i >> 12) as u8)
        .collect()
}

/// An admin client config for the node, made by the real CLI.
async fn admin_config(node: &Node) -> PathBuf {
    node.gen_client_config("admin.config", "os:admin", "24h", &[node.apid_addr()])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ls_usage_and_cp_work_through_apid() {
    within_test_deadline(async {
        let node = Node::start().await;
        let tree = make_tree(&node);
        let config = admin_config(&node).await;
        let cli = |args: Vec<String>| {
            let node = &node;
            let config = config.clone();
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                node.basaltctl(&config, &args).await
            }
        };
        let path = |rel: &str| tree.join(rel).display().to_string();

        // read: byte-exact through apid's proxy.
        let out = cli(vec!["read".into(), path("sub/big.bin")]).await;
        assert!(out.status.success(), "read: {}", text(&out));
        assert!(
            out.stdout == big(),
            "read changed the bytes ({} bytes)",
            out.stdout.len()
        );

        // ls -l: the root as `.`, Go mode strings, the symlink's target.
        // Columns: NODE MODE UID GID SIZE(B) LASTMOD NAME [-> TARGET].
        let out = cli(vec![
            "ls".into(),
            tree.display().to_string(),
            "-r".into(),
            "-l".into(),
        ])
        .await;
        assert!(out.status.success(), "ls: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let rows: Vec<Vec<&str>> = stdout
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect())
            .collect();
        let summary: Vec<(&str, &str)> = rows.iter().map(|r| (r[6], r[1])).collect();
        assert_eq!(
            summary,
            [
                (".", "drwxr-xr-x"),
                ("a.txt", "-rw-r--r--"),
                ("link", "Lrwxrwxrwx"),
                ("sub", "drwxr-xr-x"),
                ("sub/big.bin", "-rw-r--r--"),
            ],
            "{stdout}"
        );
        assert_eq!(rows[2][7..], ["->", "a.txt"], "{stdout}");
        assert_eq!(rows[4][4], "3000000", "{stdout}");

        // usage: the tree's total (its own row, NODE NAME SIZE) covers the big file.
        let out = cli(vec!["usage".into(), tree.display().to_string()]).await;
        assert!(out.status.success(), "usage: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let total: i64 = stdout
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.get(1) == Some(&tree.display().to_string().as_str()))
            .and_then(|cols| cols.get(2).and_then(|size| size.parse().ok()))
            .expect("a row for the tree");
        assert!(total > 3_000_000, "{stdout}");

        // cp: the tree comes back, the symlink as a symlink.
        let dest = node.dir().join("copied");
        let out = cli(vec![
            "cp".into(),
            tree.display().to_string(),
            dest.display().to_string(),
        ])
        .await;
        assert!(out.status.success(), "cp: {}", text(&out));
        assert_eq!(
            std::fs::read(dest.join("a.txt")).expect("a.txt"),
            b"alpha\n"
        );
        assert!(std::fs::read(dest.join("sub/big.bin")).expect("big.bin") == big());
        assert_eq!(
            std::fs::read_link(dest.join("link")).expect("link"),
            Path::new("a.txt")
        );

        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_policy_refusals_reach_the_cli() {
    within_test_deadline(async {
        let node = Node::start().await;
        let tree = make_tree(&node);
        let config = admin_config(&node).await;

        // machined's state directory holds keys: denied, with the reason.
        let state = std::fs::canonicalize(node.state_dir()).expect("state dir");
        let key = state.join("apid").display().to_string();
        let out = node.basaltctl(&config, &["ls", &key]).await;
        assert!(!out.status.success(), "ls of the state dir: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("PermissionDenied"), "{stderr}");
        assert!(stderr.contains("state directory"), "{stderr}");

        // A relative path, a missing one, a directory given to read.
        let out = node.basaltctl(&config, &["read", "etc/hostname"]).await;
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("InvalidArgument"),
            "{}",
            text(&out)
        );
        let missing = tree.join("missing").display().to_string();
        let out = node.basaltctl(&config, &["read", &missing]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("NotFound") && stderr.contains(&missing),
            "{stderr}"
        );
        let dir = tree.display().to_string();
        let out = node.basaltctl(&config, &["read", &dir]).await;
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("path must be a regular file"),
            "{}",
            text(&out)
        );

        // Kernel memory, by the default deny rules.
        let out = node.basaltctl(&config, &["read", "/proc/kcore"]).await;
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"),
            "{}",
            text(&out)
        );

        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmesg_prints_the_kernel_log_or_says_why_it_cannot() {
    within_test_deadline(async {
        let node = Node::start().await;
        let config = admin_config(&node).await;
        let out = node.basaltctl(&config, &["dmesg"]).await;
        if out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let first = stdout
                .lines()
                .next()
                .expect("a readable kernel log is never empty");
            assert!(first.contains(": [") && first.contains("]: "), "{first}");
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("FailedPrecondition")
                    && stderr.contains("cannot read the kernel log"),
                "{stderr}"
            );
        }
        node.shutdown().await;
    })
    .await;
}

/// A request over its method's limit, through apid to the real machined: ResourceExhausted
/// naming the method, and the same connection serves the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_disk_usage_request_is_refused_through_apid() {
    use basalt_api::machine::DiskUsageRequest;
    within_test_deadline(async {
        let node = Node::start().await;
        let mut client = node.client(basalt_e2e::Cert::Reader).await;
        let status = client
            .disk_usage(DiskUsageRequest {
                paths: vec!["/".to_owned(); 1_000_000],
                ..DiskUsageRequest::default()
            })
            .await
            .expect_err("over DiskUsage's limit");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status
                .message()
                .ends_with("exceeds this method's limit of 2097152 bytes"),
            "{status:?}"
        );
        client.version(()).await.expect("the next call is served");
        node.shutdown().await;
    })
    .await;
}
