//! A small HTTP/1.1 client for the admin API, over TCP or a Unix socket (used by `wasp ctl`).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::admin::auth;

/// How long one API call may take (a reload resolves names and binds listeners).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the admin API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `host:port`.
    Tcp(String),
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "{a}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin API at {target}: {source}")]
    Connect {
        target: Target,
        source: std::io::Error,
    },
    #[error("admin API at {target}: {message}")]
    Http { target: Target, message: String },
    #[error("admin API at {0}: no answer within {CALL_TIMEOUT:?}")]
    Timeout(Target),
}

/// A client for one admin listener.
#[derive(Debug, Clone)]
pub struct AdminClient {
    target: Target,
    authorization: Option<String>,
}

impl AdminClient {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            authorization: None,
        }
    }

    /// Sends HTTP basic credentials with every call.
    pub fn with_auth(mut self, user: &str, password: &str) -> Self {
        self.authorization = Some(auth::header_value(user, password));
        self
    }

    /// Calls `method path` with an optional JSON body; returns the status and body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_inner(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout(self.target.clone()))?
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let connect_error = |source| ClientError::Connect {
            target: self.target.clone(),
            source,
        };
        match &self.target {
            Target::Tcp(addr) => {
                let io = TcpStream::connect(addr.as_str())
                    .await
                    .map_err(connect_error)?;
                self.exchange(io, method, path, body).await
            }
            Target::Unix(path_buf) => {
                let io = UnixStream::connect(path_buf).await.map_err(connect_error)?;
                self.exchange(io, method, path, body).await
            }
        }
    }

    async fn exchange<IO>(
        &self,
        io: IO,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), ClientError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http_error = |e: &dyn std::fmt::Display| ClientError::Http {
            target: self.target.clone(),
            message: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| http_error(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let payload = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).map_err(|e| http_error(&e))?),
            None => Bytes::new(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "wasp-admin");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(a) = &self.authorization
            && let Ok(v) = HeaderValue::from_str(a)
        {
            req = req.header(header::AUTHORIZATION, v);
        }
        let req = req.body(Full::new(payload)).map_err(|e| http_error(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| http_error(&e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http_error(&e))?
            .to_bytes();
        Ok((status, bytes))
    }
}
