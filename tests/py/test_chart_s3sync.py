"""The chart's s3sync CronJob: its shape and environment, Secrets, platform credentials, its
deadlines and options (rendered by a real Helm engine, see chart_render.py)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

import chart_crd_schemas
import config_schema

ROOT = Path(__file__).resolve().parents[2]

from chart_render import *  # noqa: E402,F401,F403 - fixtures, scenarios and render helpers


# ---------------------------------------------------------------------------------------------
# s3sync

S3SYNC_ENV = {"SOURCE_S3_ENDPOINT", "SOURCE_ACCESS_KEY", "SOURCE_SECRET_KEY", "SOURCE_BUCKET",
              "DEST_S3_ENDPOINT", "DEST_ACCESS_KEY", "DEST_SECRET_KEY", "DEST_BUCKET",
              "DEST_PREFIX", "DRY_RUN", "MAX_DELETE", "MAX_DELETE_PERCENT", "RETRIES", "LOG_LEVEL"}
S3SYNC_SECRET_KEYS = {"SOURCE_ACCESS_KEY", "SOURCE_SECRET_KEY", "DEST_ACCESS_KEY", "DEST_SECRET_KEY"}


def test_s3sync_cronjob_shape_and_environment(helm):
    values = SCENARIOS["everything"]
    objects = render(helm, values)
    cron = one(objects, "CronJob", "s3sync")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["schedule"] == "17 * * * *"
    assert spec["successfulJobsHistoryLimit"] == 3 and spec["failedJobsHistoryLimit"] == 3
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] == 3600 and job["backoffLimit"] == 1
    # Exit 2 (configuration) and 7 (refused before changing anything) are not retried.
    (fail, ignore) = job["podFailurePolicy"]["rules"]
    assert fail == {"action": "FailJob",
                    "onExitCodes": {"containerName": "s3sync", "operator": "In", "values": [2, 7]}}
    assert ignore["action"] == "Ignore" and ignore["onPodConditions"][0]["type"] == "DisruptionTarget"
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    env = env_of(container)
    # exactly the documented names, plus the non-empty extraEnv entries; the empty one is left out
    assert set(env) == S3SYNC_ENV | {"SOURCE_PREFIX", "BANDWIDTH_LIMIT", "MAX_DURATION", "COMPARE", "HTTPS_PROXY"}
    assert env["SOURCE_S3_ENDPOINT"]["value"] == S3_ON["source"]["endpoint"]
    assert env["DEST_BUCKET"]["value"] == "prod-data-copy"
    assert env["DRY_RUN"]["value"] == "false" and env["MAX_DELETE"]["value"] == "1000"
    assert env["RETRIES"]["value"] == "3" and env["LOG_LEVEL"]["value"] == "info"
    secret = one(objects, "Secret", "s3sync")
    assert set(secret["stringData"]) == S3SYNC_SECRET_KEYS
    assert secret["stringData"]["DEST_SECRET_KEY"] == "dest-secret"
    for name in S3SYNC_SECRET_KEYS:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": name}
    # secrets are never inline in the workload
    for secret_value in ("source-secret", "dest-secret", "AKIASOURCE", "AKIADEST"):
        assert secret_value not in yaml.safe_dump(strip(cron))


def test_s3sync_existing_secret_and_zero_values(helm):
    objects = render(helm, SCENARIOS["s3sync-existing-secret"])
    assert not by_kind(objects, "Secret")
    cron = one(objects, "CronJob", "s3sync")
    assert cron["spec"]["timeZone"] == "Europe/Berlin"
    env = env_of(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
    assert set(env) == S3SYNC_ENV | {"MAX_DURATION"}
    for name in S3SYNC_SECRET_KEYS:
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "s3-keys", "key": name}
    # false and 0 are real values, rendered as such (not dropped, not "null")
    assert env["DRY_RUN"]["value"] == "true"
    assert env["MAX_DELETE"]["value"] == "0"


def test_s3sync_platform_credentials_for_irsa_and_pod_identity(helm):
    """credentials: platform leaves a side's keys out (s3sync and rclone then use the Pod's own
    credentials); the ServiceAccount carries the IRSA role annotation; the AWS_* variables of
    the credentials chain are accepted in extraEnv."""
    role = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/backup"}
    values = {"s3sync": {**S3_ON, "serviceAccount": {"annotations": role},
                         "source": {**S3_ON["source"], "credentials": "platform"},
                         "extraEnv": {"AWS_REGION": "eu-west-1", "AWS_ROLE_SESSION_NAME": "lifeboat"}}}
    objects = render(helm, values)
    assert one(objects, "ServiceAccount", "s3sync")["metadata"]["annotations"] == role
    env = env_of(one(objects, "CronJob", "s3sync")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
    assert "SOURCE_ACCESS_KEY" not in env and "SOURCE_SECRET_KEY" not in env
    assert env["DEST_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "DEST_SECRET_KEY"
    assert env["AWS_REGION"]["value"] == "eu-west-1"
    assert set(one(objects, "Secret", "s3sync")["stringData"]) == {"DEST_ACCESS_KEY", "DEST_SECRET_KEY"}
    # Both sides from the platform: no Secret at all, no keys needed in the values.
    both = {"s3sync": {"enabled": True,
                       "source": {"endpoint": "https://s3.eu-west-1.amazonaws.com", "bucket": "a", "credentials": "platform"},
                       "destination": {"endpoint": "https://s3.eu-west-1.amazonaws.com", "bucket": "b", "prefix": "/",
                                       "credentials": "platform"}}}
    objects = render(helm, both)
    assert not by_kind(objects, "Secret")
    env = env_of(one(objects, "CronJob", "s3sync")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
    assert not {n for n in env if n.endswith(("_ACCESS_KEY", "_SECRET_KEY"))}
    with pytest.raises(helm.HelmError, match="credentials"):
        render(helm, {"s3sync": {**S3_ON, "source": {**S3_ON["source"], "credentials": "irsa"}}})
    # A side with keys still needs them.
    with pytest.raises(helm.HelmError, match="accessKey"):
        render(helm, {"s3sync": {**both["s3sync"], "source": {**both["s3sync"]["source"], "credentials": "keys"}}})


@pytest.mark.parametrize("deadline, grace", [(3600, 60), (600, 30), (120, 30)])
def test_s3sync_ends_an_overlong_run_itself_before_the_job_deadline(helm, deadline, grace):
    """MAX_DURATION (then STOP_GRACE, 20 s by default, to stop rclone) ends within
    activeDeadlineSeconds minus the Pod's grace: the run always logs its summary and exits 10
    instead of being killed by the Job controller without one."""
    values = {"s3sync": {**S3_ON, "activeDeadlineSeconds": deadline, "terminationGracePeriodSeconds": grace}}
    cron = one(render(helm, values), "CronJob", "s3sync")
    env = env_of(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
    max_duration = int(env["MAX_DURATION"]["value"].removesuffix("s"))
    assert max_duration + 20 + grace <= deadline
    assert max_duration >= 60
    # too short a deadline to leave room is refused, naming both values
    with pytest.raises(helm.HelmRenderError, match="activeDeadlineSeconds.*terminationGracePeriodSeconds"):
        render(helm, {"s3sync": {**S3_ON, "activeDeadlineSeconds": grace + 60, "terminationGracePeriodSeconds": grace}})
    # a MAX_DURATION of the user's own is kept
    values["s3sync"]["extraEnv"] = {"MAX_DURATION": "5m"}
    cron = one(render(helm, values), "CronJob", "s3sync")
    env = env_of(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
    assert env["MAX_DURATION"]["value"] == "5m"


def test_s3sync_unlimited_deletions_and_a_ca_bundle_volume(helm):
    ca = {"name": "ca", "configMap": {"name": "s3-ca"}}
    mount = {"name": "ca", "mountPath": "/etc/s3sync-ca", "readOnly": True}
    values = {"s3sync": {**S3_ON, "maxDelete": "unlimited", "maxDeletePercent": 100,
                         "extraVolumes": [ca], "extraVolumeMounts": [mount],
                         "extraEnv": {"SSL_CERT_FILE": "/etc/s3sync-ca/ca.crt"}}}
    objects = render(helm, values)
    pod = one(objects, "CronJob", "s3sync")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    assert env["MAX_DELETE"]["value"] == "unlimited" and env["MAX_DELETE_PERCENT"]["value"] == "100"
    assert env["SSL_CERT_FILE"]["value"] == "/etc/s3sync-ca/ca.crt"
    assert ca in pod["volumes"] and mount in container["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
