#!/usr/bin/env bash
# Builds the dormant Debian test disk for the offline scanner (docs/transience.md, "Test data") and caches it.
#
#   scripts/build-debian-dormant.sh              build unless the fixture for this script exists
#   scripts/build-debian-dormant.sh --print-dir  print the fixture dir and exit 0 if built, exit 1 if not
#
# What it makes, under $CACHE/fixtures/debian-dormant/<key>/ (<key>: the first 16 hex digits of this script's
# sha256, so a change here gives a new fixture and an unchanged script costs nothing):
#   base.qcow2     a GPT disk with one Linux partition (1 MiB in) holding an ext4 file system made by
#                  `mke2fs -d` from a `debootstrap --variant=minbase bookworm` root, MAIN suite only (so it
#                  lacks the security suite's updates). Nothing is ever mounted on the host.
#   overlay.qcow2  a linked clone (backing file "base.qcow2", format qcow2, relative) holding ONLY the clusters
#                  where the changed state differs from the base: /etc/motd rewritten, /opt/planted/eicar-like.txt
#                  added, /opt/removed/eicar-like.txt (present in the base) deleted. Its freed blocks keep the
#                  marker bytes in the base, so a scanner that reads raw sectors instead of files finds it there.
#   reference/     what the build knew, for tests to compare with: the dpkg status file and os-release of the
#                  root, the marker string.
#   manifest.json  sizes, sha256s, the partition offset, the mirror, the package count, build seconds.
# How the overlay gets only the differing blocks: the changed file system is made from a copy of the base one
# with `debugfs -w` (again no mount), written into a copy of the raw disk; an empty overlay on that changed disk
# is then safely rebased (`qemu-img rebase`, not -u) onto base.qcow2, which copies into the overlay exactly the
# sectors where old and new backing differ. `qemu-img compare` checks the result against the changed disk.
# Downloads go to apt's own cache (/var/cache/apt/archives) via debootstrap --cache-dir; needs root (debootstrap).
set -euo pipefail
umask 022
PATH=$PATH:/usr/sbin:/sbin
export LC_ALL=C

SCRIPT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
SUITE=bookworm
FS_SIZE_MIB=384
PART_START_SECTOR=2048 # 1 MiB
# Fixed identities, so two builds of one key describe the same disk layout.
DISK_GUID=5e1f1c2a-7d0b-4c51-9a43-1f0d5a1e0d13
PART_GUID=0b0c6a39-4a7e-4d8e-8f3c-9b2d6f4f2a11
FS_UUID=3d6c9a6e-2b1f-4f53-8c1e-6a0f5b9e7c21
LINUX_FS_TYPE=0FC63DAF-8483-4772-8E79-3D69D8477DE4
MARKER='VIGIL-DORMANT-TEST-MARKER 6b1f3e: a harmless planted file for signature-scan tests (not malware)'

die() {
	echo "build-debian-dormant: error: $*" >&2
	exit 1
}
note() { echo "build-debian-dormant: $*" >&2; }

print_dir=0
case $# in
0) ;;
1) [[ $1 == --print-dir ]] && print_dir=1 || die "usage: $0 [--print-dir]" ;;
*) die "usage: $0 [--print-dir]" ;;
esac

if [[ -n ${VIGIL_CACHE:-} ]]; then
	cache=$VIGIL_CACHE
elif [[ $(id -u) -eq 0 ]]; then
	cache=/var/cache/vigil
else
	cache=$HOME/.cache/vigil
fi
fixtures=$cache/fixtures/debian-dormant
key=$(sha256sum "$SCRIPT" | cut -c1-16)
dir=$fixtures/$key

if [[ -f $dir/manifest.json ]]; then
	((print_dir)) && echo "$dir" && exit 0
	echo "debian-dormant fixture up to date: $dir"
	exit 0
fi
((print_dir)) && exit 1

[[ $(id -u) -eq 0 ]] || die "debootstrap needs root"
for tool in debootstrap sfdisk mke2fs debugfs qemu-img apt-cache sha256sum flock dd truncate; do
	command -v "$tool" >/dev/null || die "\"$tool\" is missing (Debian packages: debootstrap, fdisk, e2fsprogs, qemu-utils, apt, coreutils, util-linux)"
done

mkdir -p "$fixtures"
exec 9>"$fixtures/.lock"
flock 9
if [[ -f $dir/manifest.json ]]; then
	echo "debian-dormant fixture up to date: $dir"
	exit 0
fi
rm -rf "$fixtures"/.build-*
work=$(mktemp -d "$fixtures/.build-$key.XXXXXX")
cleanup() {
	# debootstrap mounts proc/sys inside the target while it runs; never leave them behind.
	for m in proc sys dev/pts; do
		mountpoint -q "$work/root/$m" 2>/dev/null && umount -l "$work/root/$m"
	done
	rm -rf "$work"
}
trap cleanup EXIT
start=$(date +%s.%N)

# The mirror this machine's apt actually uses for the main suite (apt-cache policy names it).
mirror=$(apt-cache policy | awk -v s="$SUITE/main" '$3 == s && $2 ~ /^https?:\/\// { print $2; exit }')
[[ -n $mirror ]] || mirror=http://deb.debian.org/debian
note "debootstrap --variant=minbase $SUITE from $mirror (main suite only)"
debootstrap --variant=minbase --cache-dir=/var/cache/apt/archives "$SUITE" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
	{
		tail -n 20 "$work/debootstrap.log" >&2
		die "debootstrap failed"
	}
root=$work/root
[[ -f $root/var/lib/dpkg/status && -f $root/etc/os-release ]] || die "debootstrap left no dpkg status or os-release"
# The base state: a file that the overlay state deletes (its blocks stay in the base).
mkdir -p "$root/opt/removed"
printf '%s\nThis copy is deleted in overlay.qcow2.\n' "$MARKER" >"$root/opt/removed/eicar-like.txt"

mkdir -p "$work/out/reference"
out=$work/out
cp "$root/var/lib/dpkg/status" "$out/reference/dpkg-status"
cp -L "$root/etc/os-release" "$out/reference/os-release"
printf '%s\n' "$MARKER" >"$out/reference/marker.txt"
packages=$(grep -c '^Package: ' "$root/var/lib/dpkg/status")

# --- the base disk: GPT, one partition, ext4 written at its offset ---------------------------------------
fs=$work/base.ext4
truncate -s "${FS_SIZE_MIB}M" "$fs"
mke2fs -q -F -t ext4 -b 4096 -L debian-root -U "$FS_UUID" -E "hash_seed=$FS_UUID,root_owner=0:0" -d "$root" "$fs"
part_sectors=$((FS_SIZE_MIB * 2048))
disk_bytes=$(((PART_START_SECTOR + part_sectors + 2048) * 512)) # 1 MiB after the partition for the backup GPT
disk=$work/base.raw
truncate -s "$disk_bytes" "$disk"
sfdisk -q --no-reread --no-tell-kernel "$disk" <<EOF
label: gpt
label-id: $DISK_GUID
first-lba: 2048
start=$PART_START_SECTOR, size=$part_sectors, type=$LINUX_FS_TYPE, uuid=$PART_GUID, name="debian-root"
EOF
dd if="$fs" of="$disk" bs=1M seek=$((PART_START_SECTOR * 512 / 1048576)) conv=notrunc,sparse status=none
qemu-img convert -f raw -O qcow2 "$disk" "$out/base.qcow2"

# --- the changed state, made without mounting: debugfs on a copy of the file system ----------------------
new_fs=$work/new.ext4
cp --sparse=always "$fs" "$new_fs"
printf 'vigil dormant test image: this motd was changed in the overlay.\n' >"$work/motd"
printf '%s\n' "$MARKER" >"$work/planted"
debugfs -w -f - "$new_fs" >"$work/debugfs.log" 2>&1 <<EOF
rm /etc/motd
write $work/motd /etc/motd
mkdir /opt/planted
write $work/planted /opt/planted/eicar-like.txt
rm /opt/removed/eicar-like.txt
EOF
# debugfs reports failures on stderr but exits 0: check the result with debugfs itself.
[[ $(debugfs -R "cat /opt/planted/eicar-like.txt" "$new_fs" 2>/dev/null) == "$MARKER" ]] || die "debugfs did not plant the file: $(cat "$work/debugfs.log")"
debugfs -R "stat /opt/removed/eicar-like.txt" "$new_fs" 2>&1 | grep -q "File not found" || die "debugfs did not delete the file"
e2fsck -fn "$new_fs" >/dev/null 2>&1 || die "the changed file system does not pass e2fsck -fn"
new_disk=$work/new.raw
cp --sparse=always "$disk" "$new_disk"
dd if="$new_fs" of="$new_disk" bs=1M seek=$((PART_START_SECTOR * 512 / 1048576)) conv=notrunc,sparse status=none
rm -f "$fs" "$new_fs"

# --- the overlay: only the differing sectors, by a safe rebase from the changed disk onto the base --------
(
	cd "$out"
	qemu-img create -q -f qcow2 -b "$new_disk" -F raw overlay.qcow2
	qemu-img rebase -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2
	qemu-img compare -q -f qcow2 -F raw overlay.qcow2 "$new_disk" || die "overlay.qcow2 does not read as the changed disk"
	qemu-img compare -q -f qcow2 -F raw base.qcow2 "$disk" || die "base.qcow2 does not read as the base disk"
)
[[ $(qemu-img info --output=json "$out/overlay.qcow2" | grep -o '"backing-filename": *"[^"]*"') == *'"base.qcow2"' ]] ||
	die "overlay.qcow2 does not name base.qcow2 as its backing file"
rm -f "$disk" "$new_disk"

seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
file_entry() { printf '"%s":{"sha256":"%s","size":%s}' "$1" "$(sha256sum <"$out/$1" | cut -d' ' -f1)" "$(stat -c %s "$out/$1")"; }
{
	printf '{"format":1,"name":"debian-dormant","key":"%s","builtAt":"%s","buildSeconds":%s,' "$key" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$seconds"
	printf '"suite":"%s","mirror":"%s","packages":%s,' "$SUITE" "$mirror" "$packages"
	printf '"disk":{"bytes":%s,"label":"gpt","partitionStartBytes":%s,"partitionBytes":%s,"partitionUuid":"%s","fsUuid":"%s"},' \
		"$disk_bytes" $((PART_START_SECTOR * 512)) $((part_sectors * 512)) "$PART_GUID" "$FS_UUID"
	printf '"overlay":{"changed":["/etc/motd"],"added":["/opt/planted/eicar-like.txt"],"deleted":["/opt/removed/eicar-like.txt"]},'
	printf '"files":{%s,%s}}\n' "$(file_entry base.qcow2)" "$(file_entry overlay.qcow2)"
} >"$out/manifest.json"
chmod -R a+rX "$out"
mv -T "$out" "$dir"
# Keep the two newest fixtures; older ones are only disk space.
find "$fixtures" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended -regex '.*/[0-9a-f]{16}' -printf '%T@ %f\n' |
	sort -rn | tail -n +3 | while read -r _ old; do rm -rf "${fixtures:?}/$old"; done
echo "debian-dormant fixture built in ${seconds}s: $dir"
