//! Node targeting as talosctl v1.14 does it (talos-facts §1.9): one call per node, each with
//! metadata `node: <node>`, answered one-to-one; without nodes, one call to the endpoint with no
//! routing metadata. The legacy one-to-many `nodes` key is never sent.

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
    /// Calls `call` once per target node, concurrently, and returns the results in node order.
    ///
    /// `call` gets a clone of this client and a request carrying `message` and, when nodes are
    /// set, the `node` metadata; it returns the future of one RPC, e.g.
    /// `|client, request| async move { client.machine().version(request).await }`.
    pub async fn each_node<M, T, F, Fut>(&self, message: M, call: F) -> Vec<NodeResult<T>>
    where
        M: Clone,
        T: Send + 'static,
        F: Fn(Client, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>> + Send + 'static,
    {
        let endpoint = self.endpoint().to_string();
        let targets: Vec<(String, Option<&str>)> = if self.nodes().is_empty() {
            vec![(endpoint.clone(), None)]
        } else {
            self.nodes()
                .iter()
                .map(|node| (node.clone(), Some(node.as_str())))
                .collect()
        };

        // Spawn every call first so they run concurrently, then collect in node order.
        let pending: Vec<_> = targets
            .into_iter()
            .map(|(name, node)| {
                let task = targeted_request(node, message.clone())
                    .map(|request| tokio::spawn(call(self.clone(), request)))
                    .map_err(|err| Status::invalid_argument(err.to_string()));
                (name, task)
            })
            .collect();

        let mut results = Vec::with_capacity(pending.len());
        for (node, task) in pending {
            let result = match task {
                Ok(task) => match task.await {
                    Ok(Ok(response)) => Ok(response.into_inner()),
                    Ok(Err(status)) => Err(status),
                    Err(join) => Err(Status::internal(format!("the call task failed: {join}"))),
                },
                Err(status) => Err(status),
            };
            results.push(NodeResult { node, result });
        }
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
