//! A port on this host that reaches a pod's port through the Kubernetes
//! API (what `kubectl port-forward` does): each accepted connection gets
//! its own forwarding stream, so PostgreSQL clients and the S3 client need
//! nothing but an address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::KubeError;

/// Forwards `127.0.0.1:<port>` to a pod's port until dropped.
#[derive(Debug)]
pub struct PortForward {
    addr: SocketAddr,
    /// The pod new connections go to (see [`PortForward::retarget`]).
    pod: Arc<Mutex<String>>,
    task: JoinHandle<()>,
}

impl PortForward {
    /// Listens on a free loopback port and forwards every connection to
    /// `pod`'s `port`.
    pub async fn start(pods: Api<Pod>, pod: &str, port: u16) -> Result<PortForward, KubeError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| KubeError::Local(format!("listening for a port-forward: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| KubeError::Local(format!("listening for a port-forward: {e}")))?;
        let target = Arc::new(Mutex::new(pod.to_string()));
        let current = Arc::clone(&target);
        let task = tokio::spawn(async move {
            while let Ok((mut local, _)) = listener.accept().await {
                let pod = current.lock().map(|p| p.clone()).unwrap_or_default();
                let pods = pods.clone();
                tokio::spawn(async move {
                    let Ok(mut forwarder) = pods.portforward(&pod, &[port]).await else {
                        tracing::warn!("port-forward to {pod}:{port} could not start");
                        return;
                    };
                    let Some(mut remote) = forwarder.take_stream(port) else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
                    drop(remote);
                    let _ = forwarder.join().await;
                });
            }
        });
        Ok(PortForward {
            addr,
            pod: target,
            task,
        })
    }

    /// Sends new connections to `pod` from now on (the same port here, so
    /// settings that name it stay right when a Deployment replaces its pod).
    pub fn retarget(&self, pod: &str) {
        if let Ok(mut current) = self.pod.lock() {
            *current = pod.to_string();
        }
    }

    /// The local port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.task.abort();
    }
}
