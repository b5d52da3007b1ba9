//! An HTTPS git server for the tests: `git http-backend` behind a small TLS server on 127.0.0.1
//! that wants HTTP basic authentication with one user name and token. Its certificate is issued
//! by a CA of its own, which rsgo is told to trust through `SSL_CERT_FILE`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

/// The server; it stops when dropped.
pub struct GitHttps {
    /// `https://127.0.0.1:PORT`.
    pub base: String,
    /// The CA certificate (PEM) that issued the server's certificate.
    pub ca_file: PathBuf,
    /// Requests that carried the right credentials.
    pub authorized: Arc<AtomicUsize>,
    /// Requests that did not.
    pub refused: Arc<AtomicUsize>,
    _certs: TempDir,
    _runtime: tokio::runtime::Runtime,
}

impl GitHttps {
    /// Serves the repositories below `root` to `user` with `token`.
    pub fn serve(root: &Path, user: &str, token: &str) -> GitHttps {
        let certs = TempDir::new().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let ca_file = certs.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (authorized, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
        );
        let backend = Backend {
            root: root.to_owned(),
            user: user.to_owned(),
            expected,
            authorized: authorized.clone(),
            refused: refused.clone(),
        };
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, backend) = (acceptor.clone(), backend.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let backend = backend.clone();
                        async move { Ok::<_, std::convert::Infallible>(backend.answer(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        GitHttps {
            base: format!("https://127.0.0.1:{port}"),
            ca_file,
            authorized,
            refused,
            _certs: certs,
            _runtime: runtime,
        }
    }
}

#[derive(Clone)]
struct Backend {
    root: PathBuf,
    user: String,
    expected: String,
    authorized: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

impl Backend {
    /// Checks the credentials, then runs `git http-backend` as a CGI program.
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        if header("authorization") != self.expected {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("WWW-Authenticate", "Basic realm=\"git\"")
                .body(Full::new(Bytes::new()))
                .unwrap();
        }
        self.authorized.fetch_add(1, Ordering::SeqCst);
        let (content_type, encoding, protocol) = (
            header("content-type"),
            header("content-encoding"),
            header("git-protocol"),
        );
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let mut cgi = tokio::process::Command::new("git")
            .arg("http-backend")
            .env("GIT_PROJECT_ROOT", &self.root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("REQUEST_METHOD", method)
            .env("PATH_INFO", path)
            .env("QUERY_STRING", query)
            .env("CONTENT_TYPE", content_type)
            .env("CONTENT_LENGTH", body.len().to_string())
            .env("HTTP_CONTENT_ENCODING", encoding)
            .env("GIT_PROTOCOL", protocol)
            .env("REMOTE_USER", &self.user)
            .env("REMOTE_ADDR", "127.0.0.1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = cgi.stdin.take().unwrap();
        stdin.write_all(&body).await.unwrap();
        drop(stdin);
        let output = cgi.wait_with_output().await.unwrap();
        cgi_response(&output.stdout)
    }
}

/// A CGI program's output (headers, a blank line, the body) as an HTTP response.
fn cgi_response(output: &[u8]) -> Response<Full<Bytes>> {
    let split = output
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| (at, at + 4))
        .or_else(|| {
            output
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|at| (at, at + 2))
        })
        .unwrap_or((output.len(), output.len()));
    let head = String::from_utf8_lossy(&output[..split.0]);
    let mut response = Response::builder();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("500");
            response = response.status(code.parse::<u16>().unwrap_or(500));
        } else {
            response = response.header(name.trim(), value);
        }
    }
    response
        .body(Full::new(Bytes::copy_from_slice(&output[split.1..])))
        .unwrap()
}
