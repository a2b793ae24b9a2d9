#!/usr/bin/env bash
# Build the local test image from Debian's static busybox; nothing can be pulled here.
# Idempotent: does nothing when the image exists. Usage: build_image.sh [tag]
set -euo pipefail
TAG="${1:-cnet-test/busybox:latest}"

if docker image inspect "$TAG" >/dev/null 2>&1; then
  exit 0
fi
BUSYBOX="$(command -v busybox || true)"
if [ -z "$BUSYBOX" ] || ! "$BUSYBOX" --list >/dev/null 2>&1; then
  echo "busybox not found; apt-get install -y busybox-static" >&2
  exit 1
fi
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "$BUSYBOX is dynamically linked; the image needs busybox-static" >&2
  exit 1
fi

ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/bin" "$ROOT/tmp" "$ROOT/etc" "$ROOT/root" "$ROOT/work"
chmod 1777 "$ROOT/tmp"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$ROOT/etc/passwd"
echo 'root:x:0:' > "$ROOT/etc/group"
tar -C "$ROOT" -c . | docker import \
  --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' --change 'WORKDIR /' \
  - "$TAG" >/dev/null
echo "built $TAG"
