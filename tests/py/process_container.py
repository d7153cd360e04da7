"""The container side of the process kubelet: run as `unshare --mount <python> process_container.py
SPEC.json`, it builds the container's file system view in its own mount namespace and execs the
program. Nothing here runs in the test process.

View: a private tmpfs root with the host's /usr (and the merged-/usr links /bin /sbin /lib
/lib64), the host folders the kubelet names (the test tools and binaries), /etc/ssl and /proc
bound read-only; a few /etc files copied; a /dev with null, zero, full, random, urandom; a private
/tmp. Then each volume mount exactly at its mountPath (readOnly as a read-only bind), the
termination-message file, readOnlyRootFilesystem, chroot, workingDir, runAsGroup/runAsUser with
fsGroup and supplementalGroups, exec. Any failure before exec exits 128 with one line naming it,
as runc's StartError does.
"""

import ctypes
import json
import os
import shutil
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)


def fail(msg: str) -> None:
    sys.stderr.write(f"process-kubelet: container start failed: {msg}\n")
    sys.stderr.flush()
    os._exit(128)


def mount(src, target, fstype=None, flags=0, data=None) -> None:
    r = _libc.mount(src.encode() if src else None, target.encode(), fstype.encode() if fstype else None,
                    ctypes.c_ulong(flags), data.encode() if data else None)
    if r != 0:
        e = ctypes.get_errno()
        fail(f"mount {src} on {target}: {os.strerror(e)}")


def bind(src: str, target: str, read_only: bool, recursive: bool = False) -> None:
    mount(src, target, None, MS_BIND | (MS_REC if recursive else 0))
    if read_only:
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def make_target(root: str, path: str, is_file: bool) -> str:
    """root+path, creating it (and its parents) inside the private root; an existing target or one
    under a read-only host folder that lacks it is reported, not created on the host."""
    target = os.path.normpath(root + "/" + path)
    if not target.startswith(root.rstrip("/") + "/") and target != root:
        fail(f"mount path {path} leaves the container root")
    if os.path.lexists(target):
        if is_file and os.path.isdir(target):
            fail(f"cannot mount a file on directory {path}")
        return target
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if is_file:
            open(target, "a").close()
        else:
            os.mkdir(target)
    except OSError as e:
        fail(f"cannot create mount point {path} in the container root: {e.strerror} "
             "(it is under a read-only host folder)")
    return target


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    root = spec["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    os.makedirs(root, exist_ok=True)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=0755")
    for link in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        host = "/" + link
        if os.path.islink(host):
            os.symlink(os.readlink(host), f"{root}/{link}")
        elif os.path.isdir(host):
            os.mkdir(f"{root}/{link}")
            bind(host, f"{root}/{link}", True, recursive=True)
    for host in ["/usr", *spec.get("host_paths", [])]:
        if os.path.isdir(host):
            target = os.path.normpath(root + host)
            os.makedirs(target, exist_ok=True)
            bind(host, target, True, recursive=True)
    os.makedirs(f"{root}/etc", exist_ok=True)
    for f in ("passwd", "group", "hosts", "resolv.conf", "nsswitch.conf", "host.conf"):
        if os.path.isfile(f"/etc/{f}"):
            shutil.copyfile(f"/etc/{f}", f"{root}/etc/{f}")
    if os.path.isdir("/etc/ssl"):
        os.mkdir(f"{root}/etc/ssl")
        bind("/etc/ssl", f"{root}/etc/ssl", True, recursive=True)
    os.makedirs(f"{root}/dev", exist_ok=True)
    for dev in ("null", "zero", "full", "random", "urandom"):
        open(f"{root}/dev/{dev}", "a").close()
        mount(f"/dev/{dev}", f"{root}/dev/{dev}", None, MS_BIND)
    os.symlink("/proc/self/fd", f"{root}/dev/fd")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{root}/dev/{name}")
    os.makedirs(f"{root}/proc", exist_ok=True)
    bind("/proc", f"{root}/proc", True, recursive=True)
    os.makedirs(f"{root}/tmp", exist_ok=True)
    os.chmod(f"{root}/tmp", 0o1777)
    # Volume mounts, parents before children (as the kubelet orders them for runc).
    for m in sorted(spec["mounts"], key=lambda m: m["target"].rstrip("/").count("/")):
        is_file = os.path.isfile(m["source"])
        target = make_target(root, m["target"], is_file)
        bind(m["source"], target, m.get("readOnly", False))
    workdir = spec.get("workdir") or "/"
    if workdir != "/":
        make_target(root, workdir, False)
    if spec.get("readOnlyRoot"):
        mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chroot(root)
    os.chdir(workdir)
    groups = [int(g) for g in spec.get("groups", [])]
    gid = spec.get("gid")
    uid = spec.get("uid")
    try:
        if groups or gid is not None or uid is not None:
            os.setgroups(groups)
        if gid is not None:
            os.setgid(int(gid))
        if uid is not None:
            os.setuid(int(uid))
    except OSError as e:
        fail(f"cannot switch to uid {uid} gid {gid}: {e.strerror}")
    # setuid cleared the parent-death signal: die with the kubelet again.
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    try:
        os.execve(spec["program"], spec["argv"], spec["env"])
    except OSError as e:
        fail(f"exec {spec['program']} ({spec['argv'][0]}): {e.strerror}")


if __name__ == "__main__":
    main()
