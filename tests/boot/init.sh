#!/bin/busybox sh
# /init of the mkdisk boot-test initramfs (busybox only).
#
# Mounts partitions of the test disk read-only, lists every entry, and powers off.
# Parameters from the kernel command line:
#   mkdisk.mount=ID:DEV:FSTYPE:OPTS   (repeatable; OPTS comma-separated, e.g. ro,subvol=/nix;
#                                      FSTYPE auto = try ext4, btrfs, vfat)
#                                      without any, every partition of every /dev/vdX is tried
#   mkdisk.out=ttyS1                   where the listing goes (default /dev/ttyS1 if present,
#                                      else the console)
# Listing protocol (one record per line, fields separated by one space, path last):
#   MKDISK-BEGIN ID DEV FSTYPE OPTS
#   M <st_mode hex> <uid> <gid> <size> <nlink> <inode> <mtime> <path>
#   S <sha256>  <path>                 (regular files; sha256sum output)
#   L <path><TAB><symlink target>
#   MKDISK-END ID rc=<0 ok | mount-failed | ...>
#   MKDISK-DONE
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
for a in $(cat /proc/cmdline); do
    case "$a" in
    mkdisk.mount=*) mounts="$mounts ${a#mkdisk.mount=}" ;;
    mkdisk.out=*) out="/dev/${a#mkdisk.out=}" ;;
    esac
done
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
