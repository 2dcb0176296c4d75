//! A port on this host that reaches a pod's port through the Kubernetes
//! API (what `kubectl port-forward` does): each accepted connection gets
//! its own forwarding stream, so PostgreSQL clients and the S3 client need
//! nothing but an address.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::KubeError;

/// Forwards `127.0.0.1:<port>` to a pod's port until dropped.
#[derive(Debug)]
pub struct PortForward {
    addr: SocketAddr,
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
        let pod = pod.to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut local, _)) = listener.accept().await {
                let (pods, pod) = (pods.clone(), pod.clone());
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
        Ok(PortForward { addr, task })
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
