//! Load client for `bench/hook.sh`: N threads, each with one keep-alive TLS connection,
//! POSTing the same AdmissionReview to `/mutate` and timing every request.
//!
//! Usage: hook_load ADDR CA_FILE BODY_FILE CONCURRENCY REQUESTS_PER_CONNECTION [START_NS]
//! With START_NS (nanoseconds since the epoch when the server was spawned) it first polls
//! until a request succeeds and prints the start-up time (and with `SAVE_RESPONSE=FILE` saves
//! that answer, for `hook_floor`), then runs the load.
//! Prints one JSON line: concurrency, requests, p50/p90/p99/max in ms, req/s, errors.
//!
//! Closed loop by default: each connection sends its next request as soon as the previous
//! answer is in, so latency at concurrency N is N / throughput. With `RATE=R` in the
//! environment it is open loop instead: the connections together start R requests per
//! second on a fixed schedule, and each latency is counted from the request's scheduled
//! start, so a late answer also delays (and is charged to) the requests queued behind it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn connect(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let conn = rustls::ClientConnection::new(Arc::clone(config), "localhost".try_into().unwrap())
        .map_err(std::io::Error::other)?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Sends one request and reads the whole response; returns the status.
fn exchange(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    request: &[u8],
) -> std::io::Result<u16> {
    exchange_body(stream, request).map(|(status, _)| status)
}

/// Like [`exchange`], also returning the body.
fn exchange_body(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    request: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    stream.write_all(request)?;
    stream.flush()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h
            .strip_prefix("Content-Length:")
            .or_else(|| h.strip_prefix("content-length:"))
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok((status, body))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: hook_load ADDR CA_FILE BODY_FILE CONCURRENCY REQUESTS_PER_CONNECTION [START_NS]");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[1].parse().expect("ADDR");
    let roots = lifeboat::tls::load_roots(std::path::Path::new(&args[2])).expect("CA_FILE");
    let body = std::fs::read(&args[3]).expect("BODY_FILE");
    let concurrency: usize = args[4].parse().expect("CONCURRENCY");
    let per_conn: usize = args[5].parse().expect("REQUESTS_PER_CONNECTION");
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(lifeboat::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let mut request = format!(
        "POST /mutate?timeout=10s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let request = Arc::new(request);

    if let Some(start) = args.get(6) {
        let start_ns: u128 = start.parse().expect("START_NS");
        // Bounded: 10 s of 1 ms attempts.
        for _ in 0..10_000 {
            if let Ok(mut s) = connect(addr, &config) {
                if let Ok((200, answer)) = exchange_body(&mut s, &request) {
                    if let Ok(path) = std::env::var("SAVE_RESPONSE") {
                        std::fs::write(path, answer).expect("SAVE_RESPONSE");
                    }
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
                    println!("{{\"startup_ms\":{:.1}}}", (now - start_ns) as f64 / 1e6);
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    if per_conn == 0 {
        return;
    }
    let rate: Option<f64> = std::env::var("RATE")
        .ok()
        .map(|r| r.parse().expect("RATE (requests per second)"));
    // Time between two requests on one connection, and each connection's phase offset.
    let interval = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / r));
    let warmup = 50.min(per_conn);
    let barrier = Arc::new(std::sync::Barrier::new(concurrency));
    let started = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|index| {
            let (config, request, barrier) = (Arc::clone(&config), Arc::clone(&request), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut stream = connect(addr, &config).expect("connect");
                let mut times = Vec::with_capacity(per_conn);
                let mut errors = 0usize;
                for _ in 0..warmup {
                    let _ = exchange(&mut stream, &request);
                }
                barrier.wait();
                let t0 = Instant::now();
                let phase = interval.map_or(Duration::ZERO, |i| i * index as u32 / concurrency as u32);
                for n in 0..per_conn {
                    let t = match interval {
                        Some(i) => {
                            let due = t0 + phase + i * n as u32;
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                            due
                        }
                        None => Instant::now(),
                    };
                    match exchange(&mut stream, &request) {
                        Ok(200) => times.push(t.elapsed()),
                        other => {
                            if errors == 0 {
                                eprintln!("first error: {other:?}");
                            }
                            errors += 1;
                        }
                    }
                }
                (times, errors, t0.elapsed())
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    let mut longest = Duration::ZERO;
    for t in threads {
        let (times, e, wall) = t.join().unwrap();
        all.extend(times);
        errors += e;
        longest = longest.max(wall);
    }
    let _ = started;
    all.sort();
    println!(
        "{{\"concurrency\":{concurrency},{}\"requests\":{},\"errors\":{errors},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"req_per_s\":{:.0}}}",
        rate.map_or(String::new(), |r| format!("\"rate\":{r},")),
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.9),
        percentile(&all, 0.99),
        percentile(&all, 1.0),
        all.len() as f64 / longest.as_secs_f64()
    );
}
