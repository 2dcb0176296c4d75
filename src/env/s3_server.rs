//! `pgdrill s3-serve`: an S3-compatible server on loopback (the `s3s` and
//! `s3s-fs` crates), so tests and local drills need nothing outside this
//! crate. Clients still speak real S3 over HTTP to it, as to MinIO or AWS.

use std::net::SocketAddr;
use std::path::PathBuf;

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
    service: s3s::service::S3Service,
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
            service: builder.build(),
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
