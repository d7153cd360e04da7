"""Each binary's configuration contract, as the binary itself prints it.

`s3sync|hook|etcdsnap --print-config-schema` prints JSON `{"variables": [...]}`: every
environment variable the binary reads, declared by the very reads that parse it
(`lifeboat::env::Env`, run against an empty environment), with its kind (`string`, `bool`,
`integer`, `duration`, `dns-label`, `pass-through`), default, `min`/`max` or `max_length`, and
whether it is `secret` or `required`. Tests check the chart against this, never against source text.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = ("s3sync", "hook", "etcdsnap")


def bin_dir() -> Path:
    """Where the built binaries are: `$LIFEBOAT_BIN_DIR` or `<repo>/target/debug` (as conftest's)."""
    return Path(os.environ.get("LIFEBOAT_BIN_DIR") or REPO / "target" / "debug")


@functools.cache
def contract(component: str) -> dict:
    """What `component --print-config-schema` prints (etcdsnap adds `pvc_annotations`)."""
    exe = bin_dir() / component
    assert exe.is_file(), f"{exe} missing: run `cargo build --all-features --bins`"
    done = subprocess.run([str(exe), "--print-config-schema"], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert done.returncode == 0, f"{component} --print-config-schema: {done.returncode} {done.stderr[-2000:]}"
    return json.loads(done.stdout)


def variables(component: str) -> dict[str, dict]:
    """{name: declaration} of what `component` reads."""
    declared = contract(component)["variables"]
    names = [v["name"] for v in declared]
    assert len(names) == len(set(names)), f"{component}: a variable declared twice: {names}"
    return {v["name"]: v for v in declared}


def required(component: str) -> set[str]:
    """Variables without which the binary refuses to start."""
    return {name for name, v in variables(component).items() if v["required"]}
