//! Node targeting as talosctl v1.14 does it (talos-facts §1.9): one call per node, each with
//! metadata `node: <node>`, answered one-to-one; without nodes, one call to the endpoint with no
//! routing metadata. The legacy one-to-many `nodes` key is never sent. At most
//! [`Client::concurrency`] calls are in flight at once ([`crate::bounded`]).

use std::future::Future;

use basalt_api::machine::{
    HostnameResponse, LoadAvgResponse, MemoryResponse, MountsResponse, ProcessesResponse,
    SystemStatResponse, VersionResponse,
};
use basalt_authz::metadata;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::connect::Client;
use crate::error::{Diagnosis, Error, chain, diagnose_status};
use crate::limit::bounded;

/// The outcome of one call on one node.
#[derive(Debug)]
pub struct NodeResult<T> {
    /// The node as it was addressed, or the endpoint (`host:port`) when no nodes were set.
    pub node: String,
    /// The node's answer, or why there is none. Connection failures carry a message that says
    /// what went wrong (unreachable, handshake refused, …); server statuses pass unchanged.
    pub result: Result<T, Status>,
}

impl<T> NodeResult<T> {
    /// Applies `f` to a successful result.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> NodeResult<U> {
        NodeResult {
            node: self.node,
            result: self.result.map(f),
        }
    }
}

impl Client {
    /// The same connection running at most `limit` per-node calls at once (0 counts as 1).
    pub fn with_concurrency(mut self, limit: usize) -> Self {
        self.concurrency = limit.max(1);
        self
    }

    /// How many per-node calls [`Client::each_node`] runs at once (default
    /// [`crate::DEFAULT_CONCURRENCY`]).
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The targets of [`Client::each_node`]: `(name to report, node metadata)` per node, or
    /// the endpoint (`host:port`) without metadata when no nodes are set.
    pub fn targets(&self) -> Vec<(String, Option<String>)> {
        if self.nodes().is_empty() {
            vec![(self.endpoint().to_string(), None)]
        } else {
            self.nodes()
                .iter()
                .map(|node| (node.clone(), Some(node.clone())))
                .collect()
        }
    }

    /// Calls `call` once per target node, at most [`Client::concurrency`] at a time, and
    /// returns the results in node order.
    ///
    /// `call` gets a clone of this client and a request carrying `message` and, when nodes are
    /// set, the `node` metadata; it returns the future of one RPC, e.g.
    /// `|client, request| async move { client.machine().version(request).await }`. For a
    /// streaming RPC the limit bounds opening the streams, not reading them.
    pub async fn each_node<M, T, F, Fut>(&self, message: M, call: F) -> Vec<NodeResult<T>>
    where
        M: Clone,
        T: Send + 'static,
        F: Fn(Client, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>> + Send + 'static,
    {
        let targets = self.targets();
        let mut names = Vec::with_capacity(targets.len());
        let mut calls = Vec::with_capacity(targets.len());
        for (name, node) in targets {
            // A node name that cannot be metadata fails alone, without a call.
            let call = match targeted_request(node.as_deref(), message.clone()) {
                Ok(request) => CallOrRefusal::Call(call(self.clone(), request)),
                Err(err) => CallOrRefusal::Refused(Status::invalid_argument(err.to_string())),
            };
            names.push(name);
            calls.push(call.run());
        }

        let outputs = bounded(self.concurrency, calls).await;
        let mut results: Vec<NodeResult<T>> = names
            .into_iter()
            .zip(outputs)
            .map(|(node, output)| {
                let result = match output {
                    Ok(Ok(response)) => Ok(response.into_inner()),
                    Ok(Err(status)) => Err(status),
                    Err(join) => Err(Status::internal(format!("the call task failed: {join}"))),
                };
                NodeResult { node, result }
            })
            .collect();
        self.explain_failures(&mut results).await;
        results
    }

    /// Replaces local transport failures by what caused them, diagnosing the connection once
    /// if their errors do not say.
    async fn explain_failures<T>(&self, results: &mut [NodeResult<T>]) {
        let endpoint = self.endpoint().to_string();
        let mut diagnosis: Option<Option<String>> = None;
        for reply in results.iter_mut() {
            let Err(status) = &reply.result else {
                continue;
            };
            let text = match diagnose_status(status, &endpoint) {
                Diagnosis::Keep => continue,
                Diagnosis::Explained(text) => Some(text),
                Diagnosis::Unexplained => match &diagnosis {
                    Some(found) => found.clone(),
                    None => {
                        let found = self.diagnose().await.map(|err| chain(&err));
                        diagnosis = Some(found.clone());
                        found
                    }
                },
            };
            if let Some(text) = text {
                reply.result = Err(Status::unavailable(text));
            }
        }
    }

    /// `Version` on every target.
    pub async fn version(&self) -> Vec<NodeResult<VersionResponse>> {
        self.each_node((), |client, request| async move {
            client.machine().version(request).await
        })
        .await
    }

    /// `Hostname` on every target.
    pub async fn hostname(&self) -> Vec<NodeResult<HostnameResponse>> {
        self.each_node((), |client, request| async move {
            client.machine().hostname(request).await
        })
        .await
    }

    /// `Memory` (values in kB, as the kernel reports them) on every target.
    pub async fn memory(&self) -> Vec<NodeResult<MemoryResponse>> {
        self.each_node((), |client, request| async move {
            client.machine().memory(request).await
        })
        .await
    }

    /// `Processes` on every target.
    pub async fn processes(&self) -> Vec<NodeResult<ProcessesResponse>> {
        self.each_node((), |client, request| async move {
            client.machine().processes(request).await
        })
        .await
    }

    /// `Mounts` (sizes in bytes) on every target.
    pub async fn mounts(&self) -> Vec<NodeResult<MountsResponse>> {
        self.each_node((), |client, request| async move {
            client.machine().mounts(request).await
        })
        .await
    }

    /// `LoadAvg` on every target.
    pub async fn load_avg(&self) -> Vec<NodeResult<LoadAvgResponse>> {
        self.each_node((), |client, request| async move {
            client.machine().load_avg(request).await
        })
        .await
    }

    /// `SystemStat` (parsed /proc/stat) on every target.
    pub async fn system_stat(&self) -> Vec<NodeResult<SystemStatResponse>> {
        self.each_node((), |client, request| async move {
            client.machine().system_stat(request).await
        })
        .await
    }
}

/// One node's call, or why it was not made.
enum CallOrRefusal<Fut> {
    Call(Fut),
    Refused(Status),
}

impl<T, Fut> CallOrRefusal<Fut>
where
    Fut: Future<Output = Result<Response<T>, Status>>,
{
    async fn run(self) -> Result<Response<T>, Status> {
        match self {
            CallOrRefusal::Call(call) => call.await,
            CallOrRefusal::Refused(status) => Err(status),
        }
    }
}

/// A request for one target: `node: <node>` when a node is named, no routing metadata
/// otherwise. Nothing else is added; `talos-role` and `proxyfrom` are apid's alone.
pub fn targeted_request<M>(node: Option<&str>, message: M) -> Result<Request<M>, Error> {
    let mut request = Request::new(message);
    if let Some(node) = node {
        // Host names and IP addresses are visible ASCII; anything else is a typo or an attack on
        // the header encoding, and tonic would accept some of it (obs-text bytes).
        let invalid = || Error::InvalidNode {
            node: node.to_owned(),
        };
        if node.is_empty() || !node.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid());
        }
        let value: MetadataValue<_> = node.parse().map_err(|_| invalid())?;
        request.metadata_mut().insert(metadata::NODE, value);
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_sent_as_node_metadata() {
        let request = targeted_request(Some("10.0.0.2"), ()).unwrap();
        let md = request.metadata();
        assert_eq!(md.get(metadata::NODE).unwrap(), "10.0.0.2");
        assert!(md.get(metadata::NODES).is_none());
        assert!(md.get(metadata::ROLE).is_none());
        assert!(md.get(metadata::PROXY_FROM).is_none());
        assert_eq!(md.len(), 1);
    }

    #[test]
    fn no_node_means_no_routing_metadata() {
        let request = targeted_request(None, ()).unwrap();
        assert!(request.metadata().is_empty());
    }

    #[test]
    fn node_names_that_cannot_be_metadata_are_refused() {
        for node in ["", "bad\nnode", "nöde"] {
            assert!(
                matches!(
                    targeted_request(Some(node), ()),
                    Err(Error::InvalidNode { .. })
                ),
                "{node:?}"
            );
        }
    }
}
