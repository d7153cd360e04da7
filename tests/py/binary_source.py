"""What the three binaries read and call, found in their Rust source (not written down by hand).

The chart tests compare the rendered chart with these facts, so a variable renamed in a binary,
a new required variable, or a new Kubernetes API call in etcdsnap makes them fail until the
chart follows. Only non-test code counts: everything from `#[cfg(test)] mod` on is cut off.

* `env_reads(component)`: every environment variable the binary reads, with how it is parsed
  (`required`, `secret`, `bool`, `duration`, `number_in` with its range, ...), from calls on
  `lifeboat::env::Env`, `std::env::var[_os]`, and the helpers the binaries wrap them in. s3sync's
  per-bucket names (`var("BUCKET")` with `Role::var_prefix`) are expanded to `SOURCE_`/`DEST_`.
* `kube_calls()`: every (API group, resource, verb) etcdsnap's driver sends to the Kubernetes
  API, from the `Kube` method calls and the `core_path`/`batch_path` they are given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The files whose code reads each binary's configuration. Shared library code (src/log.rs reads
# LOG_LEVEL for every binary) is listed too.
CONFIG_FILES = {
    "s3sync": ["s3sync/config.rs", "s3sync/rclone.rs", "src/log.rs", "src/s3/credentials.rs"],
    "hook": ["hook/main.rs", "src/log.rs"],
    "etcdsnap": ["etcdsnap/config.rs", "etcdsnap/kube.rs", "src/log.rs"],
}

NAME = r'"([A-Z][A-Z0-9_]*)"'


def code(path: str) -> str:
    """The file without its test module and without `//` comments."""
    text = (ROOT / path).read_text()
    cut = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod \w+", text, re.M)
    if cut:
        text = text[:cut.start()]
    return re.sub(r"(?m)^\s*//.*$", "", text)


@dataclass
class Var:
    name: str
    kinds: set = field(default_factory=set)  # e.g. {"required"}, {"bool"}, {"number_in"}
    bounds: tuple | None = None  # (min, max) for number_in


def _prefixes(text: str) -> list[str]:
    """s3sync's bucket variable prefixes, from `fn var_prefix`."""
    body = re.search(r"fn var_prefix\(self\) -> &'static str \{(.*?)\n    \}", text, re.S)
    return re.findall(r'=> "([A-Z_]+)"', body.group(1)) if body else []


def env_reads(component: str) -> dict[str, Var]:
    found: dict[str, Var] = {}

    def add(name, kind, bounds=None):
        var = found.setdefault(name, Var(name))
        var.kinds.add(kind)
        if bounds:
            var.bounds = bounds

    for path in CONFIG_FILES[component]:
        text = code(path)
        # env.required("X"), env.bool("X", ..), env.number_in("X", default, min, max), ...
        for method, name, rest in re.findall(
                r"env\s*\.(\w+)\(\s*" + NAME + r"\s*(?:,([^;\n]*))?", text):
            bounds = None
            if method == "number_in":  # env.number_in("X", default, min, max)
                parts = [p.strip() for p in re.sub(r"\).*$", "", rest).split(",")]
                bounds = (_const_int(parts[1]), _const_int(parts[2]))
            add(name, method, bounds)
        # helpers taking `&mut env, "X"`: positive_duration (a duration), checked (a validated string)
        for helper, name in re.findall(r"(\w+)\(\s*&mut env,\s*" + NAME, text):
            add(name, {"positive_duration": "duration"}.get(helper, "parse_with"))
        for name in re.findall(r"std::env::var(?:_os)?\(\s*" + NAME, text):
            add(name, "optional")
        # env.problem("X", "is missing ...") makes X required by hand (hook's HOOK_IMAGE)
        for name in re.findall(r"env\.problem\(\s*" + NAME + r',\s*"is missing', text):
            add(name, "required")
        # rclone.rs: the system variables passed through to rclone
        passthrough = re.search(r"const PASS_THROUGH: \[&str; \d+\] = \[(.*?)\];", text, re.S)
        if passthrough:
            for name in re.findall(r'"([A-Za-z_]+)"', passthrough.group(1)):
                add(name, "optional")
        # src/s3/credentials.rs: the platform's credential variables (read by s3sync's config)
        creds = re.search(r"pub const VARS: \[&str; \d+\] = \[(.*?)\];", text, re.S)
        if creds:
            for name in re.findall(r'"([A-Za-z_]+)"', creds.group(1)):
                add(name, "optional")
        # s3sync: env.required(&var("S3_ENDPOINT")) and friends, once per bucket prefix
        prefixes = _prefixes(text)
        for method, suffix, rest in re.findall(
                r"env\s*\.(\w+)\(\s*&var\(" + NAME + r"\)\s*(?:,([^;\n]*))?", text):
            assert prefixes, f"{path}: var(\"{suffix}\") but no var_prefix found"
            for prefix in prefixes:
                add(prefix + suffix, method)
    return found


def _const_int(expr: str) -> int:
    """`6 * 1024 * 1024`, `10_000`, `256usize`."""
    expr = re.sub(r"(?<=\d)(u8|u16|u32|u64|usize|i32|i64)\b", "", expr.replace("_", ""))
    assert re.fullmatch(r"[\d\s*+]+", expr), f"cannot read the bound {expr!r}"
    return int(eval(expr))  # digits, spaces, * and + only (checked above)


def required(component: str) -> set[str]:
    """Variables without which the binary refuses to start (`required`, `secret`, or an
    explicit "is missing" problem)."""
    return {v.name for v in env_reads(component).values() if v.kinds & {"required", "secret"}}


# ---------------------------------------------------------------------------------------------
# etcdsnap's Kubernetes API calls

# Kube's request methods (etcdsnap/kube.rs) and the RBAC verb each one needs.
KUBE_VERBS = {"get": "get", "get_text": "get", "list": "list", "create": "create",
              "replace": "update", "delete": "delete"}
# Kube methods that send no request for a resource (ready: GET /readyz, a non-resource URL every
# authenticated user may read; server: the URL).
KUBE_NON_RESOURCE = {"ready", "server"}
# The driver's modules. restore.rs is the `etcdsnap restore` command an operator runs with their
# own kubeconfig; it is not the driver and not bound to the driver's service account.
# Every other module is scanned, so a new module calling the API is not missed.
NOT_DRIVER = {"etcdsnap/kube.rs", "etcdsnap/restore.rs"}


def driver_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "etcdsnap").glob("*.rs")
                  if str(p.relative_to(ROOT)) not in NOT_DRIVER)


def kube_methods() -> set[str]:
    text = code("etcdsnap/kube.rs")
    impl = text[text.index("impl Kube {"):]
    return set(re.findall(r"\n    pub fn (\w+)", impl)) - {"from_environment", "in_cluster", "from_kubeconfig",
                                                            "from_kubeconfig_value"}


def _balanced(text: str, start: int) -> str:
    """The text inside the parentheses opening at text[start]."""
    assert text[start] == "("
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1:i]
    raise AssertionError("unbalanced parentheses")


def _first_arg(args: str) -> str:
    depth = 0
    for i, c in enumerate(args):
        depth += {"(": 1, "[": 1, "<": 0, ")": -1, "]": -1}.get(c, 0)
        if c == "," and depth == 0:
            return args[:i].strip()
    return args.strip()


def _resource(expr: str, variables: dict, self_path: tuple | None):
    """(group, resource) of a path expression, or None when it is not one."""
    m = re.search(r"(core_path|batch_path)\([^,]+,\s*\"([a-z]+)\"", expr)
    if m:
        group = "" if m.group(1) == "core_path" else "batch"
        resource = m.group(2)
        sub = re.search(r'format!\("\{\}/([a-z]+)"', expr)
        return group, resource + ("/" + sub.group(1) if sub else "")
    if re.search(r"\bself\.path\(", expr) and self_path:
        return self_path
    name = expr.lstrip("&").strip()
    return variables.get(name)


def kube_calls() -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every Kubernetes API request the driver makes."""
    methods = kube_methods()
    unknown = methods - set(KUBE_VERBS) - KUBE_NON_RESOURCE
    assert not unknown, f"Kube has methods this scan does not know the RBAC verb of: {unknown}"
    calls = set()
    for path in driver_files():
        text = re.sub(r"\s+", " ", code(path))
        text = re.sub(r" \.", ".", text)
        self_path = None
        fn_path = re.search(r"fn path\(&self[^{]*\{(.*?)\}", text)
        if fn_path:
            self_path = _resource(fn_path.group(1), {}, None)
        variables = {}
        for name, expr in re.findall(r'let (\w+) = ((?:format!\("\{\}/[a-z]+", )?(?:core_path|batch_path|self\.path)\([^;]*);', text):
            res = _resource(expr, {}, self_path)
            if res:
                variables[name] = res
        for m in re.finditer(r"\bkube\.(\w+)(?:::<[^>]*>)?\(", text):
            method = m.group(1)
            if method in KUBE_NON_RESOURCE:
                continue
            assert method in KUBE_VERBS, f"{path}: kube.{method}(...) is not a Kube request method"
            arg = _first_arg(_balanced(text, m.end() - 1))
            res = _resource(arg, variables, self_path)
            assert res, f"{path}: cannot tell which resource kube.{method}({arg}) touches"
            calls.add((res[0], res[1], KUBE_VERBS[method]))
    return calls
