#!/usr/bin/env bash
# The README's test command: install the oracles the tests run (when missing), then run
# every test. On a new Debian machine this is the only step:
#
#   bash tests/run.sh            # extra arguments go to `cargo test`
#
# As root, missing Debian packages are installed with apt-get. As another user, the script
# prints the one `apt-get install` line to run and stops. The QEMU boot parts (kernel,
# firmware, busybox, GRUB, systemd-boot, QEMU itself) are not installed: tests/boot/harness.py
# fetches them with `apt-get download` into target/boot-cache.
set -euo pipefail
cd "$(dirname "$0")/.."

# command → Debian package. Every tool a test runs as an oracle or needs to build its inputs.
tools=(
  sgdisk:gdisk sfdisk:fdisk blkid:util-linux swaplabel:util-linux
  fsck.fat:dosfstools mcopy:mtools mdir:mtools
  e2fsck:e2fsprogs debugfs:e2fsprogs mke2fs:e2fsprogs
  btrfs:btrfs-progs mkfs.btrfs:btrfs-progs growpart:cloud-guest-utils
  nix-store:nix-bin nix-build:nix-bin
  python3:python3 zstd:zstd gzip:gzip
  qemu-img:qemu-utils bmaptool:bmap-tools
  kill:procps mount:mount umount:mount
)
missing=()
for t in "${tools[@]}"; do
  cmd=${t%%:*} pkg=${t#*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ] && ! [ -x "/sbin/$cmd" ]; then
    case " ${missing[*]-} " in *" $pkg "*) ;; *) missing+=("$pkg") ;; esac
  fi
done
# apt-get download (the boot harness) and apt's https mirrors need the CA bundle; the bench
# (.ci/run) measures peak memory with GNU time.
[ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
[ -x /usr/bin/time ] || missing+=(time)
# The stub pkgs of the Nix tests (tests/nix) run /usr/bin/python3 inside Nix's build chroot,
# which sees /usr but not a python3 elsewhere on PATH.
[ -x /usr/bin/python3 ] || missing+=(python3)

# btrfs-progs >= 6.14 (bookworm-backports): the version the docs were measured with and the
# benchmark's `mkfs.btrfs --compress`; the tests themselves also pass with bookworm's 6.2.
want_backports=0
if [ -f ../shared/tools/apt-backports.sh ] && command -v dpkg-query >/dev/null 2>&1; then
  v=$(dpkg-query -W -f='${Version}' btrfs-progs 2>/dev/null || true)
  if [ -z "$v" ] || dpkg --compare-versions "$v" lt 6.14; then want_backports=1; fi
fi

if [ ${#missing[@]} -gt 0 ] || [ $want_backports = 1 ]; then
  if [ "$(id -u)" != 0 ]; then
    if [ ${#missing[@]} -gt 0 ]; then
      echo "tests/run.sh: missing test tools; run as root:" >&2
      echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
      exit 1
    fi
    echo "tests/run.sh: btrfs-progs is older than 6.14 (bookworm-backports); the tests still run" >&2
  else
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if [ ${#missing[@]} -gt 0 ]; then
      echo "tests/run.sh: installing ${missing[*]}" >&2
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if [ $want_backports = 1 ]; then
      sh ../shared/tools/apt-backports.sh
      apt-get install -y -qq --no-install-recommends -t bookworm-backports btrfs-progs >/dev/null
    fi
  fi
fi

# The NixOS oracle tests must run here, not skip: nix-store is installed above.
export MKDISK_REQUIRE_NIX=1
exec cargo test --release --workspace "$@"
