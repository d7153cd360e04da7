"""A model of what csi-snapshotter v8's sidecar controller calls and stores, written from its
source (kubernetes-csi/external-snapshotter: pkg/snapshotter/snapshotter.go,
pkg/group_snapshotter/group_snapshotter.go, pkg/sidecar-controller/snapshot_controller.go and
groupsnapshot_helper.go), to run against the driver with the independent grpcio client.

What it reproduces:
* every CSI call carries the sidecar's `--timeout` (the chart sets 60 s) as its deadline;
* a failed Create is retried with the work queue's exponential backoff (`--retry-interval-start`
  1 s, doubling, `--retry-interval-max` 5 min); CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE,
  RESOURCE_EXHAUSTED and ABORTED are not final (`isCSIFinalError`: the "being created"
  annotation stays), any other code is final, and the sidecar still retries;
* a dynamically provisioned single snapshot: CreateSnapshot again and again until
  ready_to_use (checkandUpdateContentStatusOperation calls createSnapshotWrapper while the
  content has no Spec.Source.SnapshotHandle);
* a dynamic group snapshot: CreateVolumeGroupSnapshot until the group is ready; its member
  VolumeSnapshotContents get their snapshot handles from the first OK answer, and each member
  is then followed by GetSnapshotStatus: ControllerGetCapabilities, and ListSnapshots with the
  snapshot_id when LIST_SNAPSHOTS is reported -- without it the member is taken for ready at
  once, with no creation time (then "now") and no size;
* updateSnapshotContentStatus / updateGroupSnapshotContentStatus: creationTime is set once, from
  the first OK answer (zero -> now), and never refreshed; restoreSize once, when > 0;
  readyToUse follows every answer.
Time is scaled: `time_scale` shortens the backoff and `max_wait` caps it (the real cap is 5 min)
so tests stay fast; the calls and their order are the same.
What it leaves out: the Kubernetes objects themselves (statuses are dicts here), events,
secrets, and the common snapshot-controller's own work beyond creating member contents.
"""

from __future__ import annotations

import time

import grpc

CSI_TIMEOUT = 60.0  # the chart's --timeout
NOT_FINAL = {grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}


def _ts(t) -> float:
    return t.seconds + t.nanos / 1e9


class Content:
    """A VolumeSnapshotContent's status as the sidecar writes it."""

    def __init__(self):
        self.snapshot_handle = None
        self.group_handle = None
        self.ready = None
        self.creation_time = None
        self.restore_size = None
        self.error = None  # (code, final) of the last failed call

    def update(self, handle, ready, created, size, group=None):
        if self.snapshot_handle is None:
            self.snapshot_handle = handle
        if self.ready != ready:
            self.ready = ready
            if ready:
                self.error = None
        if self.creation_time is None:
            self.creation_time = created if created else time.time()
        if self.restore_size is None and size > 0:
            self.restore_size = size
        if self.group_handle is None and group:
            self.group_handle = group


class Sidecar:
    def __init__(self, driver, pb2, time_scale: float = 0.05, max_wait: float = 1.0,
                 csi_timeout: float = CSI_TIMEOUT):
        self.d, self.pb2 = driver, pb2
        self.scale, self.max_wait = time_scale, max_wait
        self.csi_timeout = csi_timeout
        self.calls: list[tuple[str, str]] = []  # (method, code name)

    def _call(self, name, fn, req):
        try:
            resp = fn(req, timeout=self.csi_timeout)
        except grpc.RpcError as e:
            self.calls.append((name, e.code().name))
            raise
        self.calls.append((name, "OK"))
        return resp

    def _backoff(self, failures: int):
        time.sleep(min(min(2.0 ** (failures - 1), 300.0) * self.scale, self.max_wait))

    def create_snapshot(self, name: str, volume: str, parameters=None, budget: float = 120) -> Content:
        """A dynamic VolumeSnapshot: CreateSnapshot until ready_to_use."""
        content = Content()
        req = self.pb2.CreateSnapshotRequest(name=name, source_volume_id=volume, parameters=parameters or {})
        deadline, failures = time.monotonic() + budget, 0
        while time.monotonic() < deadline:
            try:
                s = self._call("CreateSnapshot", self.d.controller.CreateSnapshot, req).snapshot
            except grpc.RpcError as e:
                failures += 1
                content.error = (e.code(), e.code() not in NOT_FINAL)
                content.ready = False
                self._backoff(failures)
                continue
            content.update(s.snapshot_id, s.ready_to_use, _ts(s.creation_time), s.size_bytes)
            if content.ready:
                return content
            failures += 1  # requeued with the rate limiter while not ready
            self._backoff(failures)
        raise TimeoutError(f"snapshot {name} not ready after {budget} s; calls: {self.calls[-5:]}")

    def snapshot_status(self, snapshot_id: str):
        """GetSnapshotStatus: (ready, creation time or None, size)."""
        caps = self._call("ControllerGetCapabilities", self.d.controller.ControllerGetCapabilities,
                          self.pb2.ControllerGetCapabilitiesRequest()).capabilities
        RPC = self.pb2.ControllerServiceCapability.RPC
        if RPC.LIST_SNAPSHOTS not in {c.rpc.type for c in caps}:
            return True, None, 0
        resp = self._call("ListSnapshots", self.d.controller.ListSnapshots,
                          self.pb2.ListSnapshotsRequest(snapshot_id=snapshot_id))
        if not resp.entries:
            raise LookupError(f"can not find snapshot for snapshotID {snapshot_id}")
        s = resp.entries[0].snapshot
        return s.ready_to_use, _ts(s.creation_time), s.size_bytes

    def create_group(self, name: str, volumes: list[str], parameters=None, budget: float = 120,
                     on_members=None):
        """A dynamic VolumeGroupSnapshot. Returns (group content, {snapshot_id: member content}).
        `on_members(group, members)` runs once, right after the member contents exist."""
        group = Content()
        members: dict[str, Content] = {}
        req = self.pb2.CreateVolumeGroupSnapshotRequest(name=name, source_volume_ids=volumes,
                                                        parameters=parameters or {})
        deadline, failures = time.monotonic() + budget, 0
        while time.monotonic() < deadline:
            if not group.ready:
                try:
                    g = self._call("CreateVolumeGroupSnapshot", self.d.group.CreateVolumeGroupSnapshot,
                                   req).group_snapshot
                except grpc.RpcError as e:
                    failures += 1
                    group.error = (e.code(), e.code() not in NOT_FINAL)
                    group.ready = False
                    self._backoff(failures)
                    continue
                group.update(g.group_snapshot_id, g.ready_to_use, _ts(g.creation_time), 0)
                if not members:
                    for s in g.snapshots:
                        members[s.snapshot_id] = Content()
                        members[s.snapshot_id].snapshot_handle = s.snapshot_id
                        members[s.snapshot_id].group_handle = g.group_snapshot_id
                    if on_members:
                        on_members(group, members)
            for sid, m in members.items():
                if m.ready:
                    continue
                try:
                    ready, created, size = self.snapshot_status(sid)
                except (grpc.RpcError, LookupError) as e:
                    m.error = (getattr(e, "code", lambda: None)(), False)
                    m.ready = False
                    continue
                m.update(sid, ready, created, size, group.snapshot_handle)
            if group.ready and members and all(m.ready for m in members.values()):
                return group, members
            failures += 1
            self._backoff(failures)
        raise TimeoutError(f"group {name} not ready after {budget} s; calls: {self.calls[-5:]}")
