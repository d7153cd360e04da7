#!/usr/bin/env bash
# The image check (not part of `bash tests/run`: a cold run builds gRPC core inside the build
# stage and takes 15-25 min on two cores). Builds the three Containerfile targets with podman
# from local stand-ins of the base images (tests/images/bases.sh), then runs each image the way
# the chart does (UID 65532, read-only root, no capabilities, no privilege escalation) against
# real peers, and reports image sizes: tests/images/test_images.py.
# Needs root (podman, debootstrap; installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin=$(bash tests/tools.sh)
export PATH="$bin:$PATH"
bash tests/images/bases.sh
command -v runc >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null; }
tag=${IMAGE_TAG:-check}
for target in s3sync hook etcdsnap; do
  echo "images: building $target" >&2
  start=$(date +%s)
  podman build --pull=never --isolation=chroot -f Containerfile --target "$target" \
    -t "localhost/lifeboat/$target:$tag" . >&2
  echo "images: built $target in $(( $(date +%s) - start )) s" >&2
done
export NO_PROXY="127.0.0.1,localhost,::1${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost,::1"
LIFEBOAT_TOOLS="$bin" IMAGE_TAG="$tag" PYTHONPATH="$PWD/tests/py:$PWD/tests" "$bin/python" -m pytest -q -p no:cacheprovider tests/images/test_images.py
