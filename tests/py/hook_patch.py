"""Applies a hook JSON Patch with an independent RFC 6902 implementation (jsonpatch) and
validates the result against the real Kubernetes 1.33 Pod schema (kubernetes-validate,
strict: unknown fields are errors).

stdin: {"pod": {...}, "patch": "<base64 JSON Patch>"}
stdout: {"pod": {...patched...}} or {"error": "..."}; exit status 0 either way.
"""
import base64
import json
import sys

import jsonpatch
import kubernetes_validate


def main():
    request = json.load(sys.stdin)
    pod = request["pod"]
    try:
        ops = json.loads(base64.b64decode(request["patch"], validate=True))
        patched = jsonpatch.JsonPatch(ops).apply(pod)
    except Exception as e:  # the patch itself is broken
        json.dump({"error": "patch does not apply: %s" % e}, sys.stdout)
        return
    full = dict(patched)
    full.setdefault("apiVersion", "v1")
    full.setdefault("kind", "Pod")
    try:
        kubernetes_validate.validate(full, "1.33", strict=True)
    except kubernetes_validate.ValidationError as e:
        where = "/".join(str(p) for p in e.caused_by.path) if getattr(e, "caused_by", None) else "?"
        json.dump({"error": "invalid Pod at %s: %s" % (where, str(e).splitlines()[0])}, sys.stdout)
        return
    json.dump({"pod": patched}, sys.stdout)


if __name__ == "__main__":
    main()
