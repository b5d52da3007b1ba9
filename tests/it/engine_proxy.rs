//! Counts the requests rsgo makes to the Docker engine: an HTTP proxy on 127.0.0.1 in front of
//! the engine's socket, for an Environment whose host is `tcp://` the proxy. Shared by the
//! integration tests and the benchmark.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::Request;
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;

const SOCKET: &str = "/var/run/docker.sock";

/// What the proxy answers with: the engine's body, or its own refusal.
type Body = Either<Incoming, Full<Bytes>>;

/// A running proxy; it stops when dropped.
pub struct EngineProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    _runtime: tokio::runtime::Runtime,
}

/// What the proxy has seen.
#[derive(Default)]
struct Counts {
    /// Calls by method and path.
    calls: Mutex<BTreeMap<String, u64>>,
    /// Requests sent on and not yet answered, leaving out those that wait by design (a
    /// container's exit or stop, an image pull's progress, the engine's version check, its
    /// event feed).
    in_flight: AtomicUsize,
    /// The most `in_flight` has been.
    most_in_flight: AtomicUsize,
    /// Calls answered 503 instead of being forwarded.
    refused: Vec<String>,
}

impl EngineProxy {
    /// Starts the proxy on a free port of 127.0.0.1.
    pub fn start() -> Self {
        Self::refusing(&[])
    }

    /// Starts the proxy, answering the calls named in `refused` (as [`EngineProxy::take`]
    /// names them, `GET /events`) with 503 instead of forwarding them.
    pub fn refusing(refused: &[&str]) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let counts = Arc::new(Counts {
            refused: refused.iter().map(|call| (*call).to_owned()).collect(),
            ..Counts::default()
        });
        let counted = counts.clone();
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, counted.clone()));
            }
        });
        Self {
            addr,
            counts,
            _runtime: runtime,
        }
    }

    /// The Docker host an Environment uses to go through the proxy.
    pub fn host(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// The calls counted since the last `take`, by method and path, and forgets them.
    pub fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.counts.calls.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The most requests that were in flight at once (see [`Counts::in_flight`]).
    pub fn most_in_flight(&self) -> usize {
        self.counts.most_in_flight.load(Ordering::SeqCst)
    }
}

/// Forwards one client connection's requests to the engine, counting each.
async fn serve(client: tokio::net::TcpStream, counts: Arc<Counts>) {
    let Ok(engine) = tokio::net::UnixStream::connect(SOCKET).await else {
        return;
    };
    let Ok((sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(engine)).await
    else {
        return;
    };
    tokio::spawn(connection);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (sender, counts) = (sender.clone(), counts.clone());
        async move {
            let key = call_name(request.method().as_str(), request.uri());
            let waits = key.ends_with("/wait")
                || key.ends_with("/images/create")
                || key.ends_with("/version")
                || key.ends_with("/events");
            let refused = counts.refused.contains(&key);
            *counts
                .calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default() += 1;
            if refused {
                let mut answer = http::Response::new(Either::Right(Full::new(Bytes::from_static(
                    b"{\"message\": \"refused by the test proxy\"}",
                ))));
                *answer.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                return Ok(answer);
            }
            if waits {
                return forwarded(sender.lock().await.send_request(request).await);
            }
            let now = counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            counts.most_in_flight.fetch_max(now, Ordering::SeqCst);
            let answer = sender.lock().await.send_request(request).await;
            counts.in_flight.fetch_sub(1, Ordering::SeqCst);
            forwarded(answer)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await;
}

/// The engine's answer, passed on as it came.
fn forwarded(
    answer: hyper::Result<http::Response<Incoming>>,
) -> hyper::Result<http::Response<Body>> {
    answer.map(|response| response.map(Either::Left))
}

/// A call's method and path, with the API version and ids left out: `GET /containers/json`. A
/// list filtered by ids, which the engine answers from its index, and one of a single stack's
/// objects are told apart: `GET /containers/json by id`, `GET /networks of a stack`.
fn call_name(method: &str, uri: &http::Uri) -> String {
    let path: Vec<&str> = uri
        .path()
        .split('/')
        .filter(|part| !part.is_empty())
        .enumerate()
        .filter(|(i, part)| !(*i == 0 && part.starts_with("v1.")))
        .map(|(_, part)| {
            if part.len() >= 24 || part.contains('_') {
                "{id}"
            } else {
                part
            }
        })
        .collect();
    let query = uri.query().unwrap_or_default();
    let suffix = if query.contains("%22id%22") {
        " by id"
    } else if query.contains("io.rsgo.stack") {
        " of a stack"
    } else {
        ""
    };
    format!("{method} /{}{suffix}", path.join("/"))
}
