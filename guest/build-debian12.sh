#!/usr/bin/env bash
# Builds vigil's built-in guest image "debian-12" from Debian packages and caches it.
#
#   guest/build-debian12.sh              build unless the image for the current inputs exists
#   guest/build-debian12.sh --print-dir  print the image dir and exit 0 if built, exit 1 if not
#
# What it makes, under $CACHE/images/debian-12/<key>/ (<key>: sha256 of this script, guest/debian12/ and
# guest/rootfs/, first 16 hex digits; `current` names the newest):
#   disk.qcow2   a GPT disk, one Linux partition (1 MiB in) holding an ext4 file system made by `mke2fs -d`
#                from `debootstrap --variant=minbase bookworm` (main suite) + busybox-static + kmod, with
#                Debian's cloud kernel package (the one tiny uses) installed by dpkg inside the root, and
#                vigil's agent files. Nothing is mounted on the host. /sbin/init is busybox init reading
#                vigil's inittab (systemd is not installed: too slow under TCG, and the agent needs none of it).
#   vmlinuz      /boot/vmlinuz-<release> from that same kernel package, for direct kernel boot.
#   initrd.img   busybox-static + virtio_blk (and the modules tiny loads) from the same package's modules;
#                its /init mounts /dev/vda1 and switch_roots to /usr/lib/vigil/init (guest/rootfs/init).
#   manifest.json
# The kernel package is installed by the root's own dpkg (`chroot dpkg -i --force-depends`): linux-base comes
# from debootstrap, but initramfs-tools (its "initramfs-tools | linux-initramfs-tool" dependency) is left out,
# since vigil builds its own initramfs here; dpkg-query in the guest lists it "installed" (apt would call the
# dependency broken: do not `apt-get -f install` in the guest without expecting initramfs-tools).
# Downloads go to apt's own cache (/var/cache/apt/archives); needs root (debootstrap, chroot dpkg).
set -euo pipefail
umask 022
PATH=$PATH:/usr/sbin:/sbin
export LC_ALL=C

GUEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUITE=bookworm
KERNEL_META=linux-image-6.12-cloud-amd64
INCLUDE=busybox-static,kmod,linux-base
MODULES=(virtio_blk virtio_net button evdev)
CMDLINE="console=ttyS0 quiet panic=-1"
AGENT_PORT=org.vigil.agent.0
FS_SIZE_MIB=1024
PART_START_SECTOR=2048
DISK_GUID=8c0a4a52-1d3e-4b7f-9e21-6a1d2c3b4e50
PART_GUID=2f6d3c1b-5a4e-4c7d-8b9a-0e1f2d3c4b5a
FS_UUID=6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d
LINUX_FS_TYPE=0FC63DAF-8483-4772-8E79-3D69D8477DE4

die() {
	echo "build-debian12: error: $*" >&2
	exit 1
}
note() { echo "build-debian12: $*" >&2; }

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
images=$cache/images/debian-12

compute_key() {
	(
		cd "$GUEST_DIR"
		find build-debian12.sh debian12 rootfs -type f -printf '%p\0' | sort -z | xargs -0r sha256sum --
		find build-debian12.sh debian12 rootfs -type f -perm -u+x -printf 'x %p\n' | sort
	) | sha256sum | cut -c1-16
}
key=$(compute_key)
[[ $key =~ ^[0-9a-f]{16}$ ]] || die "cannot compute the image key"
dir=$images/$key

set_current() {
	[[ $(readlink "$images/current" 2>/dev/null || true) == "$key" ]] && return 0
	ln -sfn "$key" "$images/.current.$$"
	mv -T "$images/.current.$$" "$images/current"
}

if [[ -f $dir/manifest.json ]]; then
	((print_dir)) && echo "$dir" && exit 0
	set_current 2>/dev/null || true
	echo "debian-12 image up to date: $dir"
	exit 0
fi
((print_dir)) && exit 1

[[ $(id -u) -eq 0 ]] || die "debootstrap needs root"
for tool in debootstrap chroot sfdisk mke2fs qemu-img apt-get apt-cache dpkg-deb modinfo xz zstd cpio gzip sha256sum flock dd truncate; do
	command -v "$tool" >/dev/null || die "\"$tool\" is missing (Debian packages: debootstrap, fdisk, e2fsprogs, qemu-utils, apt, dpkg, kmod, xz-utils, zstd, cpio, gzip, coreutils, util-linux)"
done

mkdir -p "$images"
exec 9>"$images/.lock"
flock 9
if [[ -f $dir/manifest.json ]]; then
	set_current
	echo "debian-12 image up to date: $dir"
	exit 0
fi
rm -rf "$images"/.build-*
work=$(mktemp -d "$images/.build-$key.XXXXXX")
cleanup() {
	for m in proc sys dev/pts; do
		mountpoint -q "$work/root/$m" 2>/dev/null && umount -l "$work/root/$m"
	done
	rm -rf "$work"
}
trap cleanup EXIT
start=$(date +%s.%N)
root=$work/root
out=$work/image
mkdir -p "$out"

# --- the kernel package (the same one tiny uses) ------------------------------------------------------
resolve_kernel() {
	apt-cache depends "$KERNEL_META" 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }' || true
}
kernel_pkg=$(resolve_kernel)
[[ -n $kernel_pkg ]] || { apt-get update -qq >&2 || true; kernel_pkg=$(resolve_kernel); }
[[ -n $kernel_pkg ]] || die "apt-cache cannot resolve $KERNEL_META (is bookworm-security configured?)"
release=${kernel_pkg#linux-image-}
# Into apt's own cache, so a second cold build (new key) downloads nothing.
apt-get install -q -y --download-only --no-install-recommends -o Debug::NoLocking=1 "$kernel_pkg" >"$work/apt.log" 2>&1 ||
	{ apt-get update -qq >&2 || true; apt-get install -q -y --download-only -o Debug::NoLocking=1 "$kernel_pkg" >"$work/apt.log" 2>&1; } ||
	{ tail -n 20 "$work/apt.log" >&2; die "cannot download $kernel_pkg"; }
# The candidate version apt just downloaded (older revisions of the same package may sit in the cache too).
kernel_version=$(apt-cache show --no-all-versions "$kernel_pkg" | awk '$1 == "Version:" { print $2; exit }')
kernel_deb=
for f in /var/cache/apt/archives/"${kernel_pkg}"_*.deb; do
	[[ -f $f && $(dpkg-deb -f "$f" Package) == "$kernel_pkg" && $(dpkg-deb -f "$f" Version) == "$kernel_version" ]] && kernel_deb=$f
done
[[ -n $kernel_deb ]] || die "no .deb for $kernel_pkg $kernel_version in /var/cache/apt/archives"
note "kernel package $kernel_pkg $kernel_version"

# --- the root: debootstrap, then the kernel unpacked by the root's own dpkg ----------------------------
mirror=$(apt-cache policy | awk -v s="$SUITE/main" '$3 == s && $2 ~ /^https?:\/\// { print $2; exit }')
[[ -n $mirror ]] || mirror=http://deb.debian.org/debian
note "debootstrap --variant=minbase --include=$INCLUDE $SUITE from $mirror"
debootstrap --variant=minbase --include="$INCLUDE" --cache-dir=/var/cache/apt/archives "$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
	{
		tail -n 20 "$work/debootstrap.log" >&2
		die "debootstrap failed"
	}
cp "$kernel_deb" "$root/tmp/kernel.deb"
chroot "$root" dpkg -i --force-depends /tmp/kernel.deb >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; die "dpkg -i of $kernel_pkg failed"; }
rm -f "$root/tmp/kernel.deb"
kmod=$root/lib/modules/$release
[[ -f $root/boot/vmlinuz-$release && -d $kmod ]] || die "$kernel_pkg left no /boot/vmlinuz-$release"
cp "$root/boot/vmlinuz-$release" "$out/vmlinuz"
# No apt caches or logs in the image.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
bb=$root/bin/busybox
[[ -x $bb ]] || die "busybox-static left no /bin/busybox"

# vigil's files: the agent, its helpers, inittab, the ACPI power button; Debian's passwd/group stay.
cp -R "$GUEST_DIR/rootfs/usr/." "$root/usr/"
cp -R "$GUEST_DIR/debian12/usr/." "$root/usr/"
install -m 755 "$GUEST_DIR/rootfs/init" "$root/usr/lib/vigil/init"
install -m 644 "$GUEST_DIR/rootfs/etc/inittab" "$root/etc/inittab"
cp -R "$GUEST_DIR/rootfs/etc/acpi" "$root/etc/"
echo debian-12 >"$root/etc/hostname"
ln -sfn /bin/busybox "$root/sbin/init"
# Busybox applets Debian does not provide (acpid, cttyhack, udhcpc, ip, insmod's friends are kmod's, ...).
while read -r applet; do
	[[ $applet == */* && $applet != *..* ]] || continue
	[[ -e $root/$applet || -L $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
done < <("$bb" --list-full)
# vigil's init loads modules from this list; the initramfs has loaded them all already.
: >"$kmod/load-order"
# vigil's scripts are written for busybox ash (tiny's /bin/sh); Debian's /bin/sh is dash, so they name busybox.
while IFS= read -r -d '' f; do
	[[ $(head -c 9 "$f") == '#!/bin/sh' ]] && sed -i '1s|^#!/bin/sh$|#!/bin/busybox sh|' "$f"
done < <(find "$root/usr/lib/vigil" -type f -print0)
chmod -R go-w "$root/usr/lib/vigil"
packages=$(grep -c '^Package: ' "$root/var/lib/dpkg/status")
printf 'name=debian-12\nkey=%s\n' "$key" >"$root/etc/vigil-image"

# --- the initramfs: busybox + the modules' closure, from the same kernel package ------------------------
ird=$work/initramfs
mkdir -p "$ird"/{bin,dev,proc,newroot,lib/modules}
install -m 755 "$bb" "$ird/bin/busybox"
for a in sh mount umount insmod switch_root sleep mkdir echo; do ln -s busybox "$ird/bin/$a"; done
install -m 755 "$GUEST_DIR/debian12/initramfs-init" "$ird/init"
declare -A mod_done=()
load_order=()
find_module() {
	local n=$1 f
	for f in "${n}" "${n//_/-}"; do
		f=$(find "$kmod/kernel" -name "$f.ko" -o -name "$f.ko.xz" -o -name "$f.ko.zst" | head -n1)
		[[ -n $f ]] && echo "$f" && return 0
	done
	return 1
}
add_module() {
	local n=$1 chain=${2:-} f d
	[[ -n ${mod_done[$n]:-} ]] && return 0
	[[ " $chain " == *" $n "* ]] && die "module dependency loop: $chain $n"
	f=$(find_module "$n") || die "module $n is not in $kernel_pkg"
	[[ $(modinfo -F vermagic "$f") == "$release "* ]] || die "module $n was not built for $release"
	for d in $(modinfo -F depends "$f" | tr , ' '); do add_module "$d" "$chain $n"; done
	case $f in
	*.xz) xz -dc "$f" ;;
	*.zst) zstd -dcq "$f" ;;
	*) cat "$f" ;;
	esac >"$ird/lib/modules/$n.ko"
	mod_done[$n]=1
	load_order+=("$n")
}
for m in "${MODULES[@]}"; do add_module "$m"; done
printf '%s\n' "${load_order[@]}" >"$ird/lib/modules/load-order"
find "$ird" -exec touch -h -d @0 {} +
(cd "$ird" && find . -mindepth 1 -print0 | sort -z | cpio --null --create --format=newc --owner=0:0 --quiet) | gzip -9 -n >"$out/initrd.img"

# --- the disk: GPT, one partition, ext4 written at its offset (no mount) --------------------------------
fs=$work/root.ext4
truncate -s "${FS_SIZE_MIB}M" "$fs"
mke2fs -q -F -t ext4 -b 4096 -I 256 -L debian-root -U "$FS_UUID" \
	-E "hash_seed=$FS_UUID,root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0" -d "$root" "$fs"
part_sectors=$((FS_SIZE_MIB * 2048))
disk_bytes=$(((PART_START_SECTOR + part_sectors + 2048) * 512))
disk=$work/disk.raw
truncate -s "$disk_bytes" "$disk"
sfdisk -q --no-reread --no-tell-kernel "$disk" <<EOT
label: gpt
label-id: $DISK_GUID
first-lba: 2048
start=$PART_START_SECTOR, size=$part_sectors, type=$LINUX_FS_TYPE, uuid=$PART_GUID, name="debian-root"
EOT
dd if="$fs" of="$disk" bs=1M seek=$((PART_START_SECTOR * 512 / 1048576)) conv=notrunc,sparse status=none
rm -f "$fs"
qemu-img convert -f raw -O qcow2 "$disk" "$out/disk.qcow2"
rm -f "$disk"

# --- manifest --------------------------------------------------------------------------------------------
seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
json_safe() {
	[[ $1 =~ ^[A-Za-z0-9._:+~=/\ -]*$ ]] || die "unexpected characters in manifest value: $1"
	printf '%s' "$1"
}
file_entry() { printf '"%s":{"sha256":"%s","size":%s}' "$1" "$(sha256sum <"$out/$1" | cut -d' ' -f1)" "$(stat -c %s "$out/$1")"; }
{
	printf '{"format":1,"name":"debian-12","key":"%s","builtAt":"%s","buildSeconds":%s,' "$key" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$seconds"
	printf '"suite":"%s","mirror":"%s","packages":%s,' "$SUITE" "$(json_safe "$mirror")" "$packages"
	printf '"kernel":{"package":"%s","version":"%s","release":"%s"},' "$(json_safe "$kernel_pkg")" "$(json_safe "$kernel_version")" "$(json_safe "$release")"
	printf '"disk":{"bytes":%s,"label":"gpt","partitionStartBytes":%s,"partitionBytes":%s,"partitionUuid":"%s","fsUuid":"%s"},' \
		"$disk_bytes" $((PART_START_SECTOR * 512)) $((part_sectors * 512)) "$PART_GUID" "$FS_UUID"
	printf '"files":{%s,%s,%s},' "$(file_entry vmlinuz)" "$(file_entry initrd.img)" "$(file_entry disk.qcow2)"
	printf '"cmdline":"%s","agent":{"protocol":1,"port":"%s"}}\n' "$(json_safe "$CMDLINE")" "$AGENT_PORT"
} >"$out/manifest.json"
chmod 644 "$out"/*
chmod 755 "$out"
mv -T "$out" "$dir"
set_current
current=$(readlink "$images/current")
find "$images" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended -regex '.*/[0-9a-f]{16}' -printf '%T@ %f\n' |
	sort -rn | tail -n +3 | while read -r _ old; do [[ $old == "$current" ]] || rm -rf "${images:?}/$old"; done
echo "debian-12 image built in ${seconds}s: $dir"
