"""Pieces of kube-apiserver behaviour the stand-in reuses: the resource table, `Status` bodies
exactly as the apiserver writes them, label and field selectors, name/label/quantity validation
(the apiserver's own checks on top of the OpenAPI schema), and merge patches."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

__all__ = [
    "Resource", "RESOURCES", "resource_by_path", "resource_for", "ApiError", "status_body",
    "not_found", "already_exists", "conflict", "invalid", "bad_request", "parse_label_selector",
    "match_labels", "parse_field_selector", "match_fields", "merge_patch", "validate_semantics",
]


@dataclass(frozen=True)
class Resource:
    group: str  # "" for core
    version: str
    plural: str
    kind: str
    namespaced: bool
    has_status: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """`configmaps` or `jobs.batch`: how the apiserver names the resource in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def details(self, name: str) -> dict:
        d = {"name": name}
        if self.group:
            d["group"] = self.group
        d["kind"] = self.plural
        return d


RESOURCES = [
    Resource("", "v1", "configmaps", "ConfigMap", True),
    Resource("", "v1", "secrets", "Secret", True),
    Resource("", "v1", "services", "Service", True, True),
    Resource("", "v1", "endpoints", "Endpoints", True),
    Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, True),
    Resource("", "v1", "pods", "Pod", True, True),
    Resource("", "v1", "events", "Event", True),
    Resource("", "v1", "namespaces", "Namespace", False, True),
    Resource("", "v1", "persistentvolumes", "PersistentVolume", False, True),
    Resource("batch", "v1", "jobs", "Job", True, True),
]


def resource_by_path(group: str, version: str, plural: str) -> Resource | None:
    for r in RESOURCES:
        if r.group == group and r.version == version and r.plural == plural:
            return r
    return None


def resource_for(kind_or_plural: str) -> Resource:
    """The resource named by a Kind (`ConfigMap`) or plural (`configmaps`), case-insensitive."""
    k = kind_or_plural.lower()
    for r in RESOURCES:
        if k in (r.plural, r.kind.lower(), r.qualified):
            return r
    raise KeyError(f"the stand-in does not serve {kind_or_plural!r}")


# ---- Status bodies --------------------------------------------------------------------------

REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    406: "NotAcceptable", 409: "Conflict", 410: "Expired", 413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
    503: "ServiceUnavailable", 504: "Timeout",
}


def status_body(code: int, message: str, reason: str | None = None, details: dict | None = None) -> dict:
    """A failure `Status` with the apiserver's field order."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason if reason is not None else REASONS.get(code, "")}
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


class ApiError(Exception):
    """An API failure carried up to the HTTP layer as a `Status` body."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: dict | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.code = code
        self.body = status_body(code, message, reason, details)
        self.headers = headers or {}


def not_found(res: Resource, name: str) -> ApiError:
    return ApiError(404, f'{res.qualified} "{name}" not found', "NotFound", res.details(name))


def namespace_not_found(ns: str) -> ApiError:
    return ApiError(404, f'namespaces "{ns}" not found', "NotFound", {"name": ns, "kind": "namespaces"})


def already_exists(res: Resource, name: str) -> ApiError:
    return ApiError(409, f'{res.qualified} "{name}" already exists', "AlreadyExists", res.details(name))


def conflict(res: Resource, name: str) -> ApiError:
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        "Conflict", res.details(name))


def invalid(res: Resource, name: str, causes: list[dict]) -> ApiError:
    """422 Invalid, like `ConfigMap "x" is invalid: [field: Invalid value: ...]`."""
    texts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    details = {"name": name}
    if res.group:
        details["group"] = res.group
    details["kind"] = res.kind
    details["causes"] = causes
    return ApiError(422, f'{res.kind} "{name}" is invalid: {joined}', "Invalid", details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "BadRequest")


# ---- label and field selectors -------------------------------------------------------------

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and not prefix:
        return "prefix part must be non-empty"
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc') and must be no more than 63 characters")
    return None


def label_value_problem(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _LABEL_VALUE.match(value):
        return ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character")
    return None


def _split_terms(selector: str) -> list[str]:
    terms, depth, cur = [], 0, []
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    terms.append("".join(cur))
    return [t.strip() for t in terms]


_SET_TERM = re.compile(r"^(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<vals>[^()]*)\)$")
_EQ_TERM = re.compile(r"^(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<val>[^\s!=(),]*)$")
_EXISTS_TERM = re.compile(r"^(?P<neg>!?)\s*(?P<key>[^\s!=(),]+)$")


def parse_label_selector(selector: str) -> list[tuple]:
    """Parse a labelSelector into requirements (key, op, values); 400 BadRequest when malformed."""
    reqs = []
    if not selector or not selector.strip():
        return reqs
    for term in _split_terms(selector):
        m = _SET_TERM.match(term)
        if m:
            vals = [v.strip() for v in m["vals"].split(",")]
            if m["op"] == "in" and vals == [""]:
                raise bad_request(f"unable to parse requirement: values: Invalid value: \"{term}\": for 'in', "
                                  "'notin' operators, values set can't be empty")
            for v in vals:
                if label_value_problem(v):
                    raise bad_request(f'unable to parse requirement: values[0][{m["key"]}]: Invalid value: "{v}": '
                                      f"{label_value_problem(v)}")
            reqs.append((m["key"], m["op"], set(vals)))
        else:
            m = _EQ_TERM.match(term)
            if m:
                op = "!=" if m["op"] == "!=" else "="
                if label_value_problem(m["val"]):
                    raise bad_request(f'unable to parse requirement: values[0][{m["key"]}]: Invalid value: '
                                      f'"{m["val"]}": {label_value_problem(m["val"])}')
                reqs.append((m["key"], op, {m["val"]}))
            else:
                m = _EXISTS_TERM.match(term)
                if not m:
                    raise bad_request(f"unable to parse requirement: found '{term}', expected: a selector term")
                reqs.append((m["key"], "!exists" if m["neg"] else "exists", set()))
        key = reqs[-1][0]
        problem = label_key_problem(key)
        if problem:
            raise bad_request(f'unable to parse requirement: key: Invalid value: "{key}": {problem}')
    return reqs


def match_labels(reqs: list[tuple], labels: dict | None) -> bool:
    labels = labels or {}
    for key, op, vals in reqs:
        present = key in labels
        if op == "exists" and not present:
            return False
        if op == "!exists" and present:
            return False
        if op in ("=", "in") and (not present or labels[key] not in vals):
            return False
        if op in ("!=", "notin") and present and labels[key] in vals:
            return False
    return True


_FIELDS = {"metadata.name", "metadata.namespace"}
_EXTRA_FIELDS = {"pods": {"status.phase", "spec.nodeName"}, "events": {"involvedObject.name", "involvedObject.kind",
                                                                      "involvedObject.uid", "reason", "type"}}


def parse_field_selector(res: Resource, selector: str) -> list[tuple]:
    out = []
    if not selector:
        return out
    allowed = _FIELDS | _EXTRA_FIELDS.get(res.plural, set())
    for term in selector.split(","):
        m = re.match(r"^\s*([^!=\s]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not m:
            raise bad_request(f"invalid selector: '{selector}'; can't understand '{term}'")
        field, op, val = m.groups()
        if field not in allowed:
            raise bad_request(f'field label not supported: {field}')
        out.append((field, "!=" if op == "!=" else "=", val))
    return out


def _field_value(obj: dict, path: str):
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    return "" if cur is None else str(cur)


def match_fields(reqs: list[tuple], obj: dict) -> bool:
    for field, op, val in reqs:
        actual = _field_value(obj, field)
        if (op == "=") != (actual == val):
            return False
    return True


# ---- patches -----------------------------------------------------------------------------------

def merge_patch(target, patch):
    """RFC 7386 JSON merge patch (strategic merge patches are treated the same way)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


# ---- apiserver validation beyond the OpenAPI schema -----------------------------------------------

_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?\d+))?$")
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
MAX_CONFIGMAP_BYTES = 1024 * 1024  # the apiserver's limit on ConfigMap data + binaryData
MAX_SECRET_BYTES = 1024 * 1024
MAX_ANNOTATION_BYTES = 256 * 1024


def quantity_bytes(q) -> float:
    """A resource.Quantity as a number (bytes for storage)."""
    s = str(q)
    m = _QUANTITY.match(s)
    if not m:
        raise ValueError(s)
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "n": 1e-9, "u": 1e-6,
                "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
    num = m.group(1)
    rest = s[m.start(3):] if m.group(3) else ""
    sign = -1 if s.startswith("-") else 1
    if rest and rest[0] in "eE":
        return sign * float(num) * 10 ** int(rest[1:])
    return sign * float(num) * suffixes.get(rest, 1)


def _cause(field: str, message: str, reason: str = "FieldValueInvalid") -> dict:
    return {"reason": reason, "message": message, "field": field}


def _validate_meta(res: Resource, obj: dict, causes: list) -> None:
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    if not name:
        causes.append(_cause("metadata.name", "Required value: name or generateName is required", "FieldValueRequired"))
    else:
        limit = 63 if res.plural in ("namespaces", "services", "jobs") else 253
        rx = _DNS_LABEL if res.plural in ("namespaces", "services") else _DNS_SUBDOMAIN
        if len(name) > limit or not rx.match(name):
            causes.append(_cause("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 '
                                 f"{'label' if rx is _DNS_LABEL else 'subdomain'} must consist of lower case "
                                 f"alphanumeric characters, '-' or '.', and must be no more than {limit} characters"))
    for k, v in (meta.get("labels") or {}).items():
        p = label_key_problem(k)
        if p:
            causes.append(_cause("metadata.labels", f'Invalid value: "{k}": {p}'))
        p = label_value_problem(str(v))
        if p:
            causes.append(_cause("metadata.labels", f'Invalid value: "{v}": {p}'))
    ann = meta.get("annotations") or {}
    for k in ann:
        p = label_key_problem(k)
        if p:
            causes.append(_cause("metadata.annotations", f'Invalid value: "{k}": {p}'))
    total = sum(len(k) + len(str(v)) for k, v in ann.items())
    if total > MAX_ANNOTATION_BYTES:
        causes.append(_cause("metadata.annotations", f"Too long: must have at most {MAX_ANNOTATION_BYTES} bytes",
                             "FieldValueTooLong"))
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        for f in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(f):
                causes.append(_cause(f"metadata.ownerReferences[{i}].{f}", "Required value", "FieldValueRequired"))


def _validate_data_keys(field: str, data: dict, causes: list) -> int:
    size = 0
    for k, v in (data or {}).items():
        if len(k) > 253 or not _DATA_KEY.match(k):
            causes.append(_cause(f"{field}[{k}]", f"Invalid value: \"{k}\": a valid config key must consist of "
                                 "alphanumeric characters, '-', '_' or '.'"))
        size += len(v or "")
    return size


def _validate_pod_spec(prefix: str, spec: dict, causes: list, job: bool) -> None:
    containers = spec.get("containers") or []
    if not containers:
        causes.append(_cause(f"{prefix}.containers", "Required value", "FieldValueRequired"))
    names = set()
    vols = {v.get("name") for v in spec.get("volumes") or []}
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            field = f"{prefix}.{group}[{i}]"
            n = c.get("name") or ""
            if not n or len(n) > 63 or not _DNS_LABEL.match(n):
                causes.append(_cause(f"{field}.name", f'Invalid value: "{n}": a lowercase RFC 1123 label must '
                                     "consist of lower case alphanumeric characters or '-'"))
            elif n in names:
                causes.append(_cause(f"{field}.name", f'Duplicate value: "{n}"', "FieldValueDuplicate"))
            names.add(n)
            if not c.get("image"):
                causes.append(_cause(f"{field}.image", "Required value", "FieldValueRequired"))
            for j, m in enumerate(c.get("volumeMounts") or []):
                if m.get("name") not in vols:
                    causes.append(_cause(f"{field}.volumeMounts[{j}].name", f'Not found: "{m.get("name")}"',
                                         "FieldValueNotFound"))
                if not str(m.get("mountPath") or "").startswith("/"):
                    causes.append(_cause(f"{field}.volumeMounts[{j}].mountPath", "Required value: must be absolute",
                                         "FieldValueRequired"))
            for j, e in enumerate(c.get("env") or []):
                if not e.get("name"):
                    causes.append(_cause(f"{field}.env[{j}].name", "Required value", "FieldValueRequired"))
    if job:
        rp = spec.get("restartPolicy")
        if rp not in ("OnFailure", "Never"):
            causes.append(_cause(f"{prefix}.restartPolicy", 'Required value: valid values: "OnFailure", "Never"'
                                 if not rp else f'Unsupported value: "{rp}": supported values: "OnFailure", "Never"',
                                 "FieldValueRequired" if not rp else "FieldValueNotSupported"))


def validate_semantics(res: Resource, obj: dict, old: dict | None = None) -> list[dict]:
    """The apiserver's own validation (names, labels, sizes, required fields, immutability): causes."""
    causes: list[dict] = []
    _validate_meta(res, obj, causes)
    spec = obj.get("spec") or {}
    if res.plural == "configmaps":
        size = _validate_data_keys("data", obj.get("data"), causes) + _validate_data_keys(
            "binaryData", obj.get("binaryData"), causes)
        if size > MAX_CONFIGMAP_BYTES:
            causes.append(_cause("", f"Too long: must have at most {MAX_CONFIGMAP_BYTES} bytes", "FieldValueTooLong"))
    elif res.plural == "secrets":
        size = _validate_data_keys("data", obj.get("data"), causes)
        if size > MAX_SECRET_BYTES * 4 // 3 + 4:
            causes.append(_cause("data", f"Too long: must have at most {MAX_SECRET_BYTES} bytes", "FieldValueTooLong"))
    elif res.plural == "persistentvolumeclaims":
        if not spec.get("accessModes"):
            causes.append(_cause("spec.accessModes", "Required value: at least 1 access mode is required",
                                 "FieldValueRequired"))
        storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
        if storage is None:
            causes.append(_cause("spec.resources[storage]", "Required value", "FieldValueRequired"))
        else:
            try:
                if quantity_bytes(storage) <= 0:
                    causes.append(_cause("spec.resources.requests[storage]", "Invalid value: must be greater than zero"))
            except ValueError:
                causes.append(_cause("spec.resources.requests[storage]", f'Invalid value: "{storage}": quantities '
                                     "must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"))
        if old is not None:
            o, n = copy.deepcopy(old.get("spec") or {}), copy.deepcopy(spec)
            for s in (o, n):
                (s.get("resources") or {}).pop("requests", None)
                s.pop("volumeName", None)
                s.pop("volumeMode", None)  # defaulted by the apiserver
            if o != n:
                causes.append(_cause("spec", "Forbidden: spec is immutable after creation except "
                                     "resources.requests and volumeAttributesClassName for bound claims",
                                     "FieldValueForbidden"))
    elif res.plural == "jobs":
        tmpl = spec.get("template") or {}
        _validate_pod_spec("spec.template.spec", tmpl.get("spec") or {}, causes, job=True)
        for f in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
            v = spec.get(f)
            if v is not None and (v < 0 or (f == "activeDeadlineSeconds" and v == 0)):
                causes.append(_cause(f"spec.{f}", f"Invalid value: {v}: must be greater than"
                                     f"{' ' if f == 'activeDeadlineSeconds' else ' or equal to '}0"))
        if old is not None and (old.get("spec") or {}).get("template") != tmpl:
            causes.append(_cause("spec.template", "Invalid value: field is immutable"))
    elif res.plural == "pods":
        _validate_pod_spec("spec", spec, causes, job=False)
    return causes
