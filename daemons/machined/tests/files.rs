//! The file methods over the real socket: Read, List, DiskUsage and Copy, each with every way
//! the path policy refuses a path (relative, `..` escape, symlink escape, denied, missing, not
//! a regular file).

mod support;

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, symlink};
use std::path::{Path, PathBuf};

use basalt_api::common::Data;
use basalt_api::machine::{
    CopyRequest, DiskUsageInfo, DiskUsageRequest, FileInfo, ListRequest, ReadRequest,
    list_request::Type,
};
use machined::{DenyRule, FilesPolicy, READ_CHUNK_SIZE};
use support::{Machined, with_roles, within_deadline};
use tonic::{Code, Status};

/// A tree under `<tmp>/allowed`, the policy's only root:
///
/// ```text
/// allowed/
///   a.txt            "alpha"
///   big.bin          5 MB of patterned bytes
///   dir/
///     b.txt          "bravo"
///     sub/c.txt      "charlie"
///   link-in -> a.txt
///   link-out -> ../outside
///   state/key        denied ("test state")
/// outside/secret     outside the root
/// ```
struct Fixture {
    machined: Machined,
    allowed: PathBuf,
}

impl Fixture {
    async fn start() -> Self {
        Self::start_with(|policy| policy).await
    }

    async fn start_with(adjust: impl FnOnce(FilesPolicy) -> FilesPolicy) -> Self {
        let mut paths = None;
        let machined = Machined::start_with(|config, dir| {
            let base = std::fs::canonicalize(dir).expect("canonical temp dir");
            let allowed = base.join("allowed");
            std::fs::create_dir_all(allowed.join("dir/sub")).expect("mkdir");
            std::fs::create_dir_all(allowed.join("state")).expect("mkdir");
            std::fs::create_dir_all(base.join("outside")).expect("mkdir");
            std::fs::write(allowed.join("a.txt"), "alpha").expect("write");
            std::fs::write(allowed.join("big.bin"), big()).expect("write");
            std::fs::write(allowed.join("dir/b.txt"), "bravo").expect("write");
            std::fs::write(allowed.join("dir/sub/c.txt"), "charlie").expect("write");
            std::fs::write(allowed.join("state/key"), "secret key").expect("write");
            std::fs::write(base.join("outside/secret"), "outside").expect("write");
            symlink("a.txt", allowed.join("link-in")).expect("symlink");
            symlink("../outside", allowed.join("link-out")).expect("symlink");
            let policy = FilesPolicy::new(
                [allowed.clone()],
                [DenyRule::new(allowed.join("state"), "test state").expect("rule")],
            )
            .expect("policy");
            config.files = adjust(policy);
            paths = Some(allowed);
        })
        .await;
        let allowed = paths.expect("fixture paths");
        Fixture { machined, allowed }
    }

    fn path(&self, relative: &str) -> String {
        self.allowed.join(relative).display().to_string()
    }

    async fn read(&self, path: &str) -> Result<Vec<Data>, Status> {
        let mut stream = self
            .machined
            .machine()
            .await
            .read(with_roles(
                ReadRequest {
                    path: path.to_owned(),
                },
                &["os:admin"],
            ))
            .await?
            .into_inner();
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.message().await? {
            chunks.push(chunk);
        }
        Ok(chunks)
    }

    /// Every entry, and the status the stream ended with if it was not OK.
    async fn list(&self, request: ListRequest) -> Result<(Vec<FileInfo>, Option<Status>), Status> {
        let mut stream = self
            .machined
            .machine()
            .await
            .list(with_roles(request, &["os:reader"]))
            .await?
            .into_inner();
        let mut entries = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => return Ok((entries, None)),
                Err(status) => return Ok((entries, Some(status))),
            }
        }
    }

    async fn usage(&self, request: DiskUsageRequest) -> Result<Vec<DiskUsageInfo>, Status> {
        let mut stream = self
            .machined
            .machine()
            .await
            .disk_usage(with_roles(request, &["os:reader"]))
            .await?
            .into_inner();
        let mut entries = Vec::new();
        while let Some(entry) = stream.message().await? {
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn copy(&self, root: &str) -> Result<Vec<Data>, Status> {
        let mut stream = self
            .machined
            .machine()
            .await
            .copy(with_roles(
                CopyRequest {
                    root_path: root.to_owned(),
                },
                &["os:admin"],
            ))
            .await?
            .into_inner();
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.message().await? {
            chunks.push(chunk);
        }
        Ok(chunks)
    }

    async fn stop(self) {
        self.machined.stop().await;
    }
}

/// 5 MB that a shifted or dropped chunk would not reproduce.
fn big() -> Vec<u8> {
    (0..5_000_000_u32)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect()
}

fn list_request(root: &str, recurse: bool, depth: i32) -> ListRequest {
    ListRequest {
        root: root.to_owned(),
        recurse,
        recursion_depth: depth,
        ..ListRequest::default()
    }
}

fn names(entries: &[FileInfo]) -> Vec<&str> {
    entries.iter().map(|e| e.relative_name.as_str()).collect()
}

/// Asserts the code and that the message names `path`.
fn refused(status: &Status, code: Code, path: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(path),
        "the message should name {path}: {}",
        status.message()
    );
}

/// The rejections every file method shares, given a way to call it with one path.
async fn every_rejection<F, Fut, T>(fixture: &Fixture, call: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
    T: std::fmt::Debug,
{
    let relative = "allowed/a.txt".to_owned();
    let status = call(relative.clone()).await.expect_err("relative path");
    refused(&status, Code::InvalidArgument, &relative);
    assert!(
        status.message().starts_with("path must be absolute"),
        "{status:?}"
    );

    let dotdot = fixture.path("../outside/secret");
    let status = call(dotdot.clone()).await.expect_err("`..` escape");
    refused(&status, Code::PermissionDenied, &dotdot);
    assert!(
        status.message().contains("outside the allowed roots"),
        "{status:?}"
    );

    let through_link = fixture.path("link-out/secret");
    let status = call(through_link.clone())
        .await
        .expect_err("symlink escape");
    refused(&status, Code::PermissionDenied, &through_link);
    assert!(status.message().contains("resolves to"), "{status:?}");

    let denied = fixture.path("state/key");
    let status = call(denied.clone()).await.expect_err("denied path");
    refused(&status, Code::PermissionDenied, &denied);
    assert!(status.message().contains("test state"), "{status:?}");

    let missing = fixture.path("nope");
    let status = call(missing.clone()).await.expect_err("missing path");
    refused(&status, Code::NotFound, &missing);

    // Paths that cannot be resolved for the caller's reasons: InvalidArgument, saying why
    // (a NUL byte was an internal error before 2026-12-08).
    let looping = fixture.allowed.join("loop");
    std::os::unix::fs::symlink("loop", &looping).expect("symlink loop");
    let long = fixture.path(&"x".repeat(300));
    for (path, why) in [
        (fixture.path("loop/a"), "symbolic links"),
        (long, "too long"),
        (fixture.path("a\0b"), "nul byte"),
    ] {
        let status = call(path.clone()).await.expect_err(why);
        assert_eq!(status.code(), Code::InvalidArgument, "{why}: {status:?}");
        assert!(
            status.message().to_lowercase().contains(why),
            "{why}: {status:?}"
        );
    }
    std::fs::remove_file(&looping).expect("remove the loop");
}

// === Read ===

#[tokio::test]
async fn read_of_a_multi_mb_file_round_trips_byte_exact() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        let chunks = fixture.read(&fixture.path("big.bin")).await.expect("Read");
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.bytes.len() <= READ_CHUNK_SIZE));
        assert!(chunks.iter().all(|c| c.metadata.is_none()));
        let bytes: Vec<u8> = chunks.into_iter().flat_map(|c| c.bytes).collect();
        assert_eq!(bytes.len(), 5_000_000);
        assert!(bytes == big(), "the file changed in transit");
        fixture.stop().await;
    })
    .await;
}

#[tokio::test]
async fn read_follows_a_symlink_that_stays_inside_the_root() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        let chunks = fixture.read(&fixture.path("link-in")).await.expect("Read");
        let bytes: Vec<u8> = chunks.into_iter().flat_map(|c| c.bytes).collect();
        assert_eq!(bytes, b"alpha");
        fixture.stop().await;
    })
    .await;
}

#[tokio::test]
async fn read_refuses_every_bad_path() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        let f = &fixture;
        every_rejection(f, |path| async move { f.read(&path).await }).await;
        fixture.stop().await;
    })
    .await;
}

#[tokio::test]
async fn read_of_a_directory_is_not_a_regular_file() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        let dir = fixture.path("dir");
        let status = fixture.read(&dir).await.expect_err("a directory");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            format!("path must be a regular file: {dir}")
        );
        fixture.stop().await;
    })
    .await;
}

#[tokio::test]
async fn read_of_a_fifo_is_refused_without_hanging() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        let fifo = fixture.allowed.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|status| status.success()) {
            eprintln!("mkfifo is not available; skipping");
            return fixture.stop().await;
        }
        let status = fixture
            .read(&fifo.display().to_string())
            .await
            .expect_err("a FIFO");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("path must be a regular file"));
        fixture.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_default_policy_refuses_kernel_memory_devices_and_process_secrets() {
    within_deadline(async {
        let machined = Machined::start().await;
        let mut client = machined.machine().await;
        for path in [
            "/proc/kcore",
            "/dev/null",
            "/proc/self/environ",
            "/proc/1/mem",
        ] {
            let result = client
                .read(with_roles(
                    ReadRequest {
                        path: path.to_owned(),
                    },
                    &["os:admin"],
                ))
                .await;
            let status = match result {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    stream.message().await.expect_err(path)
                }
                Err(status) => status,
            };
            refused(&status, Code::PermissionDenied, path);
        }
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn read_and_copy_need_admin() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        let status = fixture
            .machined
            .machine()
            .await
            .read(with_roles(
                ReadRequest {
                    path: fixture.path("a.txt"),
                },
                &["os:reader"],
            ))
            .await
            .expect_err("reader may not read files");
        assert_eq!(status.code(), Code::PermissionDenied);
        let status = fixture
            .machined
            .machine()
            .await
            .copy(with_roles(
                CopyRequest {
                    root_path: fixture.path("dir"),
                },
                &["os:reader"],
            ))
            .await
            .expect_err("reader may not copy files");
        assert_eq!(status.code(), Code::PermissionDenied);
        fixture.stop().await;
    })
    .await;
}

// === List ===

#[tokio::test]
async fn list_emits_the_root_as_dot_then_its_children_in_lexical_order() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        let root = fixture.allowed.display().to_string();
        let (entries, end) = fixture
            .list(list_request(&root, false, 0))
            .await
            .expect("List");
        assert!(end.is_none(), "{end:?}");
        assert_eq!(
            names(&entries),
            [
                ".", "a.txt", "big.bin", "dir", "link-in", "link-out", "state"
            ]
        );
        let by_name = |name: &str| {
            entries
                .iter()
                .find(|e| e.relative_name == name)
                .expect("entry")
        };
        let root_entry = by_name(".");
        assert_eq!(root_entry.name, root);
        assert!(root_entry.is_dir);
        assert_eq!(root_entry.mode & (1 << 31), 1 << 31, "Go ModeDir");
        let file = by_name("a.txt");
        let meta = std::fs::metadata(fixture.allowed.join("a.txt")).expect("stat");
        assert_eq!(file.size, 5);
        assert_eq!(
            file.mode,
            meta.mode() & 0o777,
            "a regular file has no type bits"
        );
        assert_eq!((file.uid, file.gid), (meta.uid(), meta.gid()));
        assert_eq!(file.modified, meta.mtime());
        assert_eq!(file.name, fixture.path("a.txt"));
        let link = by_name("link-out");
        assert_eq!(link.link, "../outside");
        assert_eq!(link.mode & (1 << 27), 1 << 27, "Go ModeSymlink");
        assert!(!link.is_dir);
        // The denied directory is shown, with why it was not entered.
        let state = by_name("state");
        assert!(state.error.contains("test state"), "{state:?}");
        assert!(entries.iter().all(|e| e.metadata.is_none()));
        fixture.stop().await;
    })
    .await;
}

#[tokio::test]
async fn list_recursion_depth_follows_talos_and_never_follows_symlinks() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        let root = fixture.allowed.display().to_string();
        let all = |recurse, depth| fixture.list(list_request(&root, recurse, depth));
        let (unlimited, _) = all(true, 0).await.expect("List");
        assert_eq!(
            names(&unlimited),
            [
                ".",
                "a.txt",
                "big.bin",
                "dir",
                "dir/b.txt",
                "dir/sub",
                "dir/sub/c.txt",
                "link-in",
                "link-out",
                "state",
            ],
            "nothing below link-out (outside) or state (denied)"
        );
        let (two, _) = all(true, 2).await.expect("List");
        assert_eq!(
            names(&two),
            [
                ".",
                "a.txt",
                "big.bin",
                "dir",
                "dir/b.txt",
                "dir/sub",
                "link-in",
                "link-out",
                "state",
            ]
        );
        let (one, _) = all(true, 1).await.expect("List");
        let (flat, _) = all(false, 5).await.expect("List");
        assert_eq!(names(&one), names(&flat));
        fixture.stop().await;
    })
    .await;
}

#[tokio::test]
async fn list_types_filter_what_is_sent_not_what_is_walked() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        let mut request = list_request(&fixture.allowed.display().to_string(), true, 0);
        request.types = vec![Type::Regular as i32];
        let (entries, _) = fixture.list(request.clone()).await.expect("List");
        assert_eq!(
            names(&entries),
            ["a.txt", "big.bin", "dir/b.txt", "dir/sub/c.txt", "state"],
            "regular files, plus the denied directory's error entry"
        );
        request.types = vec![Type::Symlink as i32, Type::Directory as i32];
        let (entries, _) = fixture.list(request).await.expect("List");
        assert_eq!(
            names(&entries),
            [".", "dir", "dir/sub", "link-in", "link-out", "state"]
        );
        fixture.stop().await;
    })
    .await;
}

#[tokio::test]
async fn list_of_a_symlinked_root_lists_its_target() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        symlink("dir", fixture.allowed.join("dir-link")).expect("symlink");
        let (entries, _) = fixture
            .list(list_request(&fixture.path("dir-link"), false, 0))
            .await
            .expect("List");
        assert_eq!(names(&entries), [".", "b.txt", "sub"]);
        assert_eq!(entries[0].name, fixture.path("dir"));
        fixture.stop().await;
    })
    .await;
}

#[tokio::test]
async fn list_refuses_every_bad_path() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        every_rejection(&fixture, |root| fixture.list(list_request(&root, true, 0))).await;
        fixture.stop().await;
    })
    .await;
}

#[tokio::test]
async fn list_stops_at_the_entry_limit_with_resource_exhausted() {
    within_deadline(async {
        let fixture = Fixture::start_with(|policy| policy.with_max_walk_entries(4)).await;
        let (entries, end) = fixture
            .list(list_request(
                &fixture.allowed.display().to_string(),
                true,
                0,
            ))
            .await
            .expect("List");
        assert_eq!(names(&entries), [".", "a.txt", "big.bin", "dir"]);
        let end = end.expect("the stream ends with an error");
        assert_eq!(end.code(), Code::ResourceExhausted);
        assert!(end.message().contains("stopped after 4 entries"), "{end:?}");
        fixture.stop().await;
    })
    .await;
}

// === DiskUsage ===

#[tokio::test]
async fn disk_usage_sums_children_and_emits_directories_after_them() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        let dir = fixture.allowed.join("dir");
        let dir_size = |path: &Path| std::fs::metadata(path).expect("stat").size() as i64;
        let sub = dir_size(&dir.join("sub")) + 7;
        let total = dir_size(&dir) + 5 + sub;
        let entries = fixture
            .usage(DiskUsageRequest {
                paths: vec![dir.display().to_string()],
                all: true,
                ..DiskUsageRequest::default()
            })
            .await
            .expect("DiskUsage");
        let got: Vec<(&str, i64)> = entries
            .iter()
            .map(|e| (e.relative_name.as_str(), e.size))
            .collect();
        assert_eq!(
            got,
            [("b.txt", 5), ("sub/c.txt", 7), ("sub", sub), (".", total)]
        );
        // Directories only, one level.
        let entries = fixture
            .usage(DiskUsageRequest {
                paths: vec![dir.display().to_string()],
                recursion_depth: 1,
                ..DiskUsageRequest::default()
            })
            .await
            .expect("DiskUsage");
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].relative_name.as_str(), entries[0].size),
            (".", total)
        );
        fixture.stop().await;
    })
    .await;
}

#[tokio::test]
async fn disk_usage_reports_a_denied_directory_without_measuring_it() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        let entries = fixture
            .usage(DiskUsageRequest {
                paths: vec![fixture.allowed.display().to_string()],
                recursion_depth: 2,
                ..DiskUsageRequest::default()
            })
            .await
            .expect("DiskUsage");
        let state = entries
            .iter()
            .find(|e| e.relative_name == "state")
            .expect("state entry");
        assert!(state.error.contains("test state"), "{state:?}");
        assert_eq!(state.size, 0);
        let root = entries.last().expect("root last");
        assert_eq!(root.relative_name, ".");
        assert!(root.size > 5_000_000, "big.bin is counted: {root:?}");
        fixture.stop().await;
    })
    .await;
}

#[tokio::test]
async fn disk_usage_refuses_every_bad_path_and_an_empty_request() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        every_rejection(&fixture, |path| {
            // The bad path second: nothing is measured before every path is checked.
            fixture.usage(DiskUsageRequest {
                paths: vec![fixture.path("dir"), path],
                ..DiskUsageRequest::default()
            })
        })
        .await;
        let status = fixture
            .usage(DiskUsageRequest::default())
            .await
            .expect_err("no paths");
        assert_eq!(status.code(), Code::InvalidArgument);
        fixture.stop().await;
    })
    .await;
}

/// One walk budget for the whole call: naming a tree many times walks no more than the limit
/// (each path had its own budget before 2026-12-08, and one 32 MiB request could name `/`
/// millions of times); more than 256 paths are refused before anything is resolved.
#[tokio::test]
async fn disk_usage_shares_one_walk_limit_across_its_paths_and_caps_their_number() {
    within_deadline(async {
        // `dir` is 4 entries: dir, dir/b.txt, dir/sub, dir/sub/c.txt.
        let fixture = Fixture::start_with(|policy| policy.with_max_walk_entries(4)).await;
        let dir = fixture.path("dir");
        let once = fixture
            .usage(DiskUsageRequest {
                paths: vec![dir.clone()],
                ..DiskUsageRequest::default()
            })
            .await
            .expect("one tree within the limit");
        assert!(!once.is_empty());
        let status = fixture
            .usage(DiskUsageRequest {
                paths: vec![dir.clone(), dir.clone()],
                ..DiskUsageRequest::default()
            })
            .await
            .expect_err("twice the tree is over the limit");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("stopped after 4 entries"),
            "{status:?}"
        );

        // Far more paths than that, in a request over DiskUsage's 2 MiB: refused as it
        // arrives, before it is decoded into millions of strings.
        let status = fixture
            .usage(DiskUsageRequest {
                paths: vec!["/".to_owned(); 1_000_000],
                ..DiskUsageRequest::default()
            })
            .await
            .expect_err("a request over the method's limit");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(
            status.message(),
            "request message of 3000000 bytes exceeds this method's limit of 2097152 bytes"
        );

        let status = fixture
            .usage(DiskUsageRequest {
                paths: vec![dir; 257],
                ..DiskUsageRequest::default()
            })
            .await
            .expect_err("too many paths");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .contains("257 paths named; one call measures at most 256"),
            "{status:?}"
        );
        fixture.stop().await;
    })
    .await;
}

// === Copy ===

/// One unpacked archive entry: path, kind (`f`, `d`, `l`), contents or link target.
type TarEntry = (String, char, Vec<u8>);

/// The tar.gz stream of a Copy, unpacked in memory, and the final message's error.
fn untar(chunks: &[Data]) -> (Vec<TarEntry>, Option<String>) {
    let mut gz = Vec::new();
    let mut error = None;
    for chunk in chunks {
        match &chunk.metadata {
            Some(metadata) => error = Some(metadata.error.clone()),
            None => gz.extend_from_slice(&chunk.bytes),
        }
    }
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz.as_slice()));
    let mut entries = Vec::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let path = entry.path().expect("path").display().to_string();
        let kind = entry.header().entry_type();
        let (kind, data) = if kind.is_dir() {
            ('d', Vec::new())
        } else if kind.is_symlink() {
            let target = entry.link_name().expect("link").expect("target");
            ('l', target.display().to_string().into_bytes())
        } else {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("data");
            ('f', data)
        };
        entries.push((path, kind, data));
    }
    (entries, error)
}

#[tokio::test]
async fn copy_output_untars_to_the_same_tree_with_symlinks_as_symlinks() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        let chunks = fixture
            .copy(&fixture.allowed.display().to_string())
            .await
            .expect("Copy");
        let (entries, error) = untar(&chunks);
        let summary: Vec<(&str, char)> = entries.iter().map(|(p, k, _)| (p.as_str(), *k)).collect();
        assert_eq!(
            summary,
            [
                ("a.txt", 'f'),
                ("big.bin", 'f'),
                ("dir", 'd'),
                ("dir/b.txt", 'f'),
                ("dir/sub", 'd'),
                ("dir/sub/c.txt", 'f'),
                ("link-in", 'l'),
                ("link-out", 'l'),
            ],
            "the root is not an entry, the denied directory is skipped, nothing outside"
        );
        let data = |name: &str| {
            entries
                .iter()
                .find(|(p, _, _)| p == name)
                .map(|(_, _, d)| d.clone())
                .expect("entry")
        };
        assert_eq!(data("a.txt"), b"alpha");
        assert!(data("big.bin") == big());
        assert_eq!(data("dir/sub/c.txt"), b"charlie");
        assert_eq!(data("link-out"), b"../outside");
        let error = error.expect("a final message lists what was skipped");
        assert!(
            error.contains("state") && error.contains("test state"),
            "{error}"
        );
        fixture.stop().await;
    })
    .await;
}

#[tokio::test]
async fn copy_of_a_file_is_one_entry_named_after_it() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        let chunks = fixture
            .copy(&fixture.path("dir/b.txt"))
            .await
            .expect("Copy");
        let (entries, error) = untar(&chunks);
        assert_eq!(entries, [("b.txt".to_owned(), 'f', b"bravo".to_vec())]);
        assert!(error.is_none());
        fixture.stop().await;
    })
    .await;
}

#[tokio::test]
async fn copy_refuses_every_bad_path() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        let f = &fixture;
        every_rejection(f, |path| async move { f.copy(&path).await }).await;
        fixture.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_hold_machined_up() {
    within_deadline(async {
        let fixture = Fixture::start().await;
        let mut stream = fixture
            .machined
            .machine()
            .await
            .read(with_roles(
                ReadRequest {
                    path: fixture.path("big.bin"),
                },
                &["os:admin"],
            ))
            .await
            .expect("Read")
            .into_inner();
        let first = stream.message().await.expect("chunk").expect("some data");
        assert!(!first.bytes.is_empty());
        drop(stream);
        let started = std::time::Instant::now();
        fixture.stop().await;
        assert!(
            started.elapsed() < machined::DRAIN_TIMEOUT,
            "shutdown waited for an abandoned stream"
        );
    })
    .await;
}
