//! Counts and times the requests rsgo makes to the Docker engine: an HTTP proxy on 127.0.0.1 in
//! front of the engine's socket, for an Environment whose host is `tcp://` the proxy (or a
//! `docker -H` beside it). Shared by the integration tests and the benchmark.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::{BodyExt, Either, Full};
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

/// One kind of call the proxy has seen.
#[derive(Debug, Clone, Copy, Default)]
pub struct Call {
    /// How many came.
    pub count: u64,
    /// How long the engine took over them in all, from the request to the answer's last byte.
    /// Answers that stream until something happens (the event feed, a container's wait, its
    /// logs or attachment) are not timed.
    pub engine_time: Duration,
}

/// What the proxy has seen.
#[derive(Default)]
struct Counts {
    /// Calls by method and path.
    calls: Mutex<BTreeMap<String, Call>>,
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
        self.take_timed()
            .into_iter()
            .map(|(call, seen)| (call, seen.count))
            .collect()
    }

    /// The calls seen since the last `take`, with the engine's time over them, and forgets them.
    pub fn take_timed(&self) -> BTreeMap<String, Call> {
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
            let streams = ["/events", "/wait", "/logs", "/attach"]
                .iter()
                .any(|end| key.ends_with(end));
            let waits = streams || key.ends_with("/images/create") || key.ends_with("/version");
            counts.seen(&key, |call| call.count += 1);
            if counts.refused.contains(&key) {
                let mut answer = http::Response::new(Either::Right(Full::new(Bytes::from_static(
                    b"{\"message\": \"refused by the test proxy\"}",
                ))));
                *answer.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                return Ok(answer);
            }
            if streams {
                let answer = sender.lock().await.send_request(request).await;
                return answer.map(|response| response.map(Either::Left));
            }
            let counted = !waits;
            if counted {
                let now = counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                counts.most_in_flight.fetch_max(now, Ordering::SeqCst);
            }
            let start = Instant::now();
            let answer = whole(&sender, request).await;
            counts.seen(&key, |call| call.engine_time += start.elapsed());
            if counted {
                counts.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            answer
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await;
}

impl Counts {
    /// Updates what is known of the `key` calls.
    fn seen(&self, key: &str, update: impl FnOnce(&mut Call)) {
        update(
            self.calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key.to_owned())
                .or_default(),
        );
    }
}

/// Sends `request` on and reads the engine's whole answer, so that its time covers the body.
async fn whole(
    sender: &tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Incoming>>,
    request: Request<Incoming>,
) -> hyper::Result<http::Response<Body>> {
    let response = sender.lock().await.send_request(request).await?;
    let (mut parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Ok(http::Response::from_parts(
        parts,
        Either::Right(Full::new(body)),
    ))
}

/// A call's method and path, with the API version and ids (or names) left out:
/// `GET /containers/json`, `POST /containers/{id}/start`, `HEAD /_ping`. A
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
            if part.len() >= 24 || (part.contains('_') && !part.starts_with('_')) {
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
