//! The plain-HTTP layer: tiny_http on a private Unix socket, and the routes it serves.
//!
//! The TLS front end (`proxy`) hands every decrypted connection to this socket. It lives in a
//! fresh 0700 folder, so only this process can reach it and nothing bypasses TLS. tiny_http's
//! own accept loop ends for good after one accept() error (or a panic when descriptors run
//! out); when that happens the workers see the error, or the front end sees its connection
//! refused, and a new tiny_http server on a new socket takes over (the old one keeps
//! serving its open connections until they close).
//!
//! Routes (path only; the API server appends `?timeout=10s`): `POST /mutate`. Every request
//! arrives complete and carries its deadline (see `framing`): one found past it when a worker
//! takes it up, or once its answer is ready, gets 504, as the API server has given up on it.
//!
//! Requests with a body of [`LARGE_REQUEST`] or more (a Pod is a few KiB; a crafted one can be
//! megabytes and cost tens of milliseconds) are answered in a lane of their own, one at a time
//! (one thread): the workers hand them over and go on, so however many large
//! requests arrive, ordinary ones never wait behind them, and what large requests cost in
//! memory at once is bounded by the lane, not by the number of connections. The ones waiting
//! for the lane are bounded by the front end's connection cap and buffer budget, and their
//! deadline still applies when the lane takes them up.

use std::io::{ErrorKind, Read};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use lifeboat::metrics::Registry;
use tiny_http::{Header, Method, Request, Response};

use crate::admission::{self, Outcome};
use crate::annotations::KEYS;
use crate::framing::{self, DEADLINE_HEADER};
use crate::metrics;

/// A request body this large is answered in the large lane, and leaves enough freed memory
/// behind to be worth giving back (`alloc::trim_later`); a typical Pod is a few KiB.
pub const LARGE_REQUEST: usize = 64 * 1024;

/// Whether `request` is a large one (see [`LARGE_REQUEST`]); the front end always sends a
/// `Content-Length`.
fn is_large(request: &Request) -> bool {
    request.body_length().is_some_and(|n| n >= LARGE_REQUEST)
}

/// What the request handlers share.
pub struct App {
    pub admission: admission::Config,
    pub metrics: Registry,
    /// Request bodies larger than this are refused with 413.
    pub max_body: usize,
}

struct Current {
    server: Arc<tiny_http::Server>,
    path: PathBuf,
    generation: u64,
    /// Its accept loop has ended: replace it (retried until a new one binds).
    dead: bool,
}

/// The tiny_http server behind the TLS front end, replaced if its accept loop dies.
pub struct Backend {
    dir: PathBuf,
    current: RwLock<Current>,
}

impl Backend {
    /// Creates the private socket folder under `parent`, binds the first socket and starts
    /// `workers` request threads.
    pub fn start(parent: &Path, workers: usize, app: Arc<App>) -> Result<Arc<Backend>, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = parent.join(format!("lifeboat-hook-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("{}: cannot create the private socket folder: {e}", dir.display()))?;
        let current = bind(&dir, 0)?;
        let backend = Arc::new(Backend {
            dir,
            current: RwLock::new(current),
        });
        let (large, queued) = std::sync::mpsc::channel::<Request>();
        let lane_app = Arc::clone(&app);
        std::thread::Builder::new()
            .name("http-large".into())
            .spawn(move || {
                for request in queued {
                    handle(request, &lane_app);
                }
            })
            .map_err(|e| format!("cannot start a request thread: {e}"))?;
        for i in 0..workers.max(1) {
            let (backend, app, large) = (Arc::clone(&backend), Arc::clone(&app), large.clone());
            std::thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || backend.work(app, &large))
                .map_err(|e| format!("cannot start a request thread: {e}"))?;
        }
        Ok(backend)
    }

    /// Where the TLS front end connects.
    pub fn socket_path(&self) -> PathBuf {
        self.current.read().unwrap_or_else(|e| e.into_inner()).path.clone()
    }

    /// Opens a connection to the current server for the TLS front end.
    ///
    /// tiny_http's accept thread can also end by panicking (it unwraps a failed descriptor
    /// clone when descriptors run out), which closes the listener without any error reaching
    /// `recv`. A refused connection is that sign: the server is marked dead, a worker binds a
    /// new one within about a second, and the connection is tried once more on it.
    pub fn connect(&self) -> std::io::Result<UnixStream> {
        let (path, generation) = {
            let c = self.current.read().unwrap_or_else(|e| e.into_inner());
            (c.path.clone(), c.generation)
        };
        match UnixStream::connect(&path) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                self.mark_dead(generation, &format!("{}: {e}", path.display()));
                for _ in 0..30 {
                    std::thread::sleep(Duration::from_millis(100));
                    let c = self.current.read().unwrap_or_else(|e| e.into_inner());
                    if c.generation != generation {
                        return UnixStream::connect(&c.path);
                    }
                }
                Err(e)
            }
            other => other,
        }
    }

    /// Removes the socket folder (at exit).
    pub fn remove_socket_dir(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// A worker: takes requests from the current server, answers ordinary ones and hands
    /// large ones to the large lane.
    fn work(&self, app: Arc<App>, large: &std::sync::mpsc::Sender<Request>) {
        loop {
            let (server, generation, dead) = {
                let c = self.current.read().unwrap_or_else(|e| e.into_inner());
                (Arc::clone(&c.server), c.generation, c.dead)
            };
            if dead {
                self.replace(generation, &app);
            }
            // A timeout, so that after a replacement every worker moves to the new server, and
            // a failed replacement is retried (a dead server still serves its open connections).
            let wait = if dead {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(1)
            };
            match server.recv_timeout(wait) {
                Ok(Some(request)) if is_large(&request) => {
                    if let Err(back) = large.send(request) {
                        handle(back.0, &app);
                    }
                }
                Ok(Some(request)) => handle(request, &app),
                Ok(None) => {}
                Err(e) => {
                    app.metrics.inc(&metrics::ERRORS, ["accept"]);
                    self.mark_dead(generation, &e);
                }
            }
        }
    }

    /// Marks server `generation` as dead (once, with one log line) so a worker replaces it.
    fn mark_dead(&self, generation: u64, cause: &dyn std::fmt::Display) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.generation == generation && !current.dead {
            log::error!(error:% = cause; "the HTTP layer stopped accepting; starting a new one");
            current.dead = true;
        }
    }

    /// Binds a new tiny_http server unless another worker already replaced `generation`;
    /// on failure (e.g. still out of file descriptors) the next worker to look tries again.
    fn replace(&self, generation: u64, app: &Arc<App>) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.generation != generation || !current.dead {
            return;
        }
        match bind(&self.dir, generation + 1) {
            Ok(next) => {
                let old = std::mem::replace(&mut *current, next);
                drop(current);
                let _ = std::fs::remove_file(&old.path);
                log::info!(socket:% = self.socket_path().display(); "a new HTTP layer took over");
                // The old server still holds open connections: serve them until they close.
                let app = Arc::clone(app);
                let _ = std::thread::Builder::new().name("http-old".into()).spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(600);
                    while old.server.num_connections() > 0 && Instant::now() < deadline {
                        if let Ok(Some(request)) = old.server.recv_timeout(Duration::from_millis(500)) {
                            handle(request, &app);
                        }
                    }
                });
            }
            Err(e) => log::warn!(error:% = e; "cannot start a new HTTP layer yet; will retry"),
        }
    }
}

fn bind(dir: &Path, generation: u64) -> Result<Current, String> {
    let path = dir.join(format!("http-{generation}.sock"));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| format!("{}: cannot listen: {e}", path.display()))?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| format!("{}: cannot serve: {e}", path.display()))?;
    Ok(Current {
        server: Arc::new(server),
        path,
        generation,
        dead: false,
    })
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

fn text(status: u16, body: impl Into<String>) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body)
        .with_status_code(status)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
}

/// Answers one request and records it.
fn handle(mut request: Request, app: &App) {
    let started = Instant::now();
    let path = request.url().split('?').next().unwrap_or("");
    let response = if path != "/mutate" {
        text(404, "not found: the admission endpoint is POST /mutate\n")
    } else if *request.method() != Method::Post {
        text(405, "method not allowed: use POST\n").with_header(header("Allow", "POST"))
    } else {
        mutate(&mut request, app)
    };
    let code = response.status_code().0;
    app.metrics.inc(&metrics::REQUESTS, [&code.to_string()]);
    let large = is_large(&request);
    if let Err(e) = request.respond(response) {
        app.metrics.inc(&metrics::ERRORS, ["respond"]);
        log::debug!(error:% = e; "client went away before the response was sent");
    }
    if large {
        // Its body, parsed Pod and patch are freed by now, mostly in small pieces.
        crate::alloc::trim_later();
    }
    app.metrics
        .observe(&metrics::REQUEST_SECONDS, [], started.elapsed().as_secs_f64());
}

/// The deadline the front end gave the request, if any.
fn deadline(request: &Request) -> Option<Instant> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(DEADLINE_HEADER))
        .and_then(|h| h.value.as_str().parse().ok())
        .map(framing::from_micros)
}

fn too_late(app: &App) -> Response<std::io::Cursor<Vec<u8>>> {
    app.metrics.inc(&metrics::ERRORS, ["deadline"]);
    text(
        504,
        "the request's deadline (the API server's timeout) passed before it could be answered\n",
    )
}

fn mutate(request: &mut Request, app: &App) -> Response<std::io::Cursor<Vec<u8>>> {
    let deadline = deadline(request);
    let late = || deadline.is_some_and(|d| Instant::now() >= d);
    if late() {
        return too_late(app);
    }
    let content_type = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.as_str().to_ascii_lowercase());
    let media = content_type
        .as_deref()
        .map(|c| c.split(';').next().unwrap_or("").trim());
    if media != Some("application/json") {
        app.metrics.inc(&metrics::ERRORS, ["content_type"]);
        return text(415, "unsupported media type: send Content-Type: application/json\n");
    }
    if request.body_length().is_some_and(|n| n > app.max_body) {
        app.metrics.inc(&metrics::ERRORS, ["too_large"]);
        return text(413, format!("request body larger than {} bytes\n", app.max_body));
    }
    let mut body = Vec::new();
    if let Err(e) = request.as_reader().take(app.max_body as u64 + 1).read_to_end(&mut body) {
        app.metrics.inc(&metrics::ERRORS, ["read"]);
        return text(400, format!("cannot read the request body: {e}\n"));
    }
    if body.len() > app.max_body {
        app.metrics.inc(&metrics::ERRORS, ["too_large"]);
        return text(413, format!("request body larger than {} bytes\n", app.max_body));
    }
    let answer = if is_large(request) {
        // Its many small pieces in the lane's region, given back whole (`region`).
        crate::region::run(|| admission::review(&body, &app.admission))
    } else {
        admission::review(&body, &app.admission)
    };
    if late() {
        return too_late(app);
    }
    app.metrics.inc(&metrics::ADMISSIONS, [answer.outcome.label()]);
    match answer.outcome {
        Outcome::Injected => {
            app.metrics.inc(&metrics::INJECTIONS, []);
            log::info!(uid = answer.uid.as_str(), detail = answer.detail.as_str(); "injected Litestream");
        }
        Outcome::Denied => {
            let key = answer
                .annotation
                .strip_prefix(&app.admission.prefix)
                .and_then(|k| k.strip_prefix('/'))
                .filter(|k| KEYS.contains(k))
                .unwrap_or(if answer.annotation.is_empty() { "none" } else { "other" });
            app.metrics.inc(&metrics::DENIALS, [key]);
            log::info!(uid = answer.uid.as_str(), reason = answer.detail.as_str(); "denied a Pod");
        }
        Outcome::Skipped => {
            log::debug!(uid = answer.uid.as_str(), reason = answer.detail.as_str(); "allowed unchanged")
        }
        Outcome::Invalid => {
            app.metrics.inc(&metrics::ERRORS, ["invalid"]);
            log::warn!(reason = answer.detail.as_str(); "refused a request that is not an AdmissionReview");
        }
    }
    let content_type = if answer.status == 200 {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    Response::from_string(answer.body)
        .with_status_code(answer.status)
        .with_header(header("Content-Type", content_type))
}
