#!/usr/bin/env bash
# Fetch systemd-repart 254 (bookworm-backports) into DIR without installing it:
# `apt-get download` + `dpkg-deb -x` of systemd and libsystemd-shared. Prints the wrapper path.
# Needs bookworm-backports enabled (../shared/tools/apt-backports.sh) and the package lists.
set -euo pipefail
dir=$(realpath -m "${1:-target/bench/repart}")
ver=${REPART_VERSION:-254.26-1~bpo12+1}
mkdir -p "$dir/debs" "$dir/root"
if [ ! -x "$dir/systemd-repart" ]; then
  (cd "$dir/debs" && apt-get download -qq "systemd=$ver" "libsystemd-shared=$ver" 2>/dev/null)
  for d in "$dir"/debs/*.deb; do dpkg-deb -x "$d" "$dir/root"; done
  cat > "$dir/systemd-repart" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$dir/root/usr/lib/x86_64-linux-gnu/systemd" exec "$dir/root/bin/systemd-repart" "\$@"
WRAP
  chmod +x "$dir/systemd-repart"
fi
"$dir/systemd-repart" --version >/dev/null
echo "$dir/systemd-repart"
