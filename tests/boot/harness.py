#!/usr/bin/env python3
"""Kernel read-back harness for mkdisk images: Debian parts, a busybox initramfs, QEMU.

Everything runs in user space (no root, no KVM, no loop devices). Parts come from Debian
packages fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a cache
(default: <repo>/target/boot-cache, or $MKDISK_BOOT_CACHE), reused across runs.

  harness.py fetch                      fetch + unpack; print the parts as JSON
  harness.py initramfs [OUT] [--with BIN ...]
                                        build the test initramfs (newc cpio, gzip)
  harness.py run --disk IMG [--disk IMG2] --console LOG --listing OUT
                 [--firmware direct|ovmf|bios] [--mount ID:DEV:FS:OPTS ...] [--timeout S]
                 [--with BIN ...] [--grow DEV:FS ...] [--writable]
                                        boot; direct = -kernel/-initrd (SeaBIOS),
                                        ovmf = UEFI firmware boots the disk's ESP,
                                        bios = SeaBIOS boots the disk (GRUB in MBR + EF02);
                                        --with: host binaries (and the libraries ldd lists)
                                        in the initramfs, --grow: the guest grows DEV's
                                        filesystem (mounted, rw) before listing (needs
                                        --with resize2fs / btrfs), --writable: the guest's
                                        writes reach the disk files (default: snapshot=on)
  harness.py grub-dir OUT --prefix P MODULES...
                                        GRUB i386-pc inputs (boot.img, a grub-mkimage core.img)
  harness.py alter IMG OUT MARKER...     sparse copy of IMG with one byte changed inside each
                                        MARKER (which must occur exactly once)
  harness.py extract IMG OFFSET LENGTH OUT
                                        sparse copy of a byte range of IMG (a partition) into OUT
  harness.py host-list DIR              the host-side listing format (for manual diffs)

  --arch aarch64 (fetch, initramfs, run; default x86_64): arm64 parts — Debian's arm64
  kernel, busybox-static, systemd-boot-efi and grub-efi-arm64-bin (with the host's
  grub-mkimage: `grub_arm64_efi_lib`), AAVMF (qemu-efi-aarch64), qemu-system-aarch64
  (qemu-system-arm) — fetched through a private apt state under the cache (the system's
  dpkg/apt configuration is not touched); `run --arch aarch64` boots `-M virt -cpu max`
  under TCG, --firmware direct (-kernel) or uefi (AAVMF → the disk's ESP); the console is the
  PL011 (ttyAMA0), the listing goes to a virtio console (hvc0).

Exit status 77 from any command: QEMU (or a part) cannot be had here — the caller decides
whether that is a skip. Other non-zero: a real failure.

Environment: MKDISK_BOOT_CACHE (cache dir), MKDISK_BOOT_QEMU (a qemu-system-x86_64 to use),
MKDISK_BOOT_QEMU_AARCH64 (a qemu-system-aarch64 to use), MKDISK_BOOT_ACCEL (tcg [default] |
kvm; aarch64 guests use it only on an aarch64 host), MKDISK_BOOT_NO_FETCH=1 (use the cache only).
"""
import argparse
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SKIP = 77

# Modules the guest needs, in load order (dependencies are added before each from `depends=`).
# crc32c_generic first: libcrc32c/btrfs only declare it as a softdep (boot.md §5.2).
MODULES = [
    "crc32c_generic",
    "virtio_pci",
    "virtio_blk",
    "ext4",
    "btrfs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "nls_iso8859_1",
]

# aarch64 guests: the same, and virtio_console for the listing port (hvc0; `-M virt` has a
# single PL011, the console).
MODULES_AARCH64 = MODULES + ["virtio_console"]


def log(msg):
    print(f"boot-harness: {msg}", file=sys.stderr, flush=True)


class Unavailable(Exception):
    """A part cannot be obtained here (no network, no apt, QEMU does not start)."""


def cache_dir():
    d = os.environ.get("MKDISK_BOOT_CACHE") or os.path.join(REPO, "target", "boot-cache")
    os.makedirs(d, exist_ok=True)
    return d


class Lock:
    def __init__(self, path):
        self.f = open(path, "w")

    def __enter__(self):
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *a):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def installed(pkg):
    r = run(["dpkg-query", "-W", "-f=${Status}", pkg])
    return r.returncode == 0 and "install ok installed" in r.stdout


_updated = [False]


def apt_update_once(why):
    """`apt-get update`, once per run and only as root: a new machine (or a container image
    whose /var/lib/apt/lists was cleaned) has no package lists, so neither `apt-cache depends`
    nor `apt-get download` finds anything. Returns whether it ran and succeeded."""
    if _updated[0] or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    _updated[0] = True
    log(f"{why}; running apt-get update")
    r = run(["apt-get", "update", "-q"])
    if r.returncode != 0:
        log(f"apt-get update failed: {r.stderr.strip()[-500:]}")
    return r.returncode == 0


def apt_download(pkg, debs):
    """The cached .deb of `pkg` (downloaded if missing)."""
    have = sorted(f for f in os.listdir(debs) if f.startswith(pkg + "_") and f.endswith(".deb"))
    if have:
        return os.path.join(debs, have[-1])
    if os.environ.get("MKDISK_BOOT_NO_FETCH") == "1":
        raise Unavailable(f"{pkg}: not in the cache {debs} and MKDISK_BOOT_NO_FETCH=1")
    if shutil.which("apt-get") is None:
        raise Unavailable("apt-get not found (the harness fetches Debian packages)")
    for attempt in range(2):
        r = run(["apt-get", "download", "-q", pkg], cwd=debs)
        if r.returncode == 0:
            break
        if attempt == 0 and apt_update_once(f"apt-get download {pkg} failed"):
            continue
        hint = "" if os.geteuid() == 0 else " (not root: run `apt-get update` as root if the lists are missing)"
        raise Unavailable(f"apt-get download {pkg} failed{hint}: {r.stderr.strip()[-500:]}")
    have = sorted(f for f in os.listdir(debs) if f.startswith(pkg + "_") and f.endswith(".deb"))
    if not have:
        raise Unavailable(f"apt-get download {pkg}: no .deb appeared")
    log(f"downloaded {have[-1]}")
    return os.path.join(debs, have[-1])


def extract(deb, dest):
    """Unpack `deb` into `dest` (once; a stamp file records it)."""
    stamp = os.path.join(dest, ".stamp-" + os.path.basename(deb))
    if os.path.exists(stamp):
        return dest
    os.makedirs(dest, exist_ok=True)
    r = run(["dpkg-deb", "-x", deb, dest])
    if r.returncode != 0:
        raise Unavailable(f"dpkg-deb -x {deb}: {r.stderr.strip()}")
    open(stamp, "w").close()
    return dest


def apt_depends(pkg):
    r = run(["apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
             "--no-breaks", "--no-replaces", "--no-enhances", pkg])
    out = []
    for line in r.stdout.splitlines():
        s = line.strip().lstrip("|")
        if s.startswith("Depends:") or s.startswith("PreDepends:"):
            name = s.split(":", 1)[1].strip()
            if not name.startswith("<"):
                out.append(name)
    return out


def kernel_package():
    for attempt in range(2):
        for d in apt_depends("linux-image-amd64"):
            if d.startswith("linux-image-"):
                return d
        if attempt == 1 or not apt_update_once("apt-cache depends linux-image-amd64 gave nothing"):
            break
    debs = os.path.join(cache_dir(), "debs")
    have = sorted(f.split("_")[0] for f in os.listdir(debs)
                  if f.startswith("linux-image-") and not f.startswith("linux-image-amd64"))
    if have:
        return have[-1]
    raise Unavailable("cannot resolve linux-image-amd64 (apt-cache depends gave nothing; run apt-get update)")


# Never pull these in for QEMU's libraries: alternatives to installed system libraries.
LIB_BLOCK = {"libelogind0", "libsystemd0", "libc6", "libgcc-s1", "libstdc++6"}


def missing_libs(binary, libdirs):
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(libdirs))
    r = run(["ldd", binary], env=env)
    return sorted({l.split()[0] for l in r.stdout.splitlines() if "not found" in l})


def unpack_with_libs(root, pkgs, binary, debs):
    """Unpack `pkgs` into `root`, then the not-installed library packages they depend on
    (transitively) until `ldd binary` finds every library. Returns LD_LIBRARY_PATH entries."""
    libdirs = [os.path.join(root, p) for p in ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")]
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return libdirs
    for p in pkgs:
        extract(apt_download(p, debs), root)
    seen = set(pkgs)
    frontier = list(pkgs)
    for _ in range(6):
        if not missing_libs(binary, libdirs):
            break
        nxt = []
        for p in frontier:
            for d in apt_depends(p):
                if d in seen or d in LIB_BLOCK or not d.startswith("lib"):
                    continue
                seen.add(d)
                if installed(d):
                    continue
                extract(apt_download(d, debs), root)
                nxt.append(d)
        frontier = nxt
        if not frontier:
            break
    missing = missing_libs(binary, libdirs)
    if missing:
        raise Unavailable(f"{binary} still misses libraries: {' '.join(missing)}")
    open(done, "w").close()
    return libdirs


def fetch_qemu(cache, debs):
    """(qemu binary, env additions, extra args) — the system's QEMU, or one unpacked from Debian."""
    q = os.environ.get("MKDISK_BOOT_QEMU") or shutil.which("qemu-system-x86_64")
    if q:
        return q, {}, []
    root = os.path.join(cache, "qemu-root")
    binary = os.path.join(root, "usr/bin/qemu-system-x86_64")
    pkgs = ["qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios", "ipxe-qemu"]
    libdirs = unpack_with_libs(root, pkgs, binary, debs)
    env = {"LD_LIBRARY_PATH": ":".join(libdirs)}
    return binary, env, ["-L", os.path.join(root, "usr/share/qemu"), "-L", os.path.join(root, "usr/share/seabios")]


def fetch():
    """Fetch and unpack every part; returns a dict of paths."""
    cache = cache_dir()
    debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    with Lock(os.path.join(cache, ".lock")):
        parts = {}
        kpkg = kernel_package()
        kroot = extract(apt_download(kpkg, debs), os.path.join(cache, "kernel"))
        vmlinuz = sorted(f for f in os.listdir(os.path.join(kroot, "boot")) if f.startswith("vmlinuz-"))
        if not vmlinuz:
            raise Unavailable(f"{kpkg}: no boot/vmlinuz-*")
        kver = vmlinuz[-1][len("vmlinuz-"):]
        parts["kernel_package"] = kpkg
        parts["kernel_version"] = kver
        parts["kernel"] = os.path.join(kroot, "boot", vmlinuz[-1])
        parts["modules"] = os.path.join(kroot, "lib", "modules", kver)
        bb = extract(apt_download("busybox-static", debs), os.path.join(cache, "busybox"))
        parts["busybox"] = os.path.join(bb, "bin", "busybox")
        sb = extract(apt_download("systemd-boot-efi", debs), os.path.join(cache, "systemd-boot"))
        parts["systemd_boot"] = os.path.join(sb, "usr/lib/systemd/boot/efi/systemd-bootx64.efi")
        ov = extract(apt_download("ovmf", debs), os.path.join(cache, "ovmf"))
        parts["ovmf_code"] = os.path.join(ov, "usr/share/OVMF/OVMF_CODE_4M.fd")
        parts["ovmf_vars"] = os.path.join(ov, "usr/share/OVMF/OVMF_VARS_4M.fd")
        groot = os.path.join(cache, "grub")
        gbin = os.path.join(groot, "usr/bin/grub-mkimage")
        parts["grub_mkimage"] = gbin
        parts["grub_env"] = {"LD_LIBRARY_PATH": ":".join(unpack_with_libs(groot, ["grub-common", "grub-pc-bin"], gbin, debs))}
        parts["grub_i386_pc"] = os.path.join(groot, "usr/lib/grub/i386-pc")
        # GRUB for EFI beside it (x86_64-efi/, same grub-mkimage): `mkdisk build --grub-efi`.
        extract(apt_download("grub-efi-amd64-bin", debs), groot)
        parts["grub_lib"] = os.path.join(groot, "usr/lib/grub")
        parts["grub_x86_64_efi"] = os.path.join(groot, "usr/lib/grub/x86_64-efi")
        q, env, extra = fetch_qemu(cache, debs)
        parts["qemu"] = q
        parts["qemu_env"] = env
        parts["qemu_args"] = extra
        for k in ("kernel", "busybox", "systemd_boot", "ovmf_code", "ovmf_vars", "qemu", "grub_mkimage",
                  "grub_x86_64_efi"):
            if not os.path.exists(parts[k]):
                raise Unavailable(f"{k}: {parts[k]} missing after unpacking")
        return parts


# ---------------------------------------------------------------------------------------------
# aarch64 parts: arm64 packages through a private apt state (no `dpkg --add-architecture`)


class ForeignApt:
    """`apt-get`/`apt-cache` for another Debian architecture with the system's sources but a
    private state under the cache: its own package lists, cache and an empty dpkg status, so
    nothing of the system's apt/dpkg configuration changes, and it works as any user (the
    lists are ours to update)."""

    def __init__(self, cache, debarch):
        self.debarch = debarch
        self.root = os.path.join(cache, f"apt-{debarch}")
        self.lists = os.path.join(self.root, "lists")
        self.opts = ["-o", f"APT::Architecture={debarch}", "-o", f"APT::Architectures::={debarch}",
                     "-o", f"Dir::State::Lists={self.lists}",
                     "-o", f"Dir::Cache={os.path.join(self.root, 'cache')}",
                     "-o", "Dir::State::Status=/dev/null", "-q"]
        self.updated = False

    def have_lists(self):
        return os.path.isdir(self.lists) and any("_Packages" in f for f in os.listdir(self.lists))

    def update(self, why):
        """`apt-get update` into the private lists, once per run. Returns whether it succeeded."""
        if self.updated or os.environ.get("MKDISK_BOOT_NO_FETCH") == "1" or shutil.which("apt-get") is None:
            return False
        self.updated = True
        for d in ("lists/partial", "cache/archives/partial"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        log(f"{why}; apt-get update for {self.debarch} into {self.root}")
        r = run(["apt-get", *self.opts, "update"])
        if r.returncode != 0 or not self.have_lists():
            log(f"apt-get update ({self.debarch}) failed: {r.stderr.strip()[-500:]}")
            return False
        return True

    def ensure_lists(self):
        if not self.have_lists():
            self.update(f"no {self.debarch} package lists yet")

    def depends(self, pkg):
        self.ensure_lists()
        r = run(["apt-cache", *self.opts, "depends", "--no-recommends", "--no-suggests", pkg])
        return [l.strip().split(":", 1)[1].strip() for l in r.stdout.splitlines()
                if l.strip().lstrip("|").startswith("Depends:")]

    def download(self, pkg, debs):
        """The cached .deb of `pkg` for this architecture (downloaded into `debs` if missing)."""
        def cached():
            return sorted(f for f in os.listdir(debs) if f.startswith(pkg + "_") and f.endswith(".deb"))
        if cached():
            return os.path.join(debs, cached()[-1])
        if os.environ.get("MKDISK_BOOT_NO_FETCH") == "1":
            raise Unavailable(f"{pkg} ({self.debarch}): not in the cache {debs} and MKDISK_BOOT_NO_FETCH=1")
        if shutil.which("apt-get") is None:
            raise Unavailable("apt-get not found (the harness fetches Debian packages)")
        self.ensure_lists()
        for attempt in range(2):
            r = run(["apt-get", *self.opts, "download", pkg], cwd=debs)
            if r.returncode == 0:
                break
            if attempt == 0 and self.update(f"apt-get download {pkg} ({self.debarch}) failed"):
                continue
            raise Unavailable(f"apt-get download {pkg} ({self.debarch}) failed (network? mirror?): "
                              f"{r.stderr.strip()[-500:]}")
        if not cached():
            raise Unavailable(f"apt-get download {pkg} ({self.debarch}): no .deb appeared")
        log(f"downloaded {cached()[-1]}")
        return os.path.join(debs, cached()[-1])

    def kernel_package(self, meta, debs):
        for d in self.depends(meta):
            if d.startswith("linux-image-"):
                return d
        # Offline (MKDISK_BOOT_NO_FETCH, no network): the newest kernel in the cache.
        have = sorted(f.split("_")[0] for f in os.listdir(debs)
                      if f.startswith("linux-image-") and not f.startswith(meta + "_"))
        if have:
            return have[-1]
        raise Unavailable(f"cannot resolve {meta} for {self.debarch}: no package lists in {self.lists} "
                          "(apt-get update failed: no network? or MKDISK_BOOT_NO_FETCH=1) and no kernel in the cache")


def fetch_qemu_aarch64(cache, debs):
    """(qemu-system-aarch64, env additions, extra args) — the system's, or Debian's
    qemu-system-arm (a host-architecture package) unpacked with its missing libraries."""
    q = os.environ.get("MKDISK_BOOT_QEMU_AARCH64") or shutil.which("qemu-system-aarch64")
    if q:
        return q, {}, []
    root = os.path.join(cache, "qemu-aarch64-root")
    binary = os.path.join(root, "usr/bin/qemu-system-aarch64")
    pkgs = ["qemu-system-arm", "qemu-system-common", "qemu-system-data"]
    libdirs = unpack_with_libs(root, pkgs, binary, debs)
    env = {"LD_LIBRARY_PATH": ":".join(libdirs)}
    # -L: QEMU's data directory (option ROMs, keymaps) from qemu-system-data.
    return binary, env, ["-L", os.path.join(root, "usr/share/qemu")]


def fetch_grub_arm64_efi(cache, apt, debs, host_debs):
    """GRUB for EFI on arm64 (`mkdisk build --grub LIB --grub-efi --arch aarch64`), laid out as
    a GRUB package: `LIB/arm64-efi/` from Debian's arm64 grub-efi-arm64-bin (modules and
    kernel.img: data to the host) and `LIB/../../bin/grub-mkimage`, a wrapper running the host's
    grub-mkimage (grub-common, as `fetch` unpacks it), which writes images for any platform.
    Returns the parts' keys grub_arm64_efi_lib (LIB) and grub_arm64_efi (LIB/arm64-efi)."""
    groot = extract(apt.download("grub-efi-arm64-bin", debs), os.path.join(cache, "grub-arm64"))
    lib = os.path.join(groot, "usr/lib/grub")
    # The same packages into the same root as `fetch` (its .complete stamp covers both).
    host = os.path.join(cache, "grub")
    hbin = os.path.join(host, "usr/bin/grub-mkimage")
    libdirs = unpack_with_libs(host, ["grub-common", "grub-pc-bin"], hbin, host_debs)
    wrapper = os.path.join(groot, "usr/bin/grub-mkimage")
    text = ("#!/bin/sh\n# boot harness: the host's grub-mkimage (grub-common) with the libraries it lacks\n"
            f"LD_LIBRARY_PATH={shlex.quote(':'.join(libdirs))}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}} "
            f"exec {shlex.quote(hbin)} \"$@\"\n")
    if not os.path.exists(wrapper) or open(wrapper).read() != text:
        os.makedirs(os.path.dirname(wrapper), exist_ok=True)
        with open(wrapper + ".tmp", "w") as f:
            f.write(text)
        os.chmod(wrapper + ".tmp", 0o755)
        os.replace(wrapper + ".tmp", wrapper)
    # Once per cache: the wrapper writes an arm64 PE (machine 0xAA64) from arm64-efi/.
    checked = os.path.join(groot, ".checked-mkimage")
    if not os.path.exists(checked):
        out = os.path.join(groot, "check.efi")
        r = run([wrapper, "-O", "arm64-efi", "-d", os.path.join(lib, "arm64-efi"), "-p", "/grub", "-o", out,
                 "part_gpt", "fat"])
        if r.returncode != 0:
            raise Unavailable(f"grub-mkimage -O arm64-efi failed: {r.stderr.strip()[-500:]}")
        head = open(out, "rb").read(4096)
        os.remove(out)
        pe = int.from_bytes(head[0x3C:0x40], "little")
        if head[:2] != b"MZ" or head[pe:pe + 4] != b"PE\0\0" or head[pe + 4:pe + 6] != b"\x64\xaa":
            raise Unavailable("grub-mkimage -O arm64-efi wrote no arm64 PE image")
        open(checked, "w").close()
    for p in (os.path.join(lib, "arm64-efi", "kernel.img"), os.path.join(lib, "arm64-efi", "moddep.lst")):
        if not os.path.exists(p):
            raise Unavailable(f"{p} missing after unpacking grub-efi-arm64-bin")
    return {"grub_arm64_efi_lib": lib, "grub_arm64_efi": os.path.join(lib, "arm64-efi")}


def fetch_aarch64():
    """The aarch64 parts; the keys of `fetch` where they mean the same (kernel, modules,
    busybox, qemu*), plus systemd_boot_aa64, aavmf_code, aavmf_vars and, where they can be had,
    grub_arm64_efi_lib and grub_arm64_efi (`fetch_grub_arm64_efi`)."""
    cache = cache_dir()
    debs = os.path.join(cache, "debs-arm64")  # apart from debs/: same package names, other arch
    host_debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    os.makedirs(host_debs, exist_ok=True)
    with Lock(os.path.join(cache, ".lock")):
        apt = ForeignApt(cache, "arm64")
        parts = {"arch": "aarch64"}
        kpkg = apt.kernel_package("linux-image-arm64", debs)
        kroot = extract(apt.download(kpkg, debs), os.path.join(cache, "kernel-arm64"))
        vmlinuz = sorted(f for f in os.listdir(os.path.join(kroot, "boot")) if f.startswith("vmlinuz-"))
        if not vmlinuz:
            raise Unavailable(f"{kpkg}: no boot/vmlinuz-*")
        kver = vmlinuz[-1][len("vmlinuz-"):]
        parts["kernel_package"] = kpkg
        parts["kernel_version"] = kver
        # An uncompressed arm64 Image with the EFI stub (a PE): systemd-boot starts it as is.
        parts["kernel"] = os.path.join(kroot, "boot", vmlinuz[-1])
        parts["modules"] = os.path.join(kroot, "lib", "modules", kver)
        bb = extract(apt.download("busybox-static", debs), os.path.join(cache, "busybox-arm64"))
        parts["busybox"] = os.path.join(bb, "bin", "busybox")
        sb = extract(apt.download("systemd-boot-efi", debs), os.path.join(cache, "systemd-boot-arm64"))
        parts["systemd_boot_aa64"] = os.path.join(sb, "usr/lib/systemd/boot/efi/systemd-bootaa64.efi")
        av = extract(apt.download("qemu-efi-aarch64", debs), os.path.join(cache, "aavmf"))
        # 64 MiB each: the size of the virt machine's two pflash banks.
        parts["aavmf_code"] = os.path.join(av, "usr/share/AAVMF/AAVMF_CODE.fd")
        parts["aavmf_vars"] = os.path.join(av, "usr/share/AAVMF/AAVMF_VARS.fd")
        try:
            parts.update(fetch_grub_arm64_efi(cache, apt, debs, host_debs))
        except Unavailable as e:
            # Optional: only the GRUB test needs it (it skips where the keys are missing).
            log(f"GRUB for arm64 EFI unavailable: {e}")
            parts["grub_arm64_efi_unavailable"] = str(e)
        q, env, extra = fetch_qemu_aarch64(cache, host_debs)
        parts["qemu"] = q
        parts["qemu_env"] = env
        parts["qemu_args"] = extra
        for k in ("kernel", "busybox", "systemd_boot_aa64", "aavmf_code", "aavmf_vars", "qemu"):
            if not os.path.exists(parts[k]):
                raise Unavailable(f"{k}: {parts[k]} missing after unpacking")
        return parts


def fetch_arch(arch):
    return fetch_aarch64() if arch == "aarch64" else fetch()


# ---------------------------------------------------------------------------------------------
# initramfs


def modinfo(path):
    data = read_module(path)
    info = {}
    for key in (b"depends=", b"softdep="):
        i = data.find(b"\0" + key)
        while i >= 0:
            j = data.index(b"\0", i + 1)
            val = data[i + 1 + len(key):j].decode()
            info.setdefault(key[:-1].decode(), []).append(val)
            i = data.find(b"\0" + key, j)
    return info


def read_module(path):
    if path.endswith(".ko.xz"):
        return lzma.decompress(open(path, "rb").read())
    if path.endswith(".ko.zst"):
        r = subprocess.run(["zstd", "-dc", path], capture_output=True, check=True)
        return r.stdout
    if path.endswith(".ko.gz"):
        return gzip.decompress(open(path, "rb").read())
    return open(path, "rb").read()


def module_index(moddir):
    idx = {}
    for dirpath, _, files in os.walk(os.path.join(moddir, "kernel")):
        for f in files:
            for ext in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
                if f.endswith(ext):
                    idx[f[: -len(ext)].replace("-", "_")] = os.path.join(dirpath, f)
    return idx


def resolve_modules(moddir, wanted):
    idx = module_index(moddir)
    order, seen = [], set()

    def visit(name, stack=()):
        name = name.replace("-", "_")
        if name in seen:
            return
        if name not in idx:
            log(f"module {name} not found (built in?)")
            seen.add(name)
            return
        seen.add(name)
        for dep in modinfo(idx[name]).get("depends", []):
            for d in filter(None, dep.split(",")):
                visit(d, stack + (name,))
        order.append(name)

    for w in wanted:
        visit(w)
    return [(n, idx[n]) for n in order]


class Cpio:
    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08X}"
            for v in (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0)
        )
        self.ino += 1
        self.buf.write(hdr.encode() + name_b)
        self.buf.write(b"\0" * ((4 - (110 + len(name_b)) % 4) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * ((4 - len(data) % 4) % 4))

    def dir(self, name):
        self._entry(name, 0o040755)

    def file(self, name, data, mode=0o100644):
        self._entry(name, mode, data)

    def chardev(self, name, major, minor):
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self):
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def host_binaries(binaries):
    """{path in the initramfs: host file} for `binaries` (absolute host paths), every library
    `ldd` lists for them and the dynamic loader, each at its host path; `Unavailable` where a
    binary is missing or a library is not found."""
    files = {}
    for b in binaries:
        if not os.path.isabs(b) or not os.path.isfile(b):
            raise Unavailable(f"--with {b}: not an absolute path of a file on this host")
        files[b.lstrip("/")] = os.path.realpath(b)
        r = run(["ldd", b])
        if r.returncode != 0:
            continue  # static ("not a dynamic executable")
        for line in r.stdout.splitlines():
            f = line.split()
            if "not found" in line:
                raise Unavailable(f"--with {b}: ldd: {line.strip()}")
            if "=>" in f and len(f) > f.index("=>") + 1 and f[f.index("=>") + 1].startswith("/"):
                lib = f[f.index("=>") + 1]
            elif f and f[0].startswith("/"):
                lib = f[0]  # the dynamic loader
            else:
                continue  # linux-vdso
            files[lib.lstrip("/")] = os.path.realpath(lib)
    return files


def build_initramfs(out, parts, extra=()):
    aarch64 = parts.get("arch") == "aarch64"
    if aarch64 and extra:
        # Host binaries are x86_64: they would not run in an arm64 guest.
        raise SystemExit("--with (host binaries) is for x86_64 guests only")
    mods = resolve_modules(parts["modules"], MODULES_AARCH64 if aarch64 else MODULES)
    c = Cpio()
    dirs = ["bin", "dev", "proc", "sys", "mnt", "tmp", "lib", "lib/modules"]
    for d in dirs:
        c.dir(d)
    for name, host in sorted(host_binaries(extra).items()):
        parts_of = name.split("/")
        for i in range(1, len(parts_of)):
            d = "/".join(parts_of[:i])
            if d not in dirs:
                dirs.append(d)
                c.dir(d)
        c.file(name, open(host, "rb").read(), 0o100755)
    c.chardev("dev/console", 5, 1)
    c.file("bin/busybox", open(parts["busybox"], "rb").read(), 0o100755)
    c.file("init", open(os.path.join(HERE, "init.sh"), "rb").read(), 0o100755)
    c.file("modules.order", ("\n".join(n for n, _ in mods) + "\n").encode())
    for name, path in mods:
        c.file(f"lib/modules/{name}.ko", read_module(path))
    raw = c.finish()
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as g:
            g.write(raw)
    os.replace(tmp, out)
    log(f"initramfs {out}: {len(mods)} modules ({' '.join(n for n, _ in mods)}), "
        f"{len(extra)} host binaries, {os.path.getsize(out)} bytes")


def cached_initramfs(parts, extra=()):
    """The initramfs for these parts, this init.sh and the host binaries `extra` (`--with`),
    built once into the cache."""
    h = hashlib.sha256()
    h.update(open(os.path.join(HERE, "init.sh"), "rb").read())
    h.update(open(os.path.abspath(__file__), "rb").read())
    h.update(parts["kernel_version"].encode() + parts["busybox"].encode())
    if extra:
        # The binaries and their libraries by content: a host upgrade makes a new initramfs.
        for name, host in sorted(host_binaries(extra).items()):
            h.update(name.encode() + b"\0" + hashlib.sha256(open(host, "rb").read()).digest())
    path = os.path.join(cache_dir(), f"initramfs-{h.hexdigest()[:16]}.gz")
    with Lock(os.path.join(cache_dir(), ".lock")):
        if not os.path.exists(path):
            build_initramfs(path, parts, extra)
    return path


# ---------------------------------------------------------------------------------------------
# QEMU


def aarch64_cmd(parts, a, work):
    """The QEMU command line of an aarch64 boot: `-M virt -cpu max` (TCG), the PL011 as the
    console (ttyAMA0), the listing on a virtio console (hvc0: virt has a single PL011, and a
    separate port keeps the listing apart from kernel messages), virtio-blk-pci disks (AAVMF and
    the kernel's virtio_pci both drive them), AAVMF in the two 64 MiB pflash banks for uefi."""
    kvm = os.environ.get("MKDISK_BOOT_ACCEL") == "kvm" and platform.machine() == "aarch64"
    # pauth-impdef: QEMU's cheap pointer-authentication algorithm; the architected QARMA one
    # costs TCG a large share of the boot time, and nothing here depends on the algorithm.
    cpu = "host" if kvm else "max,pauth-impdef=on"
    cmd = [parts["qemu"], *parts["qemu_args"], "-machine", f"virt,accel={'kvm' if kvm else 'tcg'}",
           "-cpu", cpu, "-m", "1024", "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
           "-serial", f"file:{a.console}",
           "-chardev", f"file,id=listing,path={a.listing}",
           "-device", "virtio-serial-pci", "-device", "virtconsole,chardev=listing"]
    for i, d in enumerate(a.disk):
        snap = "" if a.writable else ",snapshot=on"
        cmd += ["-drive", f"if=none,id=disk{i},file={d},format=raw{snap}",
                "-device", f"virtio-blk-pci,drive=disk{i}"]
    if a.firmware in ("uefi", "ovmf"):
        vars_copy = os.path.join(work, "AAVMF_VARS.fd")
        shutil.copyfile(parts["aavmf_vars"], vars_copy)
        cmd += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={parts['aavmf_code']}",
                "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    elif a.firmware == "bios":
        raise SystemExit("--firmware bios: there is no BIOS on aarch64 (use uefi or direct)")
    else:
        initrd = a.initrd or cached_initramfs(parts, a.with_bin)
        append = ["console=ttyAMA0", "panic=-1", "loglevel=4", "mkdisk.out=hvc0"]
        append += [f"mkdisk.grow={g}" for g in a.grow]
        append += [f"mkdisk.mount={m}" for m in a.mount]
        cmd += ["-kernel", parts["kernel"], "-initrd", initrd, "-append", " ".join(append)]
    return cmd


def boot(parts, a):
    work = os.path.dirname(os.path.abspath(a.console))
    if parts.get("arch") == "aarch64":
        return run_qemu(parts, a, aarch64_cmd(parts, a, work))
    accel = os.environ.get("MKDISK_BOOT_ACCEL", "tcg")
    cmd = [parts["qemu"], *parts["qemu_args"], "-machine", f"q35,accel={accel}", "-m", "1024",
           "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
           "-serial", f"file:{a.console}", "-serial", f"file:{a.listing}"]
    for d in a.disk:
        # snapshot=on: the guest never writes the image (it mounts read-only anyway);
        # --writable (growth tests): the guest's writes reach the file.
        snap = "" if a.writable else ",snapshot=on"
        cmd += ["-drive", f"file={d},format=raw,if=virtio{snap}"]
    if a.firmware in ("ovmf", "uefi"):
        vars_copy = os.path.join(work, "OVMF_VARS.fd")
        shutil.copyfile(parts["ovmf_vars"], vars_copy)
        cmd += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={parts['ovmf_code']}",
                "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    elif a.firmware == "bios":
        pass  # SeaBIOS (QEMU's default firmware) boots the disk's MBR → GRUB core.img
    else:
        initrd = a.initrd or cached_initramfs(parts, a.with_bin)
        append = ["console=ttyS0", "panic=-1", "loglevel=4", "mkdisk.out=ttyS1"]
        append += [f"mkdisk.grow={g}" for g in a.grow]
        append += [f"mkdisk.mount={m}" for m in a.mount]
        cmd += ["-kernel", parts["kernel"], "-initrd", initrd, "-append", " ".join(append)]
    return run_qemu(parts, a, cmd)


def run_qemu(parts, a, cmd):
    for f in (a.console, a.listing):
        open(f, "w").close()
    env = dict(os.environ, **parts["qemu_env"])
    log(" ".join(cmd))
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=a.timeout)
        rc = r.returncode
        err = r.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    dt = time.monotonic() - t0
    listing = open(a.listing, "rb").read().decode(errors="replace")
    done = "MKDISK-DONE" in listing
    log(f"qemu exit {rc} after {dt:.1f}s; listing {'complete' if done else 'INCOMPLETE'}")
    if err.strip():
        log("qemu stderr: " + err.strip()[-2000:])
    if not done:
        cons = open(a.console, "rb").read().decode(errors="replace")
        if rc not in (0, "timeout") and not cons.strip():
            # QEMU did not start at all (missing library, bad accelerator, …).
            raise Unavailable(f"qemu did not start (exit {rc}): {err.strip()[-1000:]}")
        log("console tail:\n" + cons.replace("\r", "")[-3000:])
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# GRUB (i386-pc) inputs: boot.img and a core.img from grub-mkimage (an oracle for mkdisk's own)


def grub_dir(parts, out, prefix, modules):
    """boot.img, core.img (grub-mkimage -O i386-pc -p PREFIX MODULES) and i386-pc/*.mod,*.lst."""
    src = parts["grub_i386_pc"]
    os.makedirs(os.path.join(out, "i386-pc"), exist_ok=True)
    shutil.copyfile(os.path.join(src, "boot.img"), os.path.join(out, "boot.img"))
    env = dict(os.environ, **parts["grub_env"])
    r = run([parts["grub_mkimage"], "-O", "i386-pc", "-d", src, "-p", prefix, "-o",
             os.path.join(out, "core.img"), *modules], env=env)
    if r.returncode != 0:
        raise SystemExit(f"grub-mkimage failed: {r.stderr}")
    for f in sorted(os.listdir(src)):
        if f.endswith(".mod") or f.endswith(".lst"):
            shutil.copyfile(os.path.join(src, f), os.path.join(out, "i386-pc", f))
    log(f"grub inputs in {out}: core.img {os.path.getsize(os.path.join(out, 'core.img'))} bytes, prefix {prefix}")


# ---------------------------------------------------------------------------------------------
# negative test support


def data_extents(f, size):
    """(start, end) of the allocated data of file object `f` (holes skipped)."""
    fd = f.fileno()
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


def alter(src, dst, markers):
    """Copy `src` to `dst` (sparse) and change one byte inside each marker string, which must
    occur exactly once in the image. Prints the offsets."""
    size = os.path.getsize(src)
    hits = {m: [] for m in markers}
    chunk = 8 << 20
    with open(src, "rb") as f, open(dst + ".tmp", "wb") as g:
        g.truncate(size)
        for start, end in data_extents(f, size):
            f.seek(start)
            g.seek(start)
            pos, tail = start, b""
            while pos < end:
                buf = f.read(min(chunk, end - pos))
                g.write(buf)
                hay = tail + buf
                for m in markers:
                    i = hay.find(m)
                    while i >= 0:
                        off = pos - len(tail) + i
                        if off not in hits[m]:
                            hits[m].append(off)
                        i = hay.find(m, i + 1)
                tail = hay[-(max(map(len, markers)) - 1):]
                pos += len(buf)
        for m, offs in hits.items():
            if len(offs) != 1:
                raise SystemExit(f"marker {m!r} found {len(offs)} times in {src}")
            g.seek(offs[0] + 7)
            g.write(b"#")
            print(offs[0])
    os.replace(dst + ".tmp", dst)


def extract_range(src, offset, length, dst):
    """Copy bytes [offset, offset+length) of `src` into a new file `dst` of `length` bytes,
    sparse: holes of `src` are skipped (SEEK_DATA), so a partition of a large sparse image is
    copied in the time its data takes (the growth tests' host checkers take no offset)."""
    size = os.path.getsize(src)
    end_all = min(size, offset + length)
    chunk = 8 << 20
    with open(src, "rb") as f, open(dst + ".tmp", "wb") as g:
        g.truncate(length)
        for start, end in data_extents(f, end_all):
            start, end = max(start, offset), min(end, end_all)
            if start >= end:
                continue
            f.seek(start)
            g.seek(start - offset)
            while start < end:
                buf = f.read(min(chunk, end - start))
                g.write(buf)
                start += len(buf)
    os.replace(dst + ".tmp", dst)


# ---------------------------------------------------------------------------------------------
# host-side listing (same records as the guest's, for manual diffs)


def host_list(root):
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for n in [""] + sorted(dirs + files) if dirpath == root else sorted(dirs + files):
            p = os.path.join(dirpath, n) if n else dirpath
            rel = "." + p[len(root):] if p != root else "."
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256(open(p, "rb").read()).hexdigest()
                out.append(f"{rel} {h} {stat.S_IMODE(st.st_mode):o} {st.st_size}")
            elif stat.S_ISLNK(st.st_mode):
                out.append(f"{rel} symlink {stat.S_IMODE(st.st_mode):o} {st.st_size} -> {os.readlink(p)}")
            elif stat.S_ISDIR(st.st_mode):
                if n:
                    continue  # listed when walked
                out.append(f"{rel} dir {stat.S_IMODE(st.st_mode):o}")
    return sorted(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    def arch_opt(p):
        p.add_argument("--arch", choices=["x86_64", "aarch64"], default="x86_64",
                       help="guest architecture of the parts (default x86_64)")

    arch_opt(sub.add_parser("fetch"))
    p = sub.add_parser("initramfs", help="print the path of the (cached) initramfs; with OUT, copy it there")
    arch_opt(p)
    p.add_argument("out", nargs="?")
    p.add_argument("--with", dest="with_bin", action="append", default=[], metavar="BIN",
                   help="a host binary (absolute path) to add, with its libraries and loader")
    p = sub.add_parser("run")
    arch_opt(p)
    p.add_argument("--disk", action="append", required=True)
    p.add_argument("--console", required=True)
    p.add_argument("--listing", required=True)
    p.add_argument("--firmware", choices=["direct", "ovmf", "bios", "uefi"], default="direct",
                   help="uefi: OVMF (x86_64) or AAVMF (aarch64) boots the disk's ESP")
    p.add_argument("--initrd")
    p.add_argument("--mount", action="append", default=[])
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds (default 300; aarch64 under TCG: 900)")
    p.add_argument("--with", dest="with_bin", action="append", default=[], metavar="BIN",
                   help="a host binary for the initramfs (direct boot without --initrd)")
    p.add_argument("--grow", action="append", default=[], metavar="DEV:FS",
                   help="mkdisk.grow=DEV:FS: the guest grows DEV's filesystem (ext4, btrfs) first")
    p.add_argument("--writable", action="store_true",
                   help="attach the disks without snapshot=on: the guest's writes reach the files")
    p = sub.add_parser("grub-dir", help="GRUB i386-pc inputs (boot.img, a grub-mkimage core.img, i386-pc/)")
    p.add_argument("out")
    p.add_argument("--prefix", required=True, help="e.g. (,gpt2)/grub")
    p.add_argument("modules", nargs="+", help="e.g. biosdisk part_gpt fat")
    p = sub.add_parser("alter", help="sparse-copy IMG to OUT, changing one byte in each unique MARKER")
    p.add_argument("img")
    p.add_argument("out")
    p.add_argument("marker", nargs="+")
    p = sub.add_parser("extract", help="sparse copy of LENGTH bytes of IMG from OFFSET into OUT (a partition)")
    p.add_argument("img")
    p.add_argument("offset", type=int)
    p.add_argument("length", type=int)
    p.add_argument("out")
    p = sub.add_parser("host-list")
    p.add_argument("dir")
    a = ap.parse_args()
    try:
        if a.cmd == "alter":
            alter(a.img, a.out, [m.encode() for m in a.marker])
            return 0
        if a.cmd == "extract":
            extract_range(a.img, a.offset, a.length, a.out)
            return 0
        if a.cmd == "host-list":
            print("\n".join(host_list(os.path.abspath(a.dir))))
            return 0
        arch = getattr(a, "arch", "x86_64")
        parts = fetch_arch(arch)
        if a.cmd == "fetch":
            if arch == "aarch64":
                # The default initramfs too (cached; `initramfs --arch aarch64` prints the same).
                parts["initrd"] = cached_initramfs(parts)
            print(json.dumps(parts, indent=1))
            return 0
        if a.cmd == "run" and a.timeout is None:
            a.timeout = 900 if arch == "aarch64" else 300
        if a.cmd == "grub-dir":
            grub_dir(parts, a.out, a.prefix, a.modules)
            return 0
        if a.cmd == "initramfs":
            path = cached_initramfs(parts, a.with_bin)
            if a.out:
                shutil.copyfile(path, a.out)
            print(path)
            return 0
        if a.cmd == "run":
            return boot(parts, a)
    except Unavailable as e:
        print(f"boot-harness: UNAVAILABLE: {e}", file=sys.stderr)
        return SKIP
    return 2


if __name__ == "__main__":
    sys.exit(main())
