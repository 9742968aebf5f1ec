#!/bin/busybox sh
# /init of the mkdisk boot-test initramfs (busybox only).
#
# Mounts partitions of the test disk read-only, lists every entry, and powers off.
# Parameters from the kernel command line:
#   mkdisk.mount=ID:DEV:FSTYPE:OPTS   (repeatable; OPTS comma-separated, e.g. ro,subvol=/nix;
#                                      FSTYPE auto = try ext4, btrfs, vfat)
#                                      without any, every partition of every /dev/vdX is tried
#   mkdisk.out=ttyS1                   where the listing goes (default /dev/ttyS1 if present,
#                                      else the console; aarch64: hvc0, a virtio console)
#   mkdisk.grow=DEV:FSTYPE            (repeatable; optional) before the listing: mount DEV
#                                      read-write, grow its filesystem to the size of DEV
#                                      (ext4: resize2fs DEV, on-line; btrfs: btrfs filesystem
#                                      resize max MNT), unmount. resize2fs/btrfs are host
#                                      binaries the harness added (harness.py --with).
# Listing protocol (one record per line, fields separated by one space, path last):
#   MKDISK-BEGIN ID DEV FSTYPE OPTS
#   M <st_mode hex> <uid> <gid> <size> <nlink> <inode> <mtime> <path>
#   S <sha256>  <path>                 (regular files; sha256sum output)
#   L <path><TAB><symlink target>
#   MKDISK-END ID rc=<0 ok | mount-failed | ...>
#   MKDISK-DONE
# Growth records (mkdisk.grow, before any MKDISK-BEGIN):
#   MKDISK-GROWLOG DEV <line>          the tool's output and the kernel's messages
#   MKDISK-GROW DEV FSTYPE rc=<0 ok | mount-failed | tool's status | ...> before=<bytes>
#               after=<bytes> device=<bytes>   (statfs f_blocks*f_bsize while mounted, before
#                                      and after; device = /sys/class/block/DEV/size * 512)
/bin/busybox mkdir -p /proc /sys /dev /mnt /tmp /bin
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "MKDISK-INIT start: $(cat /proc/cmdline)"

for m in $(cat /modules.order); do
    insmod "/lib/modules/$m.ko" 2>/dev/null || echo "MKDISK-WARN insmod $m failed"
done

out=/dev/ttyS1
mounts=
grows=
for a in $(cat /proc/cmdline); do
    case "$a" in
    mkdisk.mount=*) mounts="$mounts ${a#mkdisk.mount=}" ;;
    mkdisk.grow=*) grows="$grows ${a#mkdisk.grow=}" ;;
    mkdisk.out=*) out="/dev/${a#mkdisk.out=}" ;;
    esac
done
# A virtio console (aarch64: mkdisk.out=hvc0) appears once virtio_console has probed; the
# serial ports of x86 exist from the start, so this loop ends at once there.
i=0
while [ ! -c "$out" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ -c "$out" ] || out=/dev/console
stty -F "$out" raw -echo 2>/dev/null

# Wait for the disk.
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/vda ] || echo "MKDISK-WARN no /dev/vda"
sleep 0.2

if [ -z "$mounts" ]; then
    # Every partition, filesystem type found by trying (busybox-static has no blkid).
    sleep 1
    for d in /dev/vd[a-z][0-9]*; do
        [ -b "$d" ] && mounts="$mounts ${d#/dev/}:${d#/dev/}:auto:ro"
    done
fi

fs_bytes() {
    # $1: mounted directory; statfs total size in bytes
    set -- $(stat -f -c '%S %b' "$1" 2>/dev/null)
    if [ -n "$2" ]; then echo $(($1 * $2)); else echo 0; fi
}

grow() {
    # $1: device (vda2), $2: ext4 | btrfs. Host binaries from the harness (--with) live at
    # their host paths; /etc/mtab lets resize2fs find the mount.
    g_dev=$1
    g_fs=$2
    g_mnt=/grow/$g_dev
    mkdir -p "$g_mnt" /etc
    [ -e /etc/mtab ] || ln -s /proc/mounts /etc/mtab
    i=0
    while [ ! -b "/dev/$g_dev" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    g_before=0
    g_after=0
    g_device=$(($(cat "/sys/class/block/$g_dev/size" 2>/dev/null || echo 0) * 512))
    g_seen=$(dmesg | wc -l)
    if mount -t "$g_fs" -o rw "/dev/$g_dev" "$g_mnt" 2>/tmp/grow.log; then
        g_before=$(fs_bytes "$g_mnt")
        (
            PATH=/usr/sbin:/sbin:/usr/bin:/bin
            case "$g_fs" in
            ext4) exec resize2fs "/dev/$g_dev" ;;
            btrfs) exec btrfs filesystem resize max "$g_mnt" ;;
            *) echo "cannot grow $g_fs"; exit 2 ;;
            esac
        ) >>/tmp/grow.log 2>&1
        g_rc=$?
        sync
        g_after=$(fs_bytes "$g_mnt")
        umount "$g_mnt" || g_rc="$g_rc,umount-failed"
    else
        g_rc=mount-failed
    fi
    # The kernel's messages since (not cleared: the error scan at the end reads them all).
    dmesg | tail -n +$((g_seen + 1)) | grep -iE 'resiz|meta_bg|EXT4-fs|BTRFS' >>/tmp/grow.log
    sed "s|^|MKDISK-GROWLOG $g_dev |" /tmp/grow.log >"$out"
    sed "s|^|MKDISK-GROWLOG $g_dev |" /tmp/grow.log
    rm -f /tmp/grow.log
    echo "MKDISK-GROW $g_dev $g_fs rc=$g_rc before=$g_before after=$g_after device=$g_device" >"$out"
    echo "MKDISK-GROW $g_dev $g_fs rc=$g_rc before=$g_before after=$g_after device=$g_device (uptime $(cut -d' ' -f1 /proc/uptime))"
}

for g in $grows; do
    grow "${g%%:*}" "${g#*:}"
done

list() {
    # $1: mounted directory; entries printed relative to it ("." is the root)
    cd "$1" || return 1
    find . -xdev -exec stat -c 'M %f %u %g %s %h %i %Y %n' {} + || return 1
    find . -xdev -type f -exec sha256sum {} + | sed 's/^/S /' || return 1
    find . -xdev -type l | while IFS= read -r l; do
        printf 'L %s\t%s\n' "$l" "$(readlink "$l")"
    done
    cd /
}

for m in $mounts; do
    id=${m%%:*}
    r=${m#*:}
    dev=${r%%:*}
    r=${r#*:}
    fs=${r%%:*}
    opts=${r#*:}
    mkdir -p "/mnt/$id"
    i=0
    while [ ! -b "/dev/$dev" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    ok=
    if [ "$fs" = auto ]; then
        for t in ext4 btrfs vfat; do
            if mount -t "$t" -o "$opts" "/dev/$dev" "/mnt/$id" 2>/dev/null; then
                fs=$t
                ok=1
                break
            fi
        done
        # Not a filesystem we check (swap, BIOS boot, empty): no record.
        [ -n "$ok" ] || continue
    elif mount -t "$fs" -o "$opts" "/dev/$dev" "/mnt/$id"; then
        ok=1
    fi
    echo "MKDISK-BEGIN $id $dev $fs $opts" >"$out"
    echo "MKDISK-BEGIN $id $dev $fs $opts (uptime $(cut -d' ' -f1 /proc/uptime))"
    if [ -n "$ok" ]; then
        if list "/mnt/$id" >/tmp/listing 2>/tmp/err; then rc=0; else rc=list-failed; fi
        echo "MKDISK-LISTED $id (uptime $(cut -d' ' -f1 /proc/uptime))"
        cat /tmp/listing >"$out"
        rm -f /tmp/listing
        sed 's/^/MKDISK-STDERR /' /tmp/err >"$out"
        cd /
        umount "/mnt/$id" || rc="$rc,umount-failed"
    else
        rc=mount-failed
        echo "MKDISK-WARN mount failed; /proc/partitions:"
        cat /proc/partitions
        ls -l /dev/vd* 2>&1
    fi
    echo "MKDISK-END $id rc=$rc" >"$out"
    echo "MKDISK-END $id rc=$rc (uptime $(cut -d' ' -f1 /proc/uptime))"
done
dmesg | grep -iE 'error|corrupt|fail|csum|bad ' | grep -vE 'insmod|crc32c_intel|pcspkr|GPT:' | sed 's/^/MKDISK-DMESG /' >"$out"
echo "MKDISK-DONE" >"$out"
echo "MKDISK-DONE"
sync
poweroff -f
