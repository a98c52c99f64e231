//! The system-information handlers answer with real data, in Talos's envelope: exactly one
//! element in `messages`, its `metadata` unset.

mod support;

use support::{Machined, with_roles, within_deadline};

#[tokio::test]
async fn version_tag_is_semver_and_platform_is_container() {
    within_deadline(async {
        let machined = Machined::start().await;
        let reply = machined
            .machine()
            .await
            .version(with_roles((), &["os:reader"]))
            .await
            .expect("Version")
            .into_inner();
        let [version] = reply.messages.as_slice() else {
            panic!("exactly one message expected: {reply:?}");
        };
        assert!(version.metadata.is_none());
        let info = version.version.as_ref().expect("version info");
        let tag = info.tag.strip_prefix('v').expect("tag starts with v");
        semver::Version::parse(tag).expect("tag is semver");
        assert_eq!(info.os, "linux");
        assert!(!info.arch.is_empty());
        let platform = version.platform.as_ref().expect("platform");
        assert_eq!(platform.mode, "container");
        assert_eq!(platform.name, "container");
        assert!(version.features.as_ref().expect("features").rbac);
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn memory_total_matches_proc_meminfo() {
    within_deadline(async {
        let machined = Machined::start().await;
        let reply = machined
            .machine()
            .await
            .memory(with_roles((), &["os:reader"]))
            .await
            .expect("Memory")
            .into_inner();
        assert_eq!(reply.messages.len(), 1);
        assert!(reply.messages[0].metadata.is_none());
        let meminfo = reply.messages[0].meminfo.expect("meminfo");
        let proc = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
        let total_kb: u64 = proc
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .expect("MemTotal in /proc/meminfo");
        assert!(meminfo.memtotal > 0);
        assert_eq!(meminfo.memtotal, total_kb);
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn hostname_is_the_configured_one() {
    within_deadline(async {
        let machined = Machined::start().await;
        let reply = machined
            .machine()
            .await
            .hostname(with_roles((), &["os:reader"]))
            .await
            .expect("Hostname")
            .into_inner();
        assert_eq!(reply.messages.len(), 1);
        assert_eq!(reply.messages[0].hostname, "node-1");
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn every_read_only_handler_answers_one_message_without_metadata() {
    within_deadline(async {
        let machined = Machined::start().await;
        let mut client = machined.machine().await;
        let reader = || with_roles((), &["os:reader"]);

        let cpus = client
            .cpu_info(reader())
            .await
            .expect("CPUInfo")
            .into_inner();
        assert_eq!(cpus.messages.len(), 1);
        assert!(cpus.messages[0].metadata.is_none());
        assert!(!cpus.messages[0].cpu_info.is_empty());

        let load = client
            .load_avg(reader())
            .await
            .expect("LoadAvg")
            .into_inner();
        assert_eq!(load.messages.len(), 1);
        assert!(load.messages[0].metadata.is_none());

        let stat = client
            .system_stat(reader())
            .await
            .expect("SystemStat")
            .into_inner();
        assert_eq!(stat.messages.len(), 1);
        assert!(stat.messages[0].metadata.is_none());
        assert!(stat.messages[0].boot_time > 0);

        let processes = client
            .processes(reader())
            .await
            .expect("Processes")
            .into_inner();
        assert_eq!(processes.messages.len(), 1);
        let me = i32::try_from(std::process::id()).expect("pid");
        assert!(
            processes.messages[0].processes.iter().any(|p| p.pid == me),
            "the test process itself is listed"
        );
        // A process that names itself with bytes that are not UTF-8 is listed all the same
        // (it was dropped before 2026-12-08: a way to hide from Processes).
        let mut hidden = std::process::Command::new("python3")
            .args([
                "-c",
                "import ctypes, sys; ctypes.CDLL(None).prctl(15, b'ev\\xffil', 0, 0, 0); \
                 print(flush=True); sys.stdin.read()",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run python3");
        let mut renamed = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(hidden.stdout.as_mut().expect("stdout")),
            &mut renamed,
        )
        .expect("python3 renamed itself");
        let processes = client
            .processes(reader())
            .await
            .expect("Processes")
            .into_inner();
        let pid = i32::try_from(hidden.id()).expect("pid");
        let listed = processes.messages[0]
            .processes
            .iter()
            .find(|p| p.pid == pid);
        drop(hidden.stdin.take());
        let _ = hidden.wait();
        assert_eq!(
            listed.map(|p| p.command.as_str()),
            Some("ev\u{fffd}il"),
            "a process with a non-UTF-8 name is listed"
        );

        let mounts = client.mounts(reader()).await.expect("Mounts").into_inner();
        assert_eq!(mounts.messages.len(), 1);
        let root = mounts.messages[0]
            .stats
            .iter()
            .find(|m| m.mounted_on == "/")
            .expect("/ is mounted");
        assert!(root.size > 0);

        let disks = client
            .disk_stats(reader())
            .await
            .expect("DiskStats")
            .into_inner();
        assert_eq!(disks.messages.len(), 1);
        assert_eq!(
            disks.messages[0].total.as_ref().expect("total").name,
            "total"
        );

        let net = client
            .network_device_stats(reader())
            .await
            .expect("NetworkDeviceStats")
            .into_inner();
        assert_eq!(net.messages.len(), 1);
        assert!(net.messages[0].devices.iter().any(|d| d.name == "lo"));

        machined.stop().await;
    })
    .await;
}
