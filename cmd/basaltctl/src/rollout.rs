//! Destructive verbs on several nodes: confirmation (`--yes`) and batched rollout (`--batch N`).
//!
//! `reboot`, `shutdown`, `reset`, `apply-config`, `service ID stop|restart` and
//! `config-rollback` aimed at more than one node first ask on a terminal ("reboot 3 nodes: a,
//! b, c? [y/N]"); without a terminal they refuse unless `--yes` is given (exit 64), so a script
//! never takes down a fleet by accident.
//!
//! With `--batch N` the nodes are handled N at a time, in the order given: each batch runs
//! concurrently (within `--parallel`), and before the next starts every node of the batch must
//! answer `Version` again within `--batch-timeout` (the lifecycle commands first follow each
//! node to its end, a reboot to its new boot id; a node whose apply-config answer says it
//! reboots must come back under a new boot id). The first batch with a failed node stops the
//! rollout; the report names the nodes done, failed and not touched. Without `--batch` every
//! node is one batch, as before.

use std::future::Future;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::Duration;

use basalt_api::machine::ReadRequest;
use basalt_client::Client;
use clap::Args;
use tokio::time::Instant;

use crate::Globals;
use crate::connect::{self, TargetArgs};
use crate::lifecycle_cmd::BOOT_ID_PATH;
use crate::output::{self, ErrorView, NodeReply, Replies, failed};
use crate::usage::UsageError;

/// Pause between `Version` polls while a batch comes back.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// `--yes`, `--batch` and `--batch-timeout`, for every destructive verb.
#[derive(Debug, Clone, Args)]
pub(crate) struct RolloutArgs {
    /// Do not ask for confirmation when several nodes are targeted (required when stdin is
    /// not a terminal).
    #[arg(short = 'y', long)]
    pub(crate) yes: bool,
    /// Act on N nodes at a time; the next batch starts when every node of this one answers
    /// again.
    #[arg(long, value_name = "N", value_parser = parse_batch)]
    pub(crate) batch: Option<usize>,
    /// With --batch: how long a batch may take to answer again (e.g. 90s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::duration::parse)]
    pub(crate) batch_timeout: Duration,
}

fn parse_batch(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a number of nodes, at least 1".to_owned()),
    }
}

/// What to do before a destructive verb.
#[derive(Debug, PartialEq, Eq)]
enum Consent {
    Proceed,
    Ask(String),
    Refuse(String),
}

/// One node needs no confirmation, `--yes` gives it, a terminal is asked, anything else is
/// refused.
fn consent(verb: &str, nodes: &[String], yes: bool, terminal: bool) -> Consent {
    if nodes.len() <= 1 || yes {
        return Consent::Proceed;
    }
    let list = nodes.join(", ");
    if terminal {
        Consent::Ask(format!("{verb} {} nodes: {list}? [y/N] ", nodes.len()))
    } else {
        Consent::Refuse(format!(
            "{verb} targets {} nodes ({list}) and stdin is not a terminal to ask: pass --yes \
             to confirm; nothing was done",
            nodes.len()
        ))
    }
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Asks for confirmation of `verb` on the nodes `args` target when there are several, before
/// anything is dialed; errors with a [`UsageError`] when it is refused or cannot be asked.
pub(crate) fn confirm_targets(
    globals: &Globals,
    args: &TargetArgs,
    verb: &str,
    rollout: &RolloutArgs,
) -> anyhow::Result<()> {
    let target = connect::target(globals, args)?;
    confirm(verb, target.nodes(), rollout.yes)
}

/// Asks for confirmation of `verb` on `nodes` when there are several; errors with
/// [`UsageError`] when it is refused or cannot be asked.
fn confirm(verb: &str, nodes: &[String], yes: bool) -> anyhow::Result<()> {
    match consent(verb, nodes, yes, std::io::stdin().is_terminal()) {
        Consent::Proceed => Ok(()),
        Consent::Refuse(text) => Err(UsageError::msg(text)),
        Consent::Ask(prompt) => {
            let mut err = std::io::stderr().lock();
            // The prompt is best effort: the answer decides, and no answer means no.
            let _ = err.write_all(prompt.as_bytes());
            let _ = err.flush();
            drop(err);
            let mut answer = String::new();
            let read = std::io::stdin().lock().read_line(&mut answer);
            if matches!(read, Ok(n) if n > 0) && is_yes(&answer) {
                Ok(())
            } else {
                Err(UsageError::msg(format!(
                    "{verb} not confirmed; nothing was done"
                )))
            }
        }
    }
}

/// The names the targets are reported under (the endpoint when no nodes are set).
pub(crate) fn target_names(client: &Client) -> Vec<String> {
    client.targets().into_iter().map(|(name, _)| name).collect()
}

/// The nodes split into batches of `size` (all in one without `--batch`).
fn batches(nodes: &[String], size: Option<usize>) -> Vec<Vec<String>> {
    let size = size.unwrap_or(nodes.len()).max(1);
    nodes.chunks(size).map(<[String]>::to_vec).collect()
}

/// How a rollout ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Rollout {
    /// Nodes whose batch completed.
    pub(crate) done: Vec<String>,
    /// Nodes of the batch that stopped the rollout, with why: the action failed, or the node
    /// did not answer again in time. Nodes of that batch that did not fail are in `done`.
    pub(crate) failed: Vec<(String, String)>,
    /// Nodes never acted on because an earlier batch failed.
    pub(crate) untouched: Vec<String>,
    /// How many batches there were.
    pub(crate) batches: usize,
}

impl Rollout {
    /// The stderr summary of a stopped rollout (`None` when nothing failed or it was one
    /// batch: the failures themselves say it all then).
    pub(crate) fn summary(&self) -> Option<String> {
        if self.failed.is_empty() || self.batches <= 1 {
            return None;
        }
        let list = |nodes: &[String]| {
            if nodes.is_empty() {
                "none".to_owned()
            } else {
                nodes.join(", ")
            }
        };
        let failed: Vec<String> = self.failed.iter().map(|(node, _)| node.clone()).collect();
        Some(format!(
            "rollout stopped: done: {}; failed: {}; not touched: {}",
            list(&self.done),
            list(&failed),
            list(&self.untouched)
        ))
    }

    /// Failed and untouched nodes, for [`crate::output::report_failures`].
    pub(crate) fn failures(&self) -> Vec<(String, String)> {
        let mut out = self.failed.clone();
        out.extend(self.untouched.iter().map(|node| {
            (
                node.clone(),
                "not touched: the rollout stopped at an earlier batch".to_owned(),
            )
        }));
        out
    }
}

/// What acting on one node gave.
#[derive(Debug)]
pub(crate) struct Acted<T> {
    pub(crate) node: String,
    /// Kept even for a failed node (e.g. its error object).
    pub(crate) output: T,
    pub(crate) failure: Option<String>,
    /// The node said it reboots to finish the action (apply-config needing a reboot): with
    /// `--batch` it only counts as back under a new boot id.
    pub(crate) reboots: bool,
}

/// Runs `act` on the client's targets batch by batch.
///
/// `act` gets the client narrowed to one batch's nodes and returns what it did on each. With
/// `size`, every batch must then answer `Version` within `wait` (a node that reboots: under a
/// new boot id) before the next starts, unless `comes_back` is false (shutdown: the nodes are
/// meant to stay down).
pub(crate) async fn run<T, F, Fut>(
    client: &Client,
    size: Option<usize>,
    wait: Duration,
    comes_back: bool,
    mut act: F,
) -> (Vec<T>, Rollout)
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Vec<Acted<T>>>,
{
    let names = target_names(client);
    // Without nodes there is one target, the endpoint itself: act on it as it is.
    let plan = if client.nodes().is_empty() {
        vec![Vec::new()]
    } else {
        batches(&names, size)
    };
    let mut rollout = Rollout {
        batches: plan.len(),
        ..Rollout::default()
    };
    let mut outputs = Vec::new();
    let mut plan = plan.into_iter();
    for (number, batch) in plan.by_ref().enumerate() {
        if size.is_some() && rollout.batches > 1 {
            eprintln!(
                "batch {}/{}: {}",
                number + 1,
                rollout.batches,
                batch.join(", ")
            );
        }
        let narrowed = client.clone().with_nodes(batch);
        let waits = size.is_some() && comes_back;
        // Read before acting, so a reboot the action starts is told from no reboot at all.
        let boots_before = if waits {
            boot_ids(&narrowed).await
        } else {
            Vec::new()
        };
        let mut ok = Vec::new();
        let mut rebooting = Vec::new();
        for acted in act(narrowed.clone()).await {
            outputs.push(acted.output);
            if acted.reboots
                && let Some((_, Some(before))) = boots_before.iter().find(|(n, _)| *n == acted.node)
            {
                rebooting.push((acted.node.clone(), before.clone()));
            }
            match acted.failure {
                Some(why) => rollout.failed.push((acted.node, why)),
                None => ok.push(acted.node),
            }
        }
        if waits && rollout.failed.is_empty() {
            rollout
                .failed
                .extend(answers_again(&narrowed, &rebooting, Instant::now() + wait).await);
        }
        let failed_here: Vec<&String> = rollout.failed.iter().map(|(node, _)| node).collect();
        rollout
            .done
            .extend(ok.into_iter().filter(|node| !failed_here.contains(&node)));
        if !rollout.failed.is_empty() {
            break;
        }
    }
    rollout.untouched = plan.flatten().collect();
    (outputs, rollout)
}

/// Polls `Version` on the client's targets until each has answered once or `deadline`
/// passes; a node in `rebooting` (with its boot id before) must also report another boot id.
/// Returns the nodes that did not come back, with their last error.
async fn answers_again(
    client: &Client,
    rebooting: &[(String, String)],
    deadline: Instant,
) -> Vec<(String, String)> {
    let mut pending = target_names(client);
    let mut last_error: Vec<(String, String)> = Vec::new();
    loop {
        let asked = if client.nodes().is_empty() {
            client.clone()
        } else {
            client.clone().with_nodes(pending.clone())
        };
        let polled = async {
            let versions = asked.version().await;
            let boots = if rebooting.is_empty() {
                Vec::new()
            } else {
                boot_ids(&asked).await
            };
            (versions, boots)
        };
        let Ok((replies, boots)) = tokio::time::timeout_at(deadline, polled).await else {
            break;
        };
        last_error.clear();
        for reply in replies {
            let old_boot = rebooting.iter().find(|(n, _)| *n == reply.node);
            let boot_now = boots.iter().find(|(n, _)| *n == reply.node);
            match (reply.result, old_boot) {
                (Err(status), _) => {
                    last_error.push((reply.node, ErrorView::from_status(&status).to_string()));
                }
                (Ok(_), Some((_, before)))
                    if boot_now.is_none_or(|(_, now)| now.as_ref() == Some(before)) =>
                {
                    last_error.push((
                        reply.node,
                        format!("still on boot id {before}: its reboot has not happened"),
                    ));
                }
                (Ok(_), _) => pending.retain(|node| *node != reply.node),
            }
        }
        if pending.is_empty() || Instant::now() + POLL_INTERVAL >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    pending
        .into_iter()
        .map(|node| {
            let why = last_error
                .iter()
                .find(|(n, _)| *n == node)
                .map_or_else(|| "no answer".to_owned(), |(_, e)| e.clone());
            (node, format!("did not answer Version again in time: {why}"))
        })
        .collect()
}

/// Each target's boot id, `None` where it cannot be read (e.g. Read denied to an operator:
/// such a node is then only waited for to answer Version).
async fn boot_ids(client: &Client) -> Vec<(String, Option<String>)> {
    let request = ReadRequest {
        path: BOOT_ID_PATH.to_owned(),
    };
    client
        .each_node(request, |client, request| async move {
            let mut stream = client.machine().read(request).await?.into_inner();
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.message().await? {
                bytes.extend(chunk.bytes);
                if bytes.len() > 1024 {
                    return Err(tonic::Status::out_of_range("the boot id file is too long"));
                }
            }
            Ok(tonic::Response::new(
                String::from_utf8_lossy(&bytes).trim().to_owned(),
            ))
        })
        .await
        .into_iter()
        .map(|reply| (reply.node, reply.result.ok()))
        .collect()
}

/// Lists every failed and untouched node on stderr, then the rollout summary; fails when any
/// node failed. `total` is the number of nodes targeted.
pub(crate) fn finish(rollout: &Rollout, total: usize) -> anyhow::Result<()> {
    for (node, why) in rollout.failures() {
        eprintln!("{}", output::failure_line(&node, &why));
    }
    if let Some(summary) = rollout.summary() {
        eprintln!("{summary}");
    }
    let failed: Vec<String> = rollout
        .failed
        .iter()
        .map(|(node, _)| node.clone())
        .collect();
    if rollout.untouched.is_empty() {
        return output::nodes_failed(total, &failed);
    }
    anyhow::bail!(
        "{} of {total} nodes failed: {}; {} not touched: {}",
        failed.len(),
        failed.join(", "),
        rollout.untouched.len(),
        rollout.untouched.join(", ")
    )
}

/// A destructive verb whose nodes answer with replies (apply-config, service stop|restart,
/// config-rollback), once confirmed ([`confirm_targets`]): runs `call` batch by batch and
/// returns every node's reply (the untouched ones as errors) with the rollout. `reboots`
/// tells from a node's reply whether it reboots to finish.
pub(crate) async fn replies_in_batches<V, F, Fut>(
    client: &Client,
    args: &RolloutArgs,
    reboots: fn(&V) -> bool,
    mut call: F,
) -> (Replies<V>, Rollout)
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Replies<V>>,
{
    let (outputs, rollout) = run(client, args.batch, args.batch_timeout, true, |batch| {
        let replies = call(batch);
        async move { from_replies(replies.await, reboots) }
    })
    .await;
    (with_untouched(outputs, &rollout), rollout)
}

/// Prints a rollout's replies, then [`finish`]es it.
pub(crate) fn show<V: output::NodeTable + serde::Serialize>(
    format: output::OutputFormat,
    replies: &Replies<V>,
    rollout: &Rollout,
) -> anyhow::Result<()> {
    output::print(format, replies)?;
    let total = rollout.done.len() + rollout.failed.len() + rollout.untouched.len();
    finish(rollout, total)
}

/// Per-node replies as [`run`] wants them: each reply with its failure text.
fn from_replies<V>(replies: Replies<V>, reboots: fn(&V) -> bool) -> Vec<Acted<NodeReply<V>>> {
    replies
        .0
        .into_iter()
        .map(|reply| Acted {
            node: reply.node.clone(),
            failure: reply.error.as_ref().map(ToString::to_string),
            reboots: reply.data.as_ref().is_some_and(reboots),
            output: reply,
        })
        .collect()
}

/// The replies of a rollout with one error object per node not touched, so json/yaml still
/// hold one object per targeted node.
pub(crate) fn with_untouched<V>(mut replies: Vec<NodeReply<V>>, rollout: &Rollout) -> Replies<V> {
    for node in &rollout.untouched {
        replies.push(failed(
            node.clone(),
            ErrorView::new(
                tonic::Code::Aborted,
                "not touched: the rollout stopped at an earlier batch",
            ),
        ));
    }
    Replies(replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn one_node_or_yes_proceeds_without_asking() {
        assert_eq!(
            consent("reboot", &names(&["a"]), false, false),
            Consent::Proceed
        );
        assert_eq!(
            consent("reboot", &names(&["a", "b"]), true, false),
            Consent::Proceed
        );
    }

    #[test]
    fn several_nodes_ask_on_a_terminal_and_are_refused_without_one() {
        assert_eq!(
            consent("reboot", &names(&["a", "b", "c"]), false, true),
            Consent::Ask("reboot 3 nodes: a, b, c? [y/N] ".to_owned())
        );
        let Consent::Refuse(text) = consent("reset", &names(&["a", "b"]), false, false) else {
            panic!("not refused");
        };
        assert!(text.contains("--yes"), "{text}");
        assert!(text.contains("a, b"), "{text}");
        assert!(text.contains("nothing was done"), "{text}");
    }

    #[test]
    fn only_y_or_yes_confirms() {
        for answer in ["y\n", "Y", " yes \n", "YES"] {
            assert!(is_yes(answer), "{answer:?}");
        }
        for answer in ["", "\n", "n", "no", "yep", "y es"] {
            assert!(!is_yes(answer), "{answer:?}");
        }
    }

    #[test]
    fn batches_keep_the_given_order() {
        let nodes = names(&["a", "b", "c", "d", "e"]);
        assert_eq!(
            batches(&nodes, Some(2)),
            [names(&["a", "b"]), names(&["c", "d"]), names(&["e"])]
        );
        assert_eq!(batches(&nodes, None), std::slice::from_ref(&nodes));
        assert_eq!(batches(&nodes, Some(9)), [nodes]);
    }

    #[test]
    fn a_stopped_rollout_names_done_failed_and_untouched_nodes() {
        let rollout = Rollout {
            done: names(&["a", "b"]),
            failed: vec![("c".to_owned(), "Unavailable: down".to_owned())],
            untouched: names(&["d"]),
            batches: 3,
        };
        assert_eq!(
            rollout.summary().as_deref(),
            Some("rollout stopped: done: a, b; failed: c; not touched: d")
        );
        assert_eq!(
            rollout.failures(),
            [
                ("c".to_owned(), "Unavailable: down".to_owned()),
                (
                    "d".to_owned(),
                    "not touched: the rollout stopped at an earlier batch".to_owned()
                )
            ]
        );
        let untouched = with_untouched::<()>(Vec::new(), &rollout);
        let json = serde_json::to_value(&untouched).expect("json");
        assert_eq!(json[0]["node"], "d");
        assert_eq!(json[0]["error"]["code"], "Aborted");
        assert_eq!(Rollout::default().summary(), None);
    }
}
