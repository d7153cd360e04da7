//! The gRPC service glue: method descriptors, handler registration, the Unix-socket
//! server and its graceful stop.
//!
//! grpcio-compiler only generates code for protobuf 2 and prost, so the three CSI services
//! are wired here by hand: one [`Method`] per RPC (unary, protobuf codec) and a
//! [`ServiceBuilder`] per service. Every handler goes through [`unary`], which
//! * runs the blocking implementation: the constant answers (plugin info, capabilities)
//!   inline on the completion-queue thread, everything that talks to Kubernetes or etcd on
//!   a thread of its own, so a slow etcd health check never delays a Probe; the answer is
//!   handed back to the completion queue through a one-shot channel ([`oneshot`]),
//! * counts the RPC and its latency by method and code (`etcdsnap_rpc_*`),
//! * logs it, and translates a [`Status`] into a grpcio status,
//! * holds an in-flight guard until the answer is written, so SIGTERM can wait for it.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use grpcio::{
    pb_de, pb_ser, Environment, Marshaller, Method, MethodType, RpcStatus, RpcStatusCode, Server, ServerBuilder,
    ServerCredentials, ServiceBuilder,
};
use lifeboat::metrics::Registry;

use crate::controller::Controller;
use crate::group_controller::GroupController;
use crate::identity::Identity;
use crate::metrics;
use crate::proto::csi;
use crate::status::Status;

macro_rules! unary_method {
    ($const:ident, $path:literal, $req:ty, $resp:ty) => {
        pub const $const: Method<$req, $resp> = Method {
            ty: MethodType::Unary,
            name: $path,
            req_mar: Marshaller {
                ser: pb_ser,
                de: pb_de,
            },
            resp_mar: Marshaller {
                ser: pb_ser,
                de: pb_de,
            },
        };
    };
}

unary_method!(
    GET_PLUGIN_INFO,
    "/csi.v1.Identity/GetPluginInfo",
    csi::GetPluginInfoRequest,
    csi::GetPluginInfoResponse
);
unary_method!(
    GET_PLUGIN_CAPABILITIES,
    "/csi.v1.Identity/GetPluginCapabilities",
    csi::GetPluginCapabilitiesRequest,
    csi::GetPluginCapabilitiesResponse
);
unary_method!(PROBE, "/csi.v1.Identity/Probe", csi::ProbeRequest, csi::ProbeResponse);
unary_method!(
    CONTROLLER_GET_CAPABILITIES,
    "/csi.v1.Controller/ControllerGetCapabilities",
    csi::ControllerGetCapabilitiesRequest,
    csi::ControllerGetCapabilitiesResponse
);
unary_method!(
    CREATE_SNAPSHOT,
    "/csi.v1.Controller/CreateSnapshot",
    csi::CreateSnapshotRequest,
    csi::CreateSnapshotResponse
);
unary_method!(
    DELETE_SNAPSHOT,
    "/csi.v1.Controller/DeleteSnapshot",
    csi::DeleteSnapshotRequest,
    csi::DeleteSnapshotResponse
);
unary_method!(
    LIST_SNAPSHOTS,
    "/csi.v1.Controller/ListSnapshots",
    csi::ListSnapshotsRequest,
    csi::ListSnapshotsResponse
);
unary_method!(
    GET_SNAPSHOT,
    "/csi.v1.Controller/GetSnapshot",
    csi::GetSnapshotRequest,
    csi::GetSnapshotResponse
);
unary_method!(
    VALIDATE_VOLUME_CAPABILITIES,
    "/csi.v1.Controller/ValidateVolumeCapabilities",
    csi::ValidateVolumeCapabilitiesRequest,
    csi::ValidateVolumeCapabilitiesResponse
);
unary_method!(
    GROUP_CONTROLLER_GET_CAPABILITIES,
    "/csi.v1.GroupController/GroupControllerGetCapabilities",
    csi::GroupControllerGetCapabilitiesRequest,
    csi::GroupControllerGetCapabilitiesResponse
);
unary_method!(
    CREATE_VOLUME_GROUP_SNAPSHOT,
    "/csi.v1.GroupController/CreateVolumeGroupSnapshot",
    csi::CreateVolumeGroupSnapshotRequest,
    csi::CreateVolumeGroupSnapshotResponse
);
unary_method!(
    DELETE_VOLUME_GROUP_SNAPSHOT,
    "/csi.v1.GroupController/DeleteVolumeGroupSnapshot",
    csi::DeleteVolumeGroupSnapshotRequest,
    csi::DeleteVolumeGroupSnapshotResponse
);
unary_method!(
    GET_VOLUME_GROUP_SNAPSHOT,
    "/csi.v1.GroupController/GetVolumeGroupSnapshot",
    csi::GetVolumeGroupSnapshotRequest,
    csi::GetVolumeGroupSnapshotResponse
);

/// Counts RPCs being handled; shutdown waits for it to reach zero.
#[derive(Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

struct InFlightGuard(InFlight, Registry);

impl InFlightGuard {
    fn enter(inflight: &InFlight, metrics: &Registry) -> InFlightGuard {
        let n = inflight.0.fetch_add(1, Ordering::SeqCst) + 1;
        metrics.set(&metrics::RPC_IN_FLIGHT, [], n as f64);
        InFlightGuard(inflight.clone(), metrics.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let n = self.0 .0.fetch_sub(1, Ordering::SeqCst) - 1;
        self.1.set(&metrics::RPC_IN_FLIGHT, [], n as f64);
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct Shared {
    pub metrics: Registry,
    pub inflight: InFlight,
}

fn to_grpc(status: &Status) -> RpcStatus {
    RpcStatus::with_message(RpcStatusCode::from(status.code.number()), status.message.clone())
}

/// At most this many RPCs are handled at once; more are refused with RESOURCE_EXHAUSTED.
const MAX_IN_FLIGHT: usize = 64;

/// A one-shot channel whose receiving end is a future, so a worker thread can hand its
/// answer to the completion queue that owns the call.
mod oneshot {
    use super::*;

    struct Slot<T> {
        value: Option<T>,
        waker: Option<Waker>,
    }

    pub struct Sender<T>(Arc<Mutex<Slot<T>>>);
    pub struct Receiver<T>(Arc<Mutex<Slot<T>>>);

    pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
        let slot = Arc::new(Mutex::new(Slot {
            value: None,
            waker: None,
        }));
        (Sender(Arc::clone(&slot)), Receiver(slot))
    }

    impl<T> Sender<T> {
        pub fn send(self, value: T) {
            let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
            slot.value = Some(value);
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
    }

    impl<T> Future for Receiver<T> {
        type Output = T;
        fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
            let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
            match slot.value.take() {
                Some(v) => Poll::Ready(v),
                None => {
                    slot.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }
}

/// Runs `handler` on a thread of its own; a panic becomes INTERNAL instead of a lost answer.
fn run_on_worker<Req, Resp, F>(name: &'static str, handler: Arc<F>, req: Req) -> oneshot::Receiver<Result<Resp, Status>>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Req) -> Result<Resp, Status> + Send + Sync + 'static,
{
    let (tx, rx) = oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let tx2 = Arc::clone(&tx);
    let spawned = std::thread::Builder::new().name(format!("rpc-{name}")).spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(req)))
            .unwrap_or_else(|_| Err(Status::internal(format!("{name}: the handler panicked"))));
        if let Some(tx) = tx2.lock().unwrap_or_else(|e| e.into_inner()).take() {
            tx.send(result);
        }
    });
    if let Err(e) = spawned {
        if let Some(tx) = tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
            tx.send(Err(Status::new(
                crate::status::Code::ResourceExhausted,
                format!("{name}: cannot start a thread: {e}"),
            )));
        }
    }
    rx
}

/// Registers `handler` for `method`: metrics, logs, status translation, in-flight tracking.
/// `inline` handlers (constant answers) run on the completion-queue thread.
fn unary<Req, Resp, F>(
    builder: ServiceBuilder,
    method: &Method<Req, Resp>,
    shared: &Shared,
    inline: bool,
    handler: F,
) -> ServiceBuilder
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Req) -> Result<Resp, Status> + Send + Sync + 'static,
{
    let name: &'static str = method.name.rsplit('/').next().unwrap_or(method.name);
    let quiet = inline || name == "Probe";
    let shared = shared.clone();
    let handler = Arc::new(handler);
    builder.add_unary_handler(method, move |ctx, req, sink| {
        let guard = InFlightGuard::enter(&shared.inflight, &shared.metrics);
        let start = Instant::now();
        let shared = shared.clone();
        let pending = if shared.inflight.count() > MAX_IN_FLIGHT {
            None
        } else if inline {
            let (tx, rx) = oneshot::channel();
            tx.send(handler(req));
            Some(rx)
        } else {
            Some(run_on_worker(name, Arc::clone(&handler), req))
        };
        let reply = async move {
            let result = match pending {
                Some(rx) => rx.await,
                None => Err(Status::new(
                    crate::status::Code::ResourceExhausted,
                    format!("more than {MAX_IN_FLIGHT} RPCs in flight; retry"),
                )),
            };
            let elapsed = start.elapsed();
            let code = match &result {
                Ok(_) => "OK",
                Err(s) => s.code.name(),
            };
            shared.metrics.inc(&metrics::RPC_TOTAL, [name, code]);
            shared
                .metrics
                .observe(&metrics::RPC_SECONDS, [name, code], elapsed.as_secs_f64());
            let ms = elapsed.as_secs_f64() * 1000.0;
            match &result {
                Ok(_) if quiet => log::debug!(method = name, code = code, ms = ms; "rpc"),
                Ok(_) => log::info!(method = name, code = code, ms = ms; "rpc"),
                Err(s) => log::warn!(method = name, code = code, ms = ms, error = s.message.as_str(); "rpc failed"),
            }
            let sent = match result {
                Ok(resp) => sink.success(resp).await,
                Err(status) => sink.fail(to_grpc(&status)).await,
            };
            if let Err(e) = sent {
                log::debug!(method = name, error:% = e; "rpc answer not delivered (client gone)");
            }
            drop(guard);
        };
        ctx.spawn(reply);
    })
}

/// The three CSI services on one builder.
pub fn services(
    identity: Arc<Identity>,
    controller: Arc<Controller>,
    group: Arc<GroupController>,
    shared: &Shared,
) -> Vec<grpcio::Service> {
    let mut ids = ServiceBuilder::new();
    let i = Arc::clone(&identity);
    ids = unary(ids, &GET_PLUGIN_INFO, shared, true, move |r| i.plugin_info(r));
    let i = Arc::clone(&identity);
    ids = unary(ids, &GET_PLUGIN_CAPABILITIES, shared, true, move |r| {
        i.plugin_capabilities(r)
    });
    let i = identity;
    ids = unary(ids, &PROBE, shared, false, move |r| i.probe(r));

    let mut ctl = ServiceBuilder::new();
    let c = Arc::clone(&controller);
    ctl = unary(ctl, &CONTROLLER_GET_CAPABILITIES, shared, true, move |r| {
        c.capabilities(r)
    });
    let c = Arc::clone(&controller);
    ctl = unary(ctl, &CREATE_SNAPSHOT, shared, false, move |r| c.create_snapshot(r));
    let c = Arc::clone(&controller);
    ctl = unary(ctl, &DELETE_SNAPSHOT, shared, false, move |r| c.delete_snapshot(r));
    let c = Arc::clone(&controller);
    ctl = unary(ctl, &LIST_SNAPSHOTS, shared, false, move |r| c.list_snapshots(r));
    let c = Arc::clone(&controller);
    ctl = unary(ctl, &GET_SNAPSHOT, shared, false, move |r| c.get_snapshot(r));
    let c = controller;
    ctl = unary(ctl, &VALIDATE_VOLUME_CAPABILITIES, shared, false, move |r| {
        c.validate_volume_capabilities(r)
    });

    let mut grp = ServiceBuilder::new();
    let g = Arc::clone(&group);
    grp = unary(grp, &GROUP_CONTROLLER_GET_CAPABILITIES, shared, true, move |r| {
        g.capabilities(r)
    });
    let g = Arc::clone(&group);
    grp = unary(grp, &CREATE_VOLUME_GROUP_SNAPSHOT, shared, false, move |r| g.create(r));
    let g = Arc::clone(&group);
    grp = unary(grp, &DELETE_VOLUME_GROUP_SNAPSHOT, shared, false, move |r| g.delete(r));
    let g = group;
    grp = unary(grp, &GET_VOLUME_GROUP_SNAPSHOT, shared, false, move |r| g.get(r));

    vec![ids.build(), ctl.build(), grp.build()]
}

/// Removes a stale socket left by a previous run; refuses to remove anything else.
pub fn remove_stale_socket(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| format!("{}: cannot remove stale socket: {e}", path.display()))
        }
        Ok(_) => Err(format!(
            "{}: exists and is not a socket; refusing to replace it",
            path.display()
        )),
    }
}

/// Starts the server on the Unix socket `path` (stale socket removed, parent created).
pub fn serve(path: &Path, threads: usize, services: Vec<grpcio::Service>) -> Result<Server, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    }
    remove_stale_socket(path)?;
    let env = Arc::new(Environment::new(threads));
    let mut builder = ServerBuilder::new(env);
    for s in services {
        builder = builder.register_service(s);
    }
    let mut server = builder
        .build()
        .map_err(|e| format!("cannot build the gRPC server: {e}"))?;
    server
        .add_listening_port(format!("unix:{}", path.display()), ServerCredentials::insecure())
        .map_err(|e| format!("cannot listen on unix:{}: {e}", path.display()))?;
    server.start();
    Ok(server)
}

/// Stops accepting calls and waits up to `grace` for in-flight RPCs to be answered;
/// cancels what is left after that. Returns whether everything finished in time.
pub fn stop(mut server: Server, inflight: &InFlight, grace: Duration) -> bool {
    let finished = block_on_timeout(server.shutdown(), grace).is_some();
    let clean = finished && inflight.count() == 0;
    if !clean {
        server.cancel_all_calls();
    }
    clean
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Drives one future on this thread, parking between polls; `None` after `timeout`.
fn block_on_timeout<F: Future>(future: F, timeout: Duration) -> Option<F::Output> {
    let deadline = Instant::now() + timeout;
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout((deadline - now).min(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_are_the_csi_paths() {
        assert_eq!(
            CREATE_VOLUME_GROUP_SNAPSHOT.name,
            "/csi.v1.GroupController/CreateVolumeGroupSnapshot"
        );
        assert_eq!(PROBE.name, "/csi.v1.Identity/Probe");
    }

    #[test]
    fn stale_sockets_are_removed_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("csi.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        drop(listener);
        assert!(sock.exists());
        remove_stale_socket(&sock).unwrap();
        assert!(!sock.exists());
        remove_stale_socket(&sock).unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, "keep").unwrap();
        let err = remove_stale_socket(&file).unwrap_err();
        assert!(err.contains("not a socket"), "{err}");
        assert!(file.exists());
    }

    #[test]
    fn block_on_times_out_and_completes() {
        assert_eq!(block_on_timeout(async { 7 }, Duration::from_millis(10)), Some(7));
        let never = std::future::pending::<()>();
        assert_eq!(block_on_timeout(never, Duration::from_millis(50)), None);
    }

    #[test]
    fn oneshot_hands_a_value_across_threads() {
        let (tx, rx) = oneshot::channel();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(5);
        });
        assert_eq!(block_on_timeout(rx, Duration::from_secs(5)), Some(5));
        t.join().unwrap();
        let handler = Arc::new(|x: i32| -> Result<i32, Status> {
            if x < 0 {
                panic!("negative");
            }
            Ok(x * 2)
        });
        let ok = block_on_timeout(run_on_worker("T", Arc::clone(&handler), 4), Duration::from_secs(5));
        assert_eq!(ok, Some(Ok(8)));
        let panicked = block_on_timeout(run_on_worker("T", handler, -1), Duration::from_secs(5)).unwrap();
        assert_eq!(panicked.unwrap_err().code, crate::status::Code::Internal);
    }

    #[test]
    fn statuses_keep_code_and_message() {
        let st = to_grpc(&Status::precondition("lost quorum"));
        assert_eq!(st.code(), RpcStatusCode::FAILED_PRECONDITION);
        assert_eq!(st.message(), "lost quorum");
    }
}
