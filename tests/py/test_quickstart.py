"""The README's first command, `bash tests/quickstart.sh`, run as a user would: it succeeds with
every step reporting what it proved, prints no secret, and leaves no process and no file behind;
interrupted (Ctrl-C) or with a step failing, it still cleans up and says so."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "quickstart.sh"
# The quickstart's own secret, from the module itself (loaded, not run), to check it never shows.
_spec = importlib.util.spec_from_file_location("quickstart", REPO / "tests" / "quickstart.py")
_quickstart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_quickstart)
S3_SECRET = _quickstart.S3_SECRET_KEY


def env_with_tmp(tmp: Path) -> dict:
    env = dict(os.environ)
    env["TMPDIR"] = str(tmp)
    return env


def leftovers(tmp: Path) -> list[str]:
    """Processes whose command line or environment mention `tmp` (ours all do: data dirs,
    certificate paths, sockets), and whatever is left in `tmp`."""
    needle = str(tmp).encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                data = (Path("/proc") / pid / part).read_bytes()
            except OSError:
                continue
            if needle in data:
                cmd = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ")[:120]
                found.append(f"pid {pid}: {cmd.decode(errors='replace')}")
                break
    found += [f"file {p}" for p in tmp.iterdir()]
    return found


def socket_dirs() -> set[Path]:
    """The short directories the quickstart makes for Unix sockets when TMPDIR is long."""
    return set(Path("/tmp").glob("lbqs.*"))


def assert_clean(tmp: Path, socket_dirs_before: set[Path]) -> None:
    # The script has exited; its children are stopped before that. A short bounded grace for the
    # kernel to finish tearing processes down.
    try:
        wait_for(lambda: not leftovers(tmp), 10, "no process or file left behind", interval=0.2)
    except AssertionError:
        raise AssertionError(f"left behind: {leftovers(tmp)}") from None
    assert socket_dirs() - socket_dirs_before == set()


def test_quickstart_runs_every_step_and_leaves_nothing(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    before = socket_dirs()
    cp = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env_with_tmp(tmp), capture_output=True, text=True,
                        timeout=1200)
    out = cp.stdout + cp.stderr
    assert cp.returncode == 0, out[-6000:]
    for line in (
        # s3sync: the dry run changes nothing, the sync copies the seeded objects and deletes the stale one
        "destination unchanged by the dry run",
        "sync finished  outcome=success transfers=5 deletes=1",
        "sync finished  outcome=success transfers=0 deletes=0",
        "db/orders.dump", "reports/2026-11.csv",
        # hook: the decision, the patch, the patched Pod checked by an independent implementation
        "decision: allowed=True patchType=JSONPatch uid=3f6b9a52-quickstart",
        "litestream-hook-replicate", '"bucket": "orders-backup"',
        "is valid against the Kubernetes 1.33 Pod schema",
        # etcdsnap: a real snapshot through the CSI socket, checked by etcdutl, then deleted
        "GetPluginInfo -> etcdsnap.lifeboat.dev",
        "verified: hash, revision and size match what etcdsnap reported",
        "DeleteVolumeGroupSnapshot: Job, PVC and records removed",
        "passed strict Kubernetes 1.33 schema validation",
        "all steps succeeded",
    ):
        assert line in out, f"{line!r} missing from the quickstart output:\n{out[-6000:]}"
    for step in ("s3sync", "hook", "etcdsnap"):
        assert re.search(rf"^  ok +{step} ", out, re.M), f"step {step} not ok:\n{out[-3000:]}"
    assert "FAILED" not in out
    assert S3_SECRET not in out
    assert_clean(tmp, before)


class Reader:
    """Collects a child's output lines on a thread, so waits on it are bounded."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._run, args=(proc,), daemon=True)
        self.thread.start()

    def _run(self, proc):
        for line in proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def ctrl_c_as_in_a_terminal() -> None:
    """In the child before exec: SIGINT at its default, as in a terminal's shell. A test run
    started in the background of a non-interactive shell inherits SIGINT ignored, and bash can
    then not trap it: the script would run on and this test would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_mid_run_stops_everything_and_removes_the_files(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    before = socket_dirs()
    proc = subprocess.Popen(["bash", str(SCRIPT)], cwd=REPO, env=env_with_tmp(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=ctrl_c_as_in_a_terminal)
    reader = Reader(proc)
    try:
        # Interrupt while the etcd cluster runs and the API stand-in and the driver start (seconds
        # before the end, so the signal cannot come too late).
        wait_for(lambda: "wrote 25 keys" in reader.text or proc.poll() is not None, 600,
                 "the etcd cluster to run", interval=0.05)
        assert proc.poll() is None, reader.text[-3000:]
        os.kill(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C delivers to the script
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    reader.thread.join(10)
    out = reader.text
    assert code == 130, out[-3000:]
    assert "quickstart: interrupted by SIGTERM: stopping everything" in out
    assert "all steps succeeded" not in out
    assert_clean(tmp, before)


def test_a_failing_step_is_reported_and_cleaned_up(tmp_path, bin_dir, tools_bin):
    """etcdsnap replaced by a program that fails at start: the other steps still run, the summary
    names the failure, the exit status is 1, and the etcd cluster and API stand-in are gone."""
    bins = tmp_path / "bin"
    bins.mkdir()
    for name in ("s3sync", "hook"):
        assert (bin_dir / name).exists(), f"{bin_dir / name} missing: cargo build --bins"
        (bins / name).symlink_to(bin_dir / name)
    fake = bins / "etcdsnap"
    fake.write_text("#!/bin/sh\necho 'etcdsnap: broken on purpose' >&2\nexit 3\n")
    fake.chmod(0o755)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    before = socket_dirs()
    cp = subprocess.run([str(tools_bin / "python"), str(REPO / "tests" / "quickstart.py"), "--bin-dir", str(bins),
                         "--tools", str(tools_bin)], cwd=REPO, env=env_with_tmp(tmp), capture_output=True, text=True,
                        timeout=300)
    out = cp.stdout + cp.stderr
    assert cp.returncode == 1, out[-3000:]
    assert re.search(r"^  ok +s3sync ", out, re.M) and re.search(r"^  ok +hook ", out, re.M), out[-3000:]
    assert re.search(r"^  FAILED etcdsnap .*etcdsnap exited with 3", out, re.M), out[-3000:]
    assert "quickstart FAILED" in out
    assert_clean(tmp, before)


def test_missing_build_tools_are_named_before_anything_runs(tmp_path):
    """Without cmake (and with no apt-get to install it), the script stops at once, names what is
    missing and how to install it, and starts nothing."""
    path = tmp_path / "path"
    path.mkdir()
    for prog in ("dirname", "id", "cargo", "c++", "make"):
        found = shutil.which(prog)
        assert found, f"{prog} not on PATH"
        (path / prog).symlink_to(found)
    (path / "python3").symlink_to(sys.executable)  # the venv's, which has ensurepip and venv too
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = env_with_tmp(tmp)
    env["PATH"] = str(path)
    cp = subprocess.run(["/bin/bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2, cp.stdout + cp.stderr
    assert "quickstart: missing cmake" in cp.stderr and "apt-get install -y cmake" in cp.stderr, cp.stderr
    assert "== build" not in cp.stdout and "== tools" not in cp.stdout
    assert list(tmp.iterdir()) == []
