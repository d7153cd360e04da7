"""Litestream settings passed through by the hook (sync-interval, snapshot-interval, retention,
validation-interval; per Pod and as cluster defaults), checked against the real Litestream 0.5:
what the hook admits, the real `hook write-config` writes and the real `litestream replicate`
starts with, its log showing each value in effect; what the hook denies (naming the
annotation), Litestream refuses too when handed it in the same config. The Pod is injected with
`hook inject -f` (the webhook's own decision, offline).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from etcd_cluster import scrubbed_env
from kube_control_plane import kill
from test_kube_hook import ACCESS_KEY, PREFIX, SECRET_KEY, s3  # noqa: F401  (s3 is a fixture)
from waiting import wait_for

HOOK_IMAGE = "registry.example/lifeboat:test"


def pod(db: str, endpoint: str, **annotations) -> dict:
    ann = {f"{PREFIX}/inject": "true", f"{PREFIX}/path": db, f"{PREFIX}/bucket": "pods",
           f"{PREFIX}/endpoint": endpoint, f"{PREFIX}/secret": "s3"}
    ann.update({f"{PREFIX}/{k}": v for k, v in annotations.items()})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": "shop", "annotations": ann},
            "spec": {"containers": [{"name": "app", "image": "local/app:1"}]}}


def inject(bin_dir, tmp_path, obj, env=None):
    """`hook inject -f`: (exit code, the patched object or None, stderr)."""
    f = tmp_path / "in.json"
    f.write_text(json.dumps(obj))
    e = scrubbed_env({"HOOK_IMAGE": HOOK_IMAGE, **(env or {})})
    for var in ("VARIANT", "NATIVE_SIDECAR", "LOG_LEVEL"):
        e.pop(var, None)
    r = subprocess.run([str(bin_dir / "hook"), "inject", "-f", str(f)], env=e, capture_output=True, text=True,
                       timeout=60)
    out = json.loads(r.stdout) if r.returncode == 0 else None
    return r.returncode, out, r.stderr


def write_config(bin_dir, patched, dest):
    """Runs the injected config writer (the real `hook write-config`) with its env as the kubelet
    would pass it (`$$` is the kubelet's escape of `$`); returns the config it wrote."""
    [writer] = [c for c in patched["spec"]["initContainers"] if c["name"] == "litestream-hook-config"]
    env = {e["name"]: e["value"].replace("$$", "$") for e in writer["env"]}
    r = subprocess.run([str(bin_dir / "hook"), "write-config", str(dest)], env=scrubbed_env(env),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(dest.read_text())


def run_litestream(tools_bin, config_file, tmp_path, seconds=4.0):
    """`litestream replicate` on `config_file` for `seconds` (or until it exits): (exit code or
    None while still running, log)."""
    log = tmp_path / "litestream.log"
    env = scrubbed_env({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                        "HOME": str(tmp_path), "LOG_LEVEL": "debug"})
    with open(log, "wb") as out:
        p = subprocess.Popen([str(tools_bin / "litestream"), "replicate", "-no-expand-env", "-config",
                              str(config_file)], env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)
        code = p.poll()
    finally:
        kill(p, grace=30)
    return code, log.read_text(errors="replace")


def make_db(path):
    subprocess.run(["/usr/bin/python3", "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); "
                    "c.execute('pragma journal_mode=wal'); c.execute('create table t (x)'); c.commit()", str(path)],
                   check=True, timeout=30)


def test_litestream_starts_with_the_settings_and_shows_each_in_effect(s3, bin_dir, tools_bin, tmp_path):  # noqa: F811
    db = tmp_path / "data" / "app.db"
    db.parent.mkdir()
    make_db(db)
    code, patched, err = inject(bin_dir, tmp_path, pod(str(db), s3["endpoint"], **{
        "sync-interval": "700ms", "snapshot-interval": "3m", "retention": "2h", "validation-interval": "90s"}))
    assert code == 0, err
    config_file = tmp_path / "litestream.yml"
    config = write_config(bin_dir, patched, config_file)
    assert config["snapshot"] == {"interval": "3m", "retention": "2h"} and config["validation"] == {"interval": "90s"}
    code, log = run_litestream(tools_bin, config_file, tmp_path)
    assert code is None, f"litestream exited {code}: {log}"
    # Each value as Litestream logs it once in effect: the replica's sync interval, the
    # snapshot level's (9) compaction interval, the snapshot retention cut-off, the validator.
    assert "sync-interval=700ms" in log, log
    assert "level=9 interval=3m0s" in log, log
    assert 'msg="starting validation monitor" system=store interval=1m30s' in log, log
    assert "enforcing snapshot retention" in log, log
    # The replica reached S3.
    wait_for(lambda: any((s3["root"] / "pods" / "shop" / "app" / "app.db").rglob("*.ltx")), 30, "LTX files in S3")


def test_cluster_defaults_apply_and_annotations_override_them(s3, bin_dir, tools_bin, tmp_path):  # noqa: F811
    db = tmp_path / "data" / "app.db"
    db.parent.mkdir()
    make_db(db)
    defaults = {"DEFAULT_SYNC_INTERVAL": "2s", "DEFAULT_SNAPSHOT_INTERVAL": "2h", "DEFAULT_RETENTION": "72h",
                "DEFAULT_VALIDATION_INTERVAL": "6h"}
    code, patched, err = inject(bin_dir, tmp_path, pod(str(db), s3["endpoint"], retention="48h"), env=defaults)
    assert code == 0, err
    config_file = tmp_path / "litestream.yml"
    config = write_config(bin_dir, patched, config_file)
    assert config["snapshot"] == {"interval": "2h", "retention": "48h"}, config
    assert config["validation"] == {"interval": "6h"} and config["dbs"][0]["replica"]["sync-interval"] == "2s"
    code, log = run_litestream(tools_bin, config_file, tmp_path)
    assert code is None, f"litestream exited {code}: {log}"
    assert "sync-interval=2s" in log and "level=9 interval=2h0m0s" in log and "interval=6h0m0s" in log, log
    # A bad default stops the hook at start, naming the variable.
    code, _, err = inject(bin_dir, tmp_path, pod(str(db), s3["endpoint"]), env={"DEFAULT_RETENTION": "0s"})
    assert code == 2 and "DEFAULT_RETENTION" in err, (code, err)


# (annotation, value, where it goes in the config): values Litestream 0.5 itself refuses.
REFUSED_BY_LITESTREAM = [
    ("sync-interval", "0s", ("dbs", 0, "replica", "sync-interval")),
    ("sync-interval", "-1s", ("dbs", 0, "replica", "sync-interval")),
    ("sync-interval", "9999999h", ("dbs", 0, "replica", "sync-interval")),
    ("snapshot-interval", "0s", ("snapshot", "interval")),
    ("snapshot-interval", "-5m", ("snapshot", "interval")),
    ("snapshot-interval", "1 day", ("snapshot", "interval")),
    ("retention", "0s", ("snapshot", "retention")),
    ("retention", "-1h", ("snapshot", "retention")),
    ("retention", "9999999h", ("snapshot", "retention")),
    ("validation-interval", "soon", ("validation", "interval")),
]


def test_what_litestream_refuses_the_hook_denies_naming_the_annotation(s3, bin_dir, tools_bin, tmp_path):  # noqa: F811
    db = tmp_path / "data" / "app.db"
    db.parent.mkdir()
    make_db(db)
    code, patched, err = inject(bin_dir, tmp_path, pod(str(db), s3["endpoint"]))
    assert code == 0, err
    good = write_config(bin_dir, patched, tmp_path / "good.yml")
    for key, value, where in REFUSED_BY_LITESTREAM:
        code, _, err = inject(bin_dir, tmp_path, pod(str(db), s3["endpoint"], **{key: value}))
        assert code == 1 and f"{PREFIX}/{key}" in err, (key, value, code, err)
        # The same value written where the hook would put it: the real Litestream refuses to start.
        bad = json.loads(json.dumps(good))
        node = bad
        for step in where[:-1]:
            node = node.setdefault(step, {}) if isinstance(step, str) else node[step]
        node[where[-1]] = value
        config_file = tmp_path / "bad.yml"
        config_file.write_text(json.dumps(bad))
        code, log = run_litestream(tools_bin, config_file, tmp_path, seconds=20)
        assert code not in (None, 0), f"litestream started with {key}={value}: {log}"


@pytest.mark.parametrize("key,value", [
    # Litestream takes these without a word, but they are no backup: a validation interval of
    # zero or below never validates, sub-minute snapshots re-upload the database constantly,
    # a retention under an hour, a sync interval over a day.
    ("validation-interval", "0s"), ("validation-interval", "-1s"), ("snapshot-interval", "30s"),
    ("retention", "10m"), ("sync-interval", "25h"), ("retention", "87601h")])
def test_values_that_are_no_backup_are_denied_too(s3, bin_dir, tmp_path, key, value):  # noqa: F811
    code, _, err = inject(bin_dir, tmp_path, pod("/data/app.db", s3["endpoint"], **{key: value}))
    assert code == 1 and f"{PREFIX}/{key}" in err and "must be a duration" in err, (code, err)
