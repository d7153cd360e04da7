#!/usr/bin/env bash
# Makes, from Debian 13 packages, local stand-ins of the base images the Containerfile names
# (the real ones cannot be pulled on machines without a registry), under their exact names:
#   docker.io/library/rust:1.95-trixie        Debian trixie + gcc/g++/make/binutils + this machine's Rust 1.95 toolchain
#   docker.io/library/python:3.13-slim-trixie Debian trixie + python3 + pip (`python` on PATH)
#   gcr.io/distroless/static-debian13:nonroot CA bundle, tzdata, /etc/services, passwd/group with nonroot 65532, /tmp
#   gcr.io/distroless/cc-debian13:nonroot     static + the files of libc6, libgcc-s1, libstdc++6, libssl3t64 (distroless's cc list)
# What the stand-ins do not reproduce: distroless's exact file set (its build is Bazel rules over
# the same Debian packages), the official rust image's rustup proxies, and image digests.
# The rootfs is cached in ${LIFEBOAT_CACHE:-$HOME/.cache/lifeboat}/images keyed on this script.
# Needs root, podman and debootstrap (installed with apt-get when missing).
set -euo pipefail
cache="${LIFEBOAT_CACHE:-$HOME/.cache/lifeboat}/images"
include=ca-certificates,tzdata,netbase,gcc,g++,make,binutils,libc6-dev,pkg-config,python3,python3-pip,python-is-python3,libssl3t64,libstdc++6,libgcc-s1
key=$(echo "trixie minbase $include" | sha256sum | cut -c1-16)
rootfs="$cache/trixie-$key"
arch=$(dpkg --print-architecture)
toolchain="1.95.0-$(uname -m)-unknown-linux-gnu"

if [[ $(id -u) != 0 ]]; then
  echo "bases.sh: needs root (debootstrap, podman import); run it as root" >&2
  exit 1
fi
missing=()
for cmd in podman debootstrap; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
if ((${#missing[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah debootstrap uidmap >/dev/null
fi

# The machine's own Debian mirror (from its apt sources), so nothing here names a host.
mirror=${DEBIAN_MIRROR:-$(grep -h -m1 -oE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | head -n1)}
[[ -n "$mirror" ]] || mirror=$(grep -h -m1 -oE '^deb +\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -n1)
[[ -n "$mirror" ]] || { echo "bases.sh: no Debian mirror in the apt sources; set DEBIAN_MIRROR" >&2; exit 1; }

if [[ ! -f "$rootfs/.done" ]]; then
  rm -rf "$rootfs"
  mkdir -p "$cache"
  echo "bases.sh: debootstrap trixie ($arch) into $rootfs" >&2
  debootstrap --variant=minbase --arch="$arch" --include="$include" trixie "$rootfs" "$mirror" >&2
  echo "deb $mirror trixie main" > "$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"*
  touch "$rootfs/.done"
fi

have() { podman image exists "$1"; }
import_dir() { # dir, name, --change...
  local dir=$1 name=$2; shift 2
  tar --numeric-owner -C "$dir" --exclude=./.done -c . | podman import "$@" - "$name" >/dev/null
  echo "bases.sh: made $name" >&2
}

if ! have docker.io/library/python:3.13-slim-trixie; then
  import_dir "$rootfs" docker.io/library/python:3.13-slim-trixie \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["python3"]'
fi

if ! have docker.io/library/rust:1.95-trixie; then
  src="${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$toolchain"
  [[ -x "$src/bin/cargo" ]] || { echo "bases.sh: Rust toolchain $toolchain not found at $src" >&2; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # One image layer: the trixie rootfs plus the toolchain where the official image keeps it.
  cp -a "$rootfs" "$work/root"
  mkdir -p "$work/root/usr/local/rust" "$work/root/usr/local/cargo/bin"
  cp -a "$src/." "$work/root/usr/local/rust/"
  rm -rf "$work/root/usr/local/rust/share/doc"
  for b in cargo rustc rustdoc; do ln -s "/usr/local/rust/bin/$b" "$work/root/usr/local/cargo/bin/$b"; done
  import_dir "$work/root" docker.io/library/rust:1.95-trixie \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  rm -rf "$work/root"
fi

# The build stand-ins trust what this machine trusts: a build host behind a TLS-inspecting proxy
# adds its CAs to its build images the same way (cargo and apt in the build stage go through it).
# A layer on top, labelled with the CAs' hash, so a change of CAs rebuilds only that layer.
extra=(/usr/local/share/ca-certificates/*.crt)
if [[ -e ${extra[0]} ]]; then
  cas=$(cat "${extra[@]}" | sha256sum | cut -c1-16)
  for name in docker.io/library/python:3.13-slim-trixie docker.io/library/rust:1.95-trixie; do
    [[ $(podman image inspect --format '{{ index .Labels "lifeboat.local-ca" }}' "$name") == "$cas" ]] && continue
    ctx=$(mktemp -d)
    cp "${extra[@]}" "$ctx/"
    printf 'FROM %s\nCOPY *.crt /usr/local/share/ca-certificates/\nRUN /usr/sbin/update-ca-certificates\nLABEL lifeboat.local-ca=%s\n' \
      "$name" "$cas" > "$ctx/Containerfile"
    podman build --pull=never --isolation=chroot -q -t "$name" "$ctx" >/dev/null
    rm -rf "$ctx"
    echo "bases.sh: $name trusts this machine's extra CAs" >&2
  done
fi

distroless() { # name, packages...
  local name=$1; shift
  have "$name" && return 0
  local work
  work=$(mktemp -d)
  local d="$work/root"
  mkdir -p "$d/etc/ssl/certs" "$d/usr/share" "$d/tmp" "$d/home/nonroot" "$d/root"
  chmod 1777 "$d/tmp"
  cp "$rootfs/etc/ssl/certs/ca-certificates.crt" "$d/etc/ssl/certs/"
  cp -a "$rootfs/usr/share/zoneinfo" "$d/usr/share/"
  cp "$rootfs/etc/services" "$rootfs/etc/protocols" "$rootfs/etc/os-release" "$d/etc/" 2>/dev/null || true
  cat > "$d/etc/passwd" <<'P'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
P
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' > "$d/etc/group"
  printf 'hosts: files dns\n' > "$d/etc/nsswitch.conf"
  chown 65532:65532 "$d/home/nonroot"
  local pkg f
  for pkg in "$@"; do
    while read -r f; do
      [[ -f "$rootfs$f" || -L "$rootfs$f" ]] || continue
      case "$f" in /usr/share/doc/*|/usr/share/man/*|/usr/share/lintian/*|/usr/share/locale/*) continue ;; esac
      mkdir -p "$d$(dirname "$f")"
      cp -a "$rootfs$f" "$d$f"
    done < "$rootfs/var/lib/dpkg/info/$pkg.list"
  done
  # usrmerge: /lib and /lib64 are links into /usr, as in Debian 13
  if (($#)); then
    for l in lib lib64; do [[ -e "$d/$l" ]] || ln -s "usr/$l" "$d/$l"; done
  fi
  import_dir "$d" "$name" --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin'
  rm -rf "$work"
}
distroless gcr.io/distroless/static-debian13:nonroot
distroless gcr.io/distroless/cc-debian13:nonroot "libc6:$arch" "libgcc-s1:$arch" "libstdc++6:$arch" "libssl3t64:$arch"
echo "bases.sh: base images ready" >&2
