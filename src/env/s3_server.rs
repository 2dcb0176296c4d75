//! `pgdrill s3-serve`: an S3-compatible server on loopback (the `s3s` and
//! `s3s-fs` crates), so tests and local drills need nothing outside this
//! crate. Clients still speak real S3 over HTTP to it, as to MinIO or AWS.
//! With a fault file it also misbehaves on demand, as real storage does
//! (drills write the file: [`ServerFault`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

/// Settings of the embedded server.
#[derive(Debug, Clone)]
pub struct S3ServerConfig {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub access_key: String,
    pub secret_key: crate::backup::config::Secret,
    /// Buckets to create (as directories) before serving.
    pub buckets: Vec<String>,
    /// A file whose content, read at every connection and request, makes
    /// the server misbehave ([`ServerFault`]); absent or empty: serve.
    pub fault_file: Option<PathBuf>,
}

/// How the server misbehaves while its fault file names the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerFault {
    /// Close every new connection unanswered, as a storage that went away
    /// (`refuse`).
    Refuse,
    /// Answer every request `503 Service Unavailable`, as an overloaded
    /// or failing S3 service (`errors`).
    Errors,
}

impl ServerFault {
    /// The fault file's content for this fault.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerFault::Refuse => "refuse",
            ServerFault::Errors => "errors",
        }
    }

    /// The fault a fault file's content names; anything else is none.
    fn parse(content: &str) -> Option<ServerFault> {
        match content.trim() {
            "refuse" => Some(ServerFault::Refuse),
            "errors" => Some(ServerFault::Errors),
            _ => None,
        }
    }

    /// The fault in force: what `file` names now.
    fn current(file: Option<&std::path::Path>) -> Option<ServerFault> {
        ServerFault::parse(&std::fs::read_to_string(file?).ok()?)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum S3ServerError {
    #[error("cannot prepare storage directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid bucket name {0:?}: use lowercase letters, digits, '-' and '.'")]
    BadBucket(String),
    #[error("s3 server: {0}")]
    Other(String),
}

/// A bound server, ready to run.
pub struct S3Server {
    listener: TcpListener,
    service: FaultyService,
}

/// The S3 service, misbehaving while a [`ServerFault`] is in force.
#[derive(Clone)]
struct FaultyService {
    inner: s3s::service::S3Service,
    fault_file: Option<Arc<PathBuf>>,
}

impl FaultyService {
    /// The fault in force now.
    fn fault(&self) -> Option<ServerFault> {
        ServerFault::current(self.fault_file.as_deref().map(PathBuf::as_path))
    }
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for FaultyService {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = futures::future::BoxFuture<'static, Result<s3s::HttpResponse, s3s::HttpError>>;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        match self.fault() {
            Some(ServerFault::Errors) => Box::pin(std::future::ready(Ok(unavailable()))),
            // An error makes hyper abort the connection unanswered: pooled
            // connections go away too, not only new ones.
            Some(ServerFault::Refuse) => Box::pin(std::future::ready(Err(s3s::HttpError::new(
                "storage refusing connections (drill fault file)".into(),
            )))),
            None => hyper::service::Service::call(&self.inner, req),
        }
    }
}

/// The answer of an S3 service that cannot serve now (retryable).
fn unavailable() -> s3s::HttpResponse {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>ServiceUnavailable</Code><Message>injected by a drill's fault file</Message></Error>";
    let mut response = http::Response::new(s3s::Body::from(body.to_string()));
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/xml"),
    );
    response
}

impl S3Server {
    pub async fn bind(cfg: &S3ServerConfig) -> Result<S3Server, S3ServerError> {
        let dir_err = |source| S3ServerError::Dir {
            path: cfg.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&cfg.dir).map_err(dir_err)?;
        for b in &cfg.buckets {
            let valid = (3..=63).contains(&b.len())
                && b.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.'
                });
            if !valid {
                return Err(S3ServerError::BadBucket(b.clone()));
            }
            std::fs::create_dir_all(cfg.dir.join(b)).map_err(dir_err)?;
        }
        let fs = s3s_fs::FileSystem::new(&cfg.dir)
            .map_err(|e| S3ServerError::Other(format!("{e:?}")))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(
            cfg.access_key.clone(),
            cfg.secret_key.expose().to_string(),
        ));
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| S3ServerError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        Ok(S3Server {
            listener,
            service: FaultyService {
                inner: builder.build(),
                fault_file: cfg.fault_file.clone().map(Arc::new),
            },
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        let http = ConnBuilder::new(TokioExecutor::new());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let socket = tokio::select! {
                res = self.listener.accept() => match res {
                    Ok(_) if self.service.fault() == Some(ServerFault::Refuse) => continue,
                    Ok((socket, _)) => socket,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        continue;
                    }
                },
                () = shutdown.as_mut() => break,
            };
            let conn = http.serve_connection(TokioIo::new(socket), self.service.clone());
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
        tokio::select! {
            () = graceful.shutdown() => {},
            () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fault_file_names_the_fault_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fault");
        // No file, an empty one or anything unknown: serve.
        assert_eq!(ServerFault::current(Some(&file)), None);
        assert_eq!(ServerFault::current(None), None);
        for fault in [ServerFault::Refuse, ServerFault::Errors] {
            std::fs::write(&file, format!("{}\n", fault.as_str())).unwrap();
            assert_eq!(ServerFault::current(Some(&file)), Some(fault));
        }
        std::fs::write(&file, "").unwrap();
        assert_eq!(ServerFault::current(Some(&file)), None);
        std::fs::write(&file, "slow").unwrap();
        assert_eq!(ServerFault::current(Some(&file)), None);
    }
}
