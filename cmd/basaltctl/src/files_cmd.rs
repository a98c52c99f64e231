//! Commands on a node's files and kernel log: `ls`, `usage`, `read`, `cp`, `dmesg`.
//!
//! `ls` and `usage` follow the node commands' pattern: one call per target node, a NODE column
//! in tables, one object per node in json/yaml (its entries, or its error), failed nodes listed
//! on stderr and a non-zero exit. Per-entry errors (an unreadable directory, a denied path met
//! while walking) go to stderr as talosctl prints them and do not fail the command.
//!
//! `read` on one node copies the file's bytes to stdout; on several nodes it prints each node's
//! file in turn, every line prefixed by the node. `cp` moves bytes from exactly one node (with
//! several nodes the archives would mix).
//! `cp` unpacks the tar.gz stream while it arrives, refusing any entry that would land outside
//! the destination (absolute paths, `..`, writing through a symlink the archive just created).
//!
//! `dmesg` prints each node's kernel log; with several nodes each line is prefixed by the node,
//! and `-f` follows all of them at once.

use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, bail};
use basalt_api::common::Data;
use basalt_api::machine::{
    CopyRequest, DiskUsageInfo, DiskUsageRequest, DmesgRequest, FileInfo, ListRequest, ReadRequest,
    list_request,
};
use basalt_client::{Client, NodeResult, targeted_request};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::{Response, Status, Streaming};

use crate::Globals;
use crate::connect::{TargetArgs, connect, connect_with_timeout, runtime};
use crate::node_cmd::NodeArgs;
use crate::output::{self, ErrorView, Render};
use crate::usage::UsageError;

#[derive(Debug, Subcommand)]
pub(crate) enum FilesCommand {
    /// List a directory on each node: the path itself as `.`, then its entries.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show how much space paths take on each node, like `du`.
    #[command(visible_alias = "du")]
    Usage(UsageArgs),
    /// Print a file of one node to stdout, byte for byte.
    Read(ReadArgs),
    /// Copy a file or directory tree from one node into a local directory.
    #[command(visible_alias = "copy")]
    Cp(CpArgs),
    /// Print each node's kernel log.
    Dmesg(DmesgArgs),
}

#[derive(Debug, Args)]
pub(crate) struct LsArgs {
    /// The directory (or file) to list.
    #[arg(default_value = "/")]
    path: String,
    /// Recurse into subdirectories.
    #[arg(short, long)]
    recurse: bool,
    /// How many levels to list; implies --recurse (0: no limit).
    #[arg(short, long, default_value_t = 0, value_name = "N")]
    depth: i32,
    /// Long listing: mode, owner, size and modification time.
    #[arg(short, long)]
    long: bool,
    /// Sizes in KiB, MiB, … instead of bytes.
    #[arg(short = 'H', long)]
    humanize: bool,
    /// Only entries of these types (comma-separated or repeated).
    #[arg(short = 't', long = "type", value_enum, value_delimiter = ',')]
    types: Vec<FileType>,
    #[command(flatten)]
    node: NodeArgs,
}

/// `ls --type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FileType {
    /// Regular files.
    #[value(name = "f")]
    Regular,
    /// Directories.
    #[value(name = "d")]
    Directory,
    /// Symbolic links.
    #[value(name = "l")]
    Symlink,
}

#[derive(Debug, Args)]
pub(crate) struct UsageArgs {
    /// The paths to measure.
    #[arg(required = true)]
    paths: Vec<String>,
    /// Show files too, not only directories.
    #[arg(short, long)]
    all: bool,
    /// How many levels to show (0: all; 1: only the paths themselves).
    #[arg(short, long, default_value_t = 0, value_name = "N")]
    depth: i32,
    /// Only sizes of at least N bytes; a negative N shows only sizes of at most -N.
    #[arg(
        short,
        long,
        default_value_t = 0,
        allow_negative_numbers = true,
        value_name = "N"
    )]
    threshold: i64,
    /// Sizes in KiB, MiB, … instead of bytes.
    #[arg(short = 'H', long)]
    humanize: bool,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ReadArgs {
    /// The file to print (absolute path on the node).
    path: String,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Args)]
pub(crate) struct CpArgs {
    /// The file or directory to copy (absolute path on the node).
    path: String,
    /// Local directory to unpack into (created if missing), or `-` for the raw tar.gz on
    /// stdout.
    dest: PathBuf,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DmesgArgs {
    /// Keep printing new messages as the kernel logs them.
    #[arg(short, long)]
    follow: bool,
    /// Start at the end of the log: only messages logged from now on (use with --follow).
    #[arg(long)]
    tail: bool,
    #[command(flatten)]
    target: TargetArgs,
}

pub(crate) fn run(cmd: FilesCommand, globals: &Globals) -> anyhow::Result<()> {
    let rt = runtime()?;
    match cmd {
        FilesCommand::Ls(args) => rt.block_on(ls(globals, args)),
        FilesCommand::Usage(args) => rt.block_on(usage(globals, args)),
        FilesCommand::Read(args) => rt.block_on(read(globals, args)),
        FilesCommand::Cp(args) => rt.block_on(cp(globals, args)),
        FilesCommand::Dmesg(args) => rt.block_on(dmesg(globals, args)),
    }
}

// === ls ===

async fn ls(globals: &Globals, args: LsArgs) -> anyhow::Result<()> {
    let request = ListRequest {
        root: args.path.clone(),
        recurse: args.recurse || args.depth > 0,
        recursion_depth: args.depth,
        types: args
            .types
            .iter()
            .map(|t| match t {
                FileType::Regular => list_request::Type::Regular,
                FileType::Directory => list_request::Type::Directory,
                FileType::Symlink => list_request::Type::Symlink,
            } as i32)
            .collect(),
        report_xattrs: false,
    };
    let client = connect(globals, &args.node.target).await?;
    let results = client
        .each_node(request, |client, request| async move {
            collect(client.machine().list(request).await?).await
        })
        .await;
    let listing = Listing {
        nodes: per_node(results, EntryView::from),
        columns: if args.long {
            Columns::Long {
                humanize: args.humanize,
            }
        } else {
            Columns::Short
        },
    };
    output::print(args.node.output.format, &listing)?;
    finish(&listing.nodes)
}

/// `ls` output: per node, its entries.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Listing {
    nodes: Vec<NodeEntries<EntryView>>,
    #[serde(skip)]
    columns: Columns,
}

#[derive(Debug, Clone, Copy)]
enum Columns {
    Short,
    Long { humanize: bool },
}

impl Render for Listing {
    fn headers(&self) -> Vec<&'static str> {
        match self.columns {
            Columns::Short => vec!["NODE", "NAME"],
            Columns::Long { .. } => {
                vec!["NODE", "MODE", "UID", "GID", "SIZE(B)", "LASTMOD", "NAME"]
            }
        }
    }

    fn rows(&self) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for node in &self.nodes {
            for info in node.entries.iter().filter(|info| info.error.is_none()) {
                let mut name = info.relative_name.clone();
                if let Some(link) = &info.link {
                    name = format!("{name} -> {link}");
                }
                rows.push(match self.columns {
                    Columns::Short => vec![node.node.clone(), name],
                    Columns::Long { humanize } => vec![
                        node.node.clone(),
                        info.mode.clone(),
                        info.uid.to_string(),
                        info.gid.to_string(),
                        size_text(info.size, humanize),
                        info.modified.clone(),
                        name,
                    ],
                });
            }
        }
        rows
    }
}

// === usage ===

async fn usage(globals: &Globals, args: UsageArgs) -> anyhow::Result<()> {
    let request = DiskUsageRequest {
        recursion_depth: args.depth,
        all: args.all,
        threshold: args.threshold,
        paths: args.paths.clone(),
    };
    let client = connect(globals, &args.node.target).await?;
    let results = client
        .each_node(request, |client, request| async move {
            collect(client.machine().disk_usage(request).await?).await
        })
        .await;
    let report = Usage {
        nodes: per_node(results, UsageView::from),
        humanize: args.humanize,
    };
    output::print(args.node.output.format, &report)?;
    finish(&report.nodes)
}

/// `usage` output: per node, its sizes.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Usage {
    nodes: Vec<NodeEntries<UsageView>>,
    #[serde(skip)]
    humanize: bool,
}

impl Render for Usage {
    fn headers(&self) -> Vec<&'static str> {
        vec!["NODE", "NAME", "SIZE"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.nodes
            .iter()
            .flat_map(|node| {
                node.entries
                    .iter()
                    .filter(|info| info.error.is_none())
                    .map(|info| {
                        vec![
                            node.node.clone(),
                            info.name.clone(),
                            size_text(info.size, self.humanize),
                        ]
                    })
            })
            .collect()
    }
}

// === per-node streamed replies ===

/// What one node streamed: every message, and the status the stream ended with when it was
/// not OK (e.g. ResourceExhausted after a walk's entry limit, with the entries before it).
#[derive(Debug)]
struct Collected<M> {
    messages: Vec<M>,
    end: Option<Status>,
}

/// Reads a whole response stream.
async fn collect<M>(response: Response<Streaming<M>>) -> Result<Response<Collected<M>>, Status> {
    let mut stream = response.into_inner();
    let mut messages = Vec::new();
    let end = loop {
        match stream.message().await {
            Ok(Some(message)) => messages.push(message),
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    Ok(Response::new(Collected { messages, end }))
}

/// One node's entries in json/yaml: `{node, entries}` or `{node, entries, error}`.
#[derive(Debug, Serialize)]
struct NodeEntries<M> {
    node: String,
    entries: Vec<M>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorView>,
}

/// An entry as printed: per-entry errors go to stderr as talosctl words them.
trait EntryLike {
    fn name(&self) -> &str;
    fn error(&self) -> Option<&str>;
}

/// Per-node results → per-node entries; prints each per-entry error to stderr.
fn per_node<M, V: EntryLike>(
    results: Vec<NodeResult<Collected<M>>>,
    view: impl Fn(M) -> V,
) -> Vec<NodeEntries<V>> {
    results
        .into_iter()
        .map(|NodeResult { node, result }| match result {
            Ok(Collected { messages, end }) => {
                let entries: Vec<V> = messages.into_iter().map(&view).collect();
                for entry in &entries {
                    if let Some(error) = entry.error() {
                        eprintln!("{node}: error reading file {}: {error}", entry.name());
                    }
                }
                NodeEntries {
                    node,
                    entries,
                    error: end.as_ref().map(ErrorView::from_status),
                }
            }
            Err(status) => NodeEntries {
                node,
                entries: Vec::new(),
                error: Some(ErrorView::from_status(&status)),
            },
        })
        .collect()
}

/// One `ls` entry in json/yaml; `mode` as Go prints it, `modified` in RFC 3339.
#[derive(Debug, Serialize)]
struct EntryView {
    name: String,
    relative_name: String,
    size: i64,
    mode: String,
    mode_bits: u32,
    modified: String,
    is_dir: bool,
    uid: u32,
    gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl From<FileInfo> for EntryView {
    fn from(info: FileInfo) -> Self {
        EntryView {
            mode: mode_string(info.mode),
            mode_bits: info.mode,
            modified: unix_time(info.modified),
            name: info.name,
            relative_name: info.relative_name,
            size: info.size,
            is_dir: info.is_dir,
            uid: info.uid,
            gid: info.gid,
            link: non_empty(info.link),
            error: non_empty(info.error),
        }
    }
}

impl EntryLike for EntryView {
    fn name(&self) -> &str {
        &self.name
    }

    fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

/// One `usage` entry in json/yaml; `size` in bytes.
#[derive(Debug, Serialize)]
struct UsageView {
    name: String,
    relative_name: String,
    size: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl From<DiskUsageInfo> for UsageView {
    fn from(info: DiskUsageInfo) -> Self {
        UsageView {
            name: info.name,
            relative_name: info.relative_name,
            size: info.size,
            error: non_empty(info.error),
        }
    }
}

impl EntryLike for UsageView {
    fn name(&self) -> &str {
        &self.name
    }

    fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// Lists every failed node on stderr and fails when there was any.
fn finish<M>(nodes: &[NodeEntries<M>]) -> anyhow::Result<()> {
    output::report_failures(
        nodes.len(),
        nodes
            .iter()
            .filter_map(|n| n.error.as_ref().map(|err| (n.node.as_str(), err))),
    )
}

// === read ===

async fn read(globals: &Globals, args: ReadArgs) -> anyhow::Result<()> {
    let client = connect(globals, &args.target).await?;
    if client.nodes().len() > 1 {
        return read_several(&client, args.path).await;
    }
    let (node, request) = one_node(
        &client,
        ReadRequest {
            path: args.path.clone(),
        },
        "read",
    )?;
    let mut stream = client
        .machine()
        .read(request)
        .await
        .map_err(|status| node_failed(&node, &status))?
        .into_inner();
    let mut out = io::stdout().lock();
    while let Some(data) = stream
        .message()
        .await
        .map_err(|status| node_failed(&node, &status))?
    {
        if let Some(error) = metadata_error(&data) {
            bail!("node {node}: {error}");
        }
        if let Err(err) = out.write_all(&data.bytes) {
            return quiet_broken_pipe(err);
        }
    }
    out.flush().or_else(quiet_broken_pipe)
}

/// `read` on several nodes: each node's file is read whole, then printed in node order with
/// every line prefixed by the node (grouped, so nodes never interleave), as `logs` prints
/// several nodes.
async fn read_several(client: &Client, path: String) -> anyhow::Result<()> {
    let results = client
        .each_node(ReadRequest { path }, |client, request| async move {
            collect(client.machine().read(request).await?).await
        })
        .await;
    let total = results.len();
    let mut failures = Vec::new();
    let mut out = io::stdout().lock();
    for NodeResult { node, result } in results {
        let Collected { messages, end } = match result {
            Ok(collected) => collected,
            Err(status) => {
                failures.push((node, ErrorView::from_status(&status)));
                continue;
            }
        };
        let mut prefixer = output::LinePrefixer::new(Some(format!("{node}: ")));
        let mut bytes = Vec::new();
        for data in &messages {
            if let Some(error) = metadata_error(data) {
                failures.push((node.clone(), ErrorView::new(tonic::Code::Unknown, error)));
                continue;
            }
            bytes.extend(prefixer.apply(&data.bytes));
        }
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            // The next node starts on its own line.
            bytes.push(b'\n');
        }
        if let Err(err) = out.write_all(&bytes) {
            return quiet_broken_pipe(err);
        }
        if let Some(status) = end {
            failures.push((node, ErrorView::from_status(&status)));
        }
    }
    if let Err(err) = out.flush() {
        return quiet_broken_pipe(err);
    }
    drop(out);
    output::report_failures(
        total,
        failures.iter().map(|(node, err)| (node.as_str(), err)),
    )
}

/// `| head` closing stdout early is not an error of ours.
fn quiet_broken_pipe(err: io::Error) -> anyhow::Result<()> {
    if err.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(anyhow::Error::new(err).context("write to stdout"))
    }
}

// === cp ===

async fn cp(globals: &Globals, args: CpArgs) -> anyhow::Result<()> {
    let client = connect(globals, &args.target).await?;
    let (node, request) = one_node(
        &client,
        CopyRequest {
            root_path: args.path.clone(),
        },
        "cp",
    )?;
    let mut stream = client
        .machine()
        .copy(request)
        .await
        .map_err(|status| node_failed(&node, &status))?
        .into_inner();

    let to_stdout = args.dest.as_os_str() == "-";
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let dest = args.dest.clone();
    let unpacker =
        (!to_stdout).then(|| std::thread::spawn(move || unpack(ChannelReader::new(rx), &dest)));
    let mut out = to_stdout.then(|| io::stdout().lock());
    let mut skipped = Vec::new();
    let mut failure = None;
    loop {
        let data = match stream.message().await {
            Ok(Some(data)) => data,
            Ok(None) => break,
            Err(status) => {
                failure = Some(node_failed(&node, &status));
                break;
            }
        };
        if let Some(error) = metadata_error(&data) {
            skipped.push(error.to_owned());
            continue;
        }
        if let Some(out) = out.as_mut() {
            out.write_all(&data.bytes).context("write to stdout")?;
        } else if tx.send(data.bytes).await.is_err() {
            // The unpacker stopped on an error; it says which below.
            break;
        }
    }
    drop(tx);
    if let Some(out) = out.as_mut() {
        out.flush().context("write to stdout")?;
    }
    if let Some(unpacker) = unpacker {
        let unpacked = unpacker
            .join()
            .map_err(|_| anyhow::anyhow!("the unpacking thread panicked"))?;
        // A broken stream shows up as a truncated archive; report the node's reason first.
        if let Some(failure) = failure {
            return Err(failure);
        }
        unpacked.with_context(|| format!("unpack into {}", args.dest.display()))?;
    } else if let Some(failure) = failure {
        return Err(failure);
    }
    if !skipped.is_empty() {
        bail!(
            "node {node}: some entries were not copied: {}",
            skipped.join("; ")
        );
    }
    Ok(())
}

/// Unpacks a tar.gz into `dest` (created if missing). Only regular files, directories and
/// symlinks are accepted; an entry that would land outside `dest` fails the whole unpack:
/// absolute paths and `..` are checked here, and tar's `unpack_in` refuses to write through a
/// symlink that resolves outside `dest` (e.g. `link -> /etc` followed by `link/passwd`).
fn unpack(reader: impl Read, dest: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dest).with_context(|| format!("create {}", dest.display()))?;
    let root =
        std::fs::canonicalize(dest).with_context(|| format!("resolve {}", dest.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    archive.set_overwrite(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    let mut count = 0;
    for entry in archive.entries().context("read the archive")? {
        let mut entry = entry.context("read the archive")?;
        let path = entry.path().context("read an entry's path")?.into_owned();
        if !stays_inside(&path) {
            bail!(
                "refusing archive entry {}: it would land outside {}",
                path.display(),
                dest.display()
            );
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            bail!(
                "refusing archive entry {}: type {kind:?} is not a file, directory or symlink",
                path.display()
            );
        }
        let unpacked = entry.unpack_in(&root).with_context(|| {
            format!(
                "refusing archive entry {}: it would land outside {}",
                path.display(),
                dest.display()
            )
        })?;
        if !unpacked {
            bail!(
                "refusing archive entry {}: it would land outside {}",
                path.display(),
                dest.display()
            );
        }
        count += 1;
    }
    Ok(count)
}

/// A relative path without `..`: it cannot leave the directory it is joined to (symlinks
/// aside, which `unpack_in` checks).
fn stays_inside(path: &Path) -> bool {
    path.components().next().is_some()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// A `Read` over chunks arriving from the async side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

// === dmesg ===

async fn dmesg(globals: &Globals, args: DmesgArgs) -> anyhow::Result<()> {
    // A followed stream runs until the user stops it: no per-call deadline then.
    let client = if args.follow {
        connect_with_timeout(globals, &args.target, None).await?
    } else {
        connect(globals, &args.target).await?
    };
    let request = DmesgRequest {
        follow: args.follow,
        tail: args.tail,
    };
    let prefix = client.nodes().len() > 1;
    let streams = client
        .each_node(request, |client, request| async move {
            client.machine().dmesg(request).await
        })
        .await;
    let total = streams.len();
    let order: Vec<String> = streams.iter().map(|r| r.node.clone()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    let mut failed = Vec::new();
    for NodeResult { node, result } in streams {
        match result {
            Ok(stream) => {
                tasks.spawn(async move {
                    let result = print_log(&node, prefix, stream).await;
                    (node, result)
                });
            }
            Err(status) => failed.push((node, ErrorView::from_status(&status))),
        }
    }
    while let Some(joined) = tasks.join_next().await {
        let (node, result) = joined.context("a dmesg task failed")?;
        if let Err(status) = result {
            failed.push((node, ErrorView::from_status(&status)));
        }
    }
    // Failures in node order, whatever order the streams ended in.
    failed.sort_by_key(|(node, _)| order.iter().position(|n| n == node));
    output::report_failures(total, failed.iter().map(|(node, err)| (node.as_str(), err)))
}

/// Copies one node's records to stdout, each in one write so nodes do not interleave within a
/// line.
async fn print_log(node: &str, prefix: bool, mut stream: Streaming<Data>) -> Result<(), Status> {
    while let Some(data) = stream.message().await? {
        if let Some(error) = metadata_error(&data) {
            eprintln!("warning: node {node}: {error}");
            continue;
        }
        let line = if prefix {
            let mut line = format!("{node}: ").into_bytes();
            line.extend_from_slice(&data.bytes);
            line
        } else {
            data.bytes
        };
        if let Err(err) = io::stdout().lock().write_all(&line) {
            if err.kind() == io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(Status::unknown(format!("write to stdout: {err}")));
        }
    }
    Ok(())
}

// === helpers ===

/// The only node a byte-moving command talks to, and its request.
fn one_node<M>(
    client: &Client,
    message: M,
    command: &str,
) -> anyhow::Result<(String, tonic::Request<M>)> {
    let nodes = client.nodes();
    if nodes.len() > 1 {
        return Err(UsageError::msg(format!(
            "{command} works on one node at a time; got {} (-n {})",
            nodes.len(),
            nodes.join(",")
        )));
    }
    let node = nodes.first().map(String::as_str);
    let request = targeted_request(node, message)?;
    let name = node.map_or_else(|| client.endpoint().to_string(), str::to_owned);
    Ok((name, request))
}

fn node_failed(node: &str, status: &Status) -> anyhow::Error {
    anyhow::anyhow!("node {node}: {:?}: {}", status.code(), status.message())
}

/// The error a message carries in its metadata (Talos: a failed node in a fan-out, or what
/// Copy skipped).
fn metadata_error(data: &Data) -> Option<&str> {
    data.metadata
        .as_ref()
        .map(|m| m.error.as_str())
        .filter(|e| !e.is_empty())
}

/// Go's `os.FileMode.String()`: type letters (`dalTLDpSugct?`) or `-`, then `rwxrwxrwx`.
fn mode_string(mode: u32) -> String {
    const TYPES: &str = "dalTLDpSugct?";
    const RWX: &str = "rwxrwxrwx";
    let mut text: String = TYPES
        .chars()
        .enumerate()
        .filter(|(i, _)| mode & (1 << (31 - i)) != 0)
        .map(|(_, c)| c)
        .collect();
    if text.is_empty() {
        text.push('-');
    }
    text.extend(
        RWX.chars()
            .enumerate()
            .map(|(i, c)| if mode & (1 << (8 - i)) != 0 { c } else { '-' }),
    );
    text
}

/// Bytes, or binary units with one decimal.
fn size_text(size: i64, humanize: bool) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if !humanize || size < 1024 {
        return size.to_string();
    }
    // Display only: f64 keeps every digit shown here.
    #[allow(clippy::cast_precision_loss)]
    let mut value = size as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Unix seconds as RFC 3339 UTC; the number itself when out of range.
fn unix_time(seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| seconds.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_print_like_go() {
        assert_eq!(mode_string(0o644), "-rw-r--r--");
        assert_eq!(mode_string((1 << 31) | 0o755), "drwxr-xr-x");
        assert_eq!(mode_string((1 << 27) | 0o777), "Lrwxrwxrwx");
        assert_eq!(mode_string((1 << 31) | (1 << 20) | 0o777), "dtrwxrwxrwx");
        assert_eq!(mode_string((1 << 26) | (1 << 21) | 0o666), "Dcrw-rw-rw-");
        assert_eq!(mode_string((1 << 23) | 0o755), "urwxr-xr-x");
        assert_eq!(mode_string((1 << 25) | 0o600), "prw-------");
        assert_eq!(mode_string((1 << 24) | 0o777), "Srwxrwxrwx");
    }

    #[test]
    fn only_relative_paths_without_dot_dot_stay_inside() {
        assert!(stays_inside(Path::new("a/b")));
        assert!(stays_inside(Path::new("./a")));
        assert!(!stays_inside(Path::new("/etc/passwd")));
        assert!(!stays_inside(Path::new("a/../../b")));
        assert!(!stays_inside(Path::new("")));
    }

    fn gz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        let tar = builder.into_inner().expect("tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        gz.finish().expect("gzip")
    }

    fn file_header(size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(size);
        header
    }

    #[test]
    fn a_good_archive_unpacks_with_its_symlinks() {
        let archive = gz(|b| {
            let mut dir = tar::Header::new_gnu();
            dir.set_entry_type(tar::EntryType::Directory);
            dir.set_mode(0o755);
            dir.set_size(0);
            b.append_data(&mut dir, "d", io::empty()).expect("dir");
            b.append_data(&mut file_header(2), "d/f", &b"hi"[..])
                .expect("file");
            let mut link = tar::Header::new_gnu();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            b.append_link(&mut link, "l", "d/f").expect("link");
        });
        let dest = tempfile::tempdir().expect("temp dir");
        let count = unpack(archive.as_slice(), dest.path()).expect("unpack");
        assert_eq!(count, 3);
        assert_eq!(std::fs::read(dest.path().join("d/f")).expect("read"), b"hi");
        assert_eq!(
            std::fs::read_link(dest.path().join("l")).expect("link"),
            Path::new("d/f")
        );
    }

    #[test]
    fn an_entry_with_dot_dot_is_refused() {
        // tar's Builder refuses `..`, so write the name into the header by hand.
        let archive = gz(|b| {
            let mut header = file_header(4);
            let name = b"../evil";
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_cksum();
            b.append(&header, &b"evil"[..]).expect("append");
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let dest = dir.path().join("dest");
        let err = unpack(archive.as_slice(), &dest).expect_err("refused");
        assert!(
            format!("{err:#}").contains("refusing archive entry ../evil"),
            "{err:#}"
        );
        assert!(!dir.path().join("evil").exists());
    }

    #[test]
    fn writing_through_a_symlink_out_of_dest_is_refused() {
        let outside = tempfile::tempdir().expect("temp dir");
        let archive = gz(|b| {
            let mut link = tar::Header::new_gnu();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            b.append_link(&mut link, "escape", outside.path())
                .expect("link");
            b.append_data(&mut file_header(4), "escape/pwned", &b"evil"[..])
                .expect("file");
        });
        let dest = tempfile::tempdir().expect("temp dir");
        let err = unpack(archive.as_slice(), dest.path()).expect_err("refused");
        assert!(
            format!("{err:#}").contains("refusing archive entry escape/pwned"),
            "{err:#}"
        );
        assert!(!outside.path().join("pwned").exists());
    }

    #[test]
    fn the_channel_reader_concatenates_chunks() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.blocking_send(b"ab".to_vec()).expect("send");
        tx.blocking_send(Vec::new()).expect("send");
        tx.blocking_send(b"cde".to_vec()).expect("send");
        drop(tx);
        let mut text = String::new();
        ChannelReader::new(rx)
            .read_to_string(&mut text)
            .expect("read");
        assert_eq!(text, "abcde");
    }

    #[test]
    fn sizes_humanize_on_request() {
        assert_eq!(size_text(1536, false), "1536");
        assert_eq!(size_text(1536, true), "1.5 KiB");
        assert_eq!(size_text(10, true), "10");
    }
}
