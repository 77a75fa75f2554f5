#!/usr/bin/env bash
# Builds vigil's built-in guest image "tiny" from Debian packages and caches it.
#
#   guest/build-tiny.sh              build unless the image for the current guest/ exists
#   guest/build-tiny.sh --print-dir  print the image dir and exit 0 if built, exit 1 if not
#
# The image is the Debian cloud kernel (linux-image-6.12-cloud-amd64) with a busybox-static
# initramfs that carries vigil's guest agent (guest/rootfs/), plus a small ext4 data disk.
# Nothing downloaded is committed: this script fetches the .debs with apt and caches the result
# under $CACHE/images/tiny/<key>/, where <key> hashes everything under guest/, so a change to
# the agent or this script gives a new image and an unchanged tree costs nothing.
# See guest/README.md for the layout, the manifest and the agent protocol.
set -euo pipefail

# Cached images are not secret, and apt's _apt user must be able to write the download dir.
umask 022
# modinfo, mkfs.ext4 and bpftool live in sbin, which a non-root PATH may lack.
PATH=$PATH:/usr/sbin:/sbin
export LC_ALL=C

GUEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KERNEL_META=linux-image-6.12-cloud-amd64
BUSYBOX_PKG=busybox-static
# Kernel modules the initramfs loads (everything else the agent needs is built in: virtio PCI,
# the virtio console, ext4, VMGENID). button + evdev turn the ACPI power button into an input
# event busybox acpid can see; their dependencies are added from `modinfo -F depends`.
MODULES=(virtio_blk virtio_net button evdev)
# console=ttyS0: the console is the first serial port (vigil's serial socket).
# panic=-1: a guest that panics reboots at once instead of hanging; the host sees the reset.
CMDLINE="console=ttyS0 quiet panic=-1"
AGENT_PORT=org.vigil.agent.0
# The test fixture module (guest/sct/, see guest/README.md "Test fixture: vigil_sct"): built
# against the kernel's headers at build time and put in the initramfs here.
FIXTURE_KO=usr/lib/vigil/fixtures/vigil_sct.ko
DISK_SIZE=64M

die() {
	echo "build-tiny: error: $*" >&2
	exit 1
}
note() {
	echo "build-tiny: $*" >&2
}

usage() {
	echo "usage: $0 [--print-dir]" >&2
	exit 2
}

print_dir=0
case $# in
0) ;;
1)
	[[ $1 == --print-dir ]] || usage
	print_dir=1
	;;
*) usage ;;
esac

if [[ -n ${VIGIL_CACHE:-} ]]; then
	cache=$VIGIL_CACHE
elif [[ $(id -u) -eq 0 ]]; then
	cache=/var/cache/vigil
else
	cache=$HOME/.cache/vigil
fi
images=$cache/images/tiny

# The key: sha256 over `sha256sum` lines ("<hash>  <path>") of every file under guest/, sorted
# by path in the C locale, followed by "x <path>" for every executable file (the exec bit ends
# up in the initramfs too). First 16 hex digits. The debian-12 image's own files (build-debian12.sh, debian12/)
# are not in tiny, so they are not in its key.
compute_key() {
	(
		cd "$GUEST_DIR"
		find . -type f ! -path ./build-debian12.sh ! -path './debian12/*' -printf '%P\0' | sort -z | xargs -0r sha256sum --
		find . -type f ! -path ./build-debian12.sh ! -path './debian12/*' -perm -u+x -printf 'x %P\n' | sort
	) | sha256sum | cut -c1-16
}
key=$(compute_key)
[[ $key =~ ^[0-9a-f]{16}$ ]] || die "cannot compute the image key"
dir=$images/$key

# Points $images/current at $key; ln to a temp name then rename, so readers never see it missing.
set_current() {
	[[ $(readlink "$images/current" 2>/dev/null || true) == "$key" ]] && return 0
	ln -sfn "$key" "$images/.current.$$"
	mv -T "$images/.current.$$" "$images/current"
}

if [[ -f $dir/manifest.json ]]; then
	if ((print_dir)); then
		echo "$dir"
		exit 0
	fi
	# Cheap, and keeps `current` right after switching between guest/ versions.
	set_current 2>/dev/null || true
	echo "tiny image up to date: $dir"
	exit 0
fi
((print_dir)) && exit 1

for tool in apt-get apt-cache dpkg-deb modinfo xz zstd cpio gzip mkfs.ext4 qemu-img sha256sum od flock make objcopy; do
	command -v "$tool" >/dev/null || die "\"$tool\" is missing (Debian packages: apt, dpkg, kmod, xz-utils, zstd, cpio, gzip, e2fsprogs, qemu-utils, coreutils, util-linux, make, binutils)"
done

mkdir -p "$images"
# One build at a time per cache; a second caller waits and then finds the image built.
exec 9>"$images/.lock"
flock 9
if [[ -f $dir/manifest.json ]]; then
	set_current
	echo "tiny image up to date: $dir"
	exit 0
fi

# Build beside the final dir (same filesystem) and rename into place at the end: a failure
# leaves at most a .build-* dir, which the trap removes, never a half image. A build that was
# killed outright leaves its .build-* behind; holding the lock, any such dir is stale.
rm -rf "$images"/.build-*
work=$(mktemp -d "$images/.build-$key.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
out=$work/image
root=$work/initramfs
mkdir -p "$out" "$root"

# --- packages -----------------------------------------------------------------------------

is_root() { [[ $(id -u) -eq 0 ]]; }

apt_update_once() {
	[[ -z ${apt_updated:-} ]] || return 1
	apt_updated=1
	if is_root; then
		note "refreshing apt package lists"
		apt-get update -qq >&2 || die "apt-get update failed"
	else
		note "apt package lists look stale, and only root can refresh them"
		return 1
	fi
}

# The versioned package the meta package depends on, e.g. linux-image-6.12.117+deb12-cloud-amd64.
resolve_kernel() {
	apt-cache depends "$KERNEL_META" 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }' || true
}
kernel_pkg=$(resolve_kernel)
if [[ -z $kernel_pkg ]]; then
	apt_update_once || true
	kernel_pkg=$(resolve_kernel)
fi
[[ -n $kernel_pkg ]] || die "apt-cache cannot resolve $KERNEL_META (is a bookworm-security or bookworm-backports source configured?)"
release=${kernel_pkg#linux-image-}
note "kernel package $kernel_pkg"
# Headers for the fixture module: the flavour's headers, the common headers and kbuild, named
# after the release without its flavour (6.12.118+deb12-cloud-amd64 -> 6.12.118+deb12).
kbuild_ver=${release%-cloud-amd64}
[[ $kbuild_ver != "$release" ]] || die "kernel release $release is not a cloud-amd64 one"
headers_pkgs=("linux-headers-$release" "linux-headers-$kbuild_ver-common" "linux-kbuild-$kbuild_ver")

# apt drops privileges to _apt for downloads: give it a directory it can write, or apt warns
# (harmlessly) and downloads as root.
debs=$work/debs
mkdir -p "$debs"
if is_root && id _apt >/dev/null 2>&1; then
	chmod 755 "$work"
	chown _apt "$debs"
fi
# The kernel package's own System.map is a one-line placeholder ("The real System.map is in
# the linux-image-<version>-dbg package"), so the -dbg package (~320 MB) comes too; only its
# System.map is kept.
download() {
	(cd "$debs" && apt-get download -q "$kernel_pkg" "$kernel_pkg-dbg" "$BUSYBOX_PKG" "${headers_pkgs[@]}" >&2)
}
if ! download; then
	# Lists older than the mirror name versions the mirror no longer has.
	apt_update_once || die "apt-get download failed"
	download || die "apt-get download failed"
fi
chmod 700 "$work"

deb_of() { # package -> its .deb in $debs
	local f
	for f in "$debs"/*.deb; do
		[[ $(dpkg-deb -f "$f" Package) == "$1" ]] && {
			echo "$f"
			return 0
		}
	done
	die "no .deb for $1 was downloaded"
}
kernel_deb=$(deb_of "$kernel_pkg")
dbg_deb=$(deb_of "$kernel_pkg-dbg")
busybox_deb=$(deb_of "$BUSYBOX_PKG")
kernel_version=$(dpkg-deb -f "$kernel_deb" Version)
dbg_version=$(dpkg-deb -f "$dbg_deb" Version)
busybox_version=$(dpkg-deb -f "$busybox_deb" Version)
[[ $dbg_version == "$kernel_version" ]] || die "$kernel_pkg-dbg is version $dbg_version, not $kernel_version"
kernel_deb_sha=$(sha256sum <"$kernel_deb" | cut -d' ' -f1)
dbg_deb_sha=$(sha256sum <"$dbg_deb" | cut -d' ' -f1)
busybox_deb_sha=$(sha256sum <"$busybox_deb" | cut -d' ' -f1)

dpkg-deb -x "$kernel_deb" "$work/kernel"
dpkg-deb -x "$busybox_deb" "$work/busybox"
kboot=$work/kernel/boot
kmod=$work/kernel/lib/modules/$release
[[ -f $kboot/vmlinuz-$release && -d $kmod ]] || die "$kernel_pkg does not contain /boot/vmlinuz-$release"

# --- kernel files -------------------------------------------------------------------------

cp "$kboot/vmlinuz-$release" "$out/vmlinuz"
# System.map sits near the start of the -dbg data archive: --occurrence=1 makes tar stop there
# instead of decompressing 1.8 GB of debug info (dpkg-deb then dies of SIGPIPE, which is fine).
set +o pipefail
dpkg-deb --fsys-tarfile "$dbg_deb" 2>/dev/null |
	tar -xO --occurrence=1 "./usr/lib/debug/boot/System.map-$release" >"$out/System.map"
set -o pipefail
grep -q ' T _text$' "$out/System.map" || die "no System.map-$release in $kernel_pkg-dbg"
cp "$kboot/config-$release" "$out/config"

# vmlinux: the bzImage payload is the zstd-compressed ELF kernel. Its place comes from the x86
# boot header (setup_sects at 0x1f1; payload_offset/payload_length at 0x248/0x24c, relative to
# the protected-mode code at (setup_sects+1)*512), and must start with the zstd frame magic
# 28 b5 2f fd. The payload's last 4 bytes are the uncompressed size (not zstd data), which also
# checks the result.
le32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
vmlinuz=$out/vmlinuz
setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$vmlinuz" | tr -d ' ')
payload_offset=$(le32 "$vmlinuz" $((0x248)))
payload_length=$(le32 "$vmlinuz" $((0x24c)))
payload_start=$(((setup_sects + 1) * 512 + payload_offset))
magic=$(od -An -tx1 -j "$payload_start" -N4 "$vmlinuz" | tr -d ' ')
[[ $magic == 28b52ffd ]] || die "vmlinuz payload at offset $payload_start is not zstd (magic $magic); is CONFIG_KERNEL_ZSTD still set?"
dd if="$vmlinuz" iflag=skip_bytes,count_bytes skip="$payload_start" count=$((payload_length - 4)) bs=1M status=none |
	zstd -dcq >"$out/vmlinux" ||
	die "cannot decompress the vmlinuz payload"
expected_size=$(le32 "$vmlinuz" $((payload_start + payload_length - 4)))
[[ $(head -c4 "$out/vmlinux" | od -An -tx1 | tr -d ' ') == 7f454c46 ]] || die "the decompressed kernel is not an ELF file"
[[ $(stat -c %s "$out/vmlinux") == "$expected_size" ]] || die "the decompressed kernel is not $expected_size bytes long"
# Introspection reads kernel types from this file's BTF: make sure a real tool can.
if command -v bpftool >/dev/null; then
	btf_first=$(bpftool btf dump file "$out/vmlinux" format raw 2>&1 | head -n1 || true)
	[[ $btf_first == "[1] "* ]] || die "bpftool cannot read BTF from vmlinux: $btf_first"
else
	note "bpftool is not installed: skipping the BTF check of vmlinux"
fi

# System.map comes from another package: check that it describes this vmlinux. The kernel's
# image is mapped linearly, so one shift turns symbol addresses into file offsets; derive it from
# linux_banner (the "Linux version ..." text), then __start_BTF must land on the BTF magic
# (9f eb 01 00) at that same shift.
sym() { awk -v n="$1" '$3 == n { print "0x" $1; exit }' "$out/System.map"; }
banner_addr=$(sym linux_banner)
btf_addr=$(sym __start_BTF)
[[ -n $banner_addr && -n $btf_addr ]] || die "System.map lacks linux_banner or __start_BTF"
map_ok=0
while IFS=: read -r banner_off _; do
	shift_by=$((banner_addr - banner_off))
	if [[ $(od -An -tx1 -j $((btf_addr - shift_by)) -N4 "$out/vmlinux" 2>/dev/null | tr -d ' ') == 9feb0100 ]]; then
		map_ok=1
		break
	fi
done < <(grep -obUaF "Linux version $release " "$out/vmlinux" || true)
((map_ok)) || die "System.map from $kernel_pkg-dbg does not match vmlinux"

# --- test fixture module ------------------------------------------------------------------

# The .debs are only unpacked here (never installed on the host). The flavour's Makefile
# includes the common one by absolute path, and a few symlinks are absolute: both are pointed
# into the unpacked tree. The module is built with the kernel's own compiler (gcc-12, named in
# the headers), without BTF (that would need pahole; nothing reads a fixture's BTF).
kb=$work/kbuild
mkdir -p "$kb"
for p in "${headers_pkgs[@]}"; do
	f=$(deb_of "$p")
	[[ $(dpkg-deb -f "$f" Version) == "$kernel_version" ]] || die "$p is not version $kernel_version"
	dpkg-deb -x "$f" "$kb"
done
hdr=$kb/usr/src/linux-headers-$release
[[ -f $hdr/Makefile ]] || die "linux-headers-$release has no Makefile"
sed -i "s#^include /usr/src/#include $kb/usr/src/#" "$hdr/Makefile"
while IFS= read -r -d '' link; do
	ln -sfn "$kb$(readlink "$link")" "$link"
done < <(find "$kb" -type l -lname '/*' -print0)
kcc=$(awk -F'[ =]+' '$1 == "override" && $2 == "CROSS_COMPILE" { print $3 }' "$hdr/.kernelvariables")gcc-12
command -v "$kcc" >/dev/null || die "\"$kcc\" (the kernel's compiler) is missing (Debian package: gcc-12)"
cp -R "$GUEST_DIR/sct" "$work/sct"
make -s -C "$hdr" M="$work/sct" CONFIG_DEBUG_INFO_BTF_MODULES= modules >&2 || die "building the fixture module guest/sct failed"
[[ $(modinfo -F vermagic "$work/sct/vigil_sct.ko") == "$release "* ]] || die "the fixture module was not built for $release"
note "fixture module vigil_sct built"

# --- initramfs ----------------------------------------------------------------------------

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,data,etc,var,lib/modules/"$release"}
install -d -m 700 "$root/root"
ln -s ../run "$root/var/run"
ln -s ../proc/mounts "$root/etc/mtab"

install -m 755 "$work/busybox/bin/busybox" "$root/bin/busybox"
# Applet links, where busybox itself says they belong (bin/sh, sbin/init, usr/bin/awk, ...).
while read -r applet; do
	[[ $applet == */* && $applet != *..* ]] || continue
	[[ -e $root/$applet || -L $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
done < <("$root/bin/busybox" --list-full)
[[ -L $root/sbin/init && -L $root/bin/sh ]] || die "busybox did not list init and sh"

# Modules: the closure of MODULES under `modinfo -F depends`, dependencies first, decompressed
# (busybox insmod cannot read .ko.xz).
declare -A mod_file=() mod_done=()
load_order=()
find_module() { # name -> path of its .ko[.xz|.zst]
	local n=$1 f
	for f in "${n}" "${n//_/-}"; do
		f=$(find "$kmod/kernel" -name "$f.ko" -o -name "$f.ko.xz" -o -name "$f.ko.zst" | head -n1)
		[[ -n $f ]] && {
			echo "$f"
			return 0
		}
	done
	return 1
}
add_module() { # name [chain]: depth-first, so each module comes after its dependencies
	local n=$1 chain=${2:-} f deps d
	[[ -n ${mod_done[$n]:-} ]] && return 0
	[[ " $chain " == *" $n "* ]] && die "module dependency loop: $chain $n"
	f=$(find_module "$n") || die "module $n is not in $kernel_pkg"
	[[ $(modinfo -F vermagic "$f") == "$release "* ]] || die "module $n was not built for $release"
	deps=$(modinfo -F depends "$f")
	for d in ${deps//,/ }; do
		add_module "$d" "$chain $n"
	done
	mod_file[$n]=$f
	mod_done[$n]=1
	load_order+=("$n")
}
for m in "${MODULES[@]}"; do
	add_module "$m"
done
for m in "${load_order[@]}"; do
	case ${mod_file[$m]} in
	*.xz) xz -dc "${mod_file[$m]}" ;;
	*.zst) zstd -dcq "${mod_file[$m]}" ;;
	*) cat "${mod_file[$m]}" ;;
	esac >"$root/lib/modules/$release/$m.ko"
done
printf '%s\n' "${load_order[@]}" >"$root/lib/modules/$release/load-order"
note "modules: ${load_order[*]}"

# vigil's files last, so they win over anything above.
cp -R "$GUEST_DIR/rootfs/." "$root/"
mkdir -p "$root/${FIXTURE_KO%/*}"
objcopy --strip-debug "$work/sct/vigil_sct.ko" "$root/$FIXTURE_KO"
# Same modes whatever the checkout's umask was; exec bits come from guest/rootfs.
chmod -R u+rwX,go+rX,go-w "$root"
chmod 700 "$root/root"

# Reproducible-ish: sorted names, owner root, every mtime 0, no gzip name or time stamp.
find "$root" -exec touch -h -d @0 {} +
cpio_flags=(--null --create --format=newc --owner=0:0 --quiet)
cpio --help 2>/dev/null | grep -q -- --reproducible && cpio_flags+=(--reproducible)
(cd "$root" && find . -mindepth 1 -print0 | sort -z | cpio "${cpio_flags[@]}") | gzip -9 -n >"$out/initrd.img"

# --- data disk ----------------------------------------------------------------------------

built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
stage=$work/disk
mkdir -p "$stage/etc"
printf 'name=tiny\nkey=%s\nbuilt=%s\n' "$key" "$built_at" >"$stage/etc/vigil-image"
echo "vigil tiny image data disk: mounted at /data in the guest; writes land in the VM's own qcow2 overlay." >"$stage/README"
truncate -s "$DISK_SIZE" "$work/disk.raw"
# 4 KiB blocks and 256-byte inodes (the small-fs defaults give 2038-limited timestamps);
# inode tables and journal initialised now, so the guest's first mount does not write them
# into every VM's overlay in the background.
mkfs.ext4 -q -F -L vigil-data -b 4096 -I 256 -E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0 \
	-d "$stage" "$work/disk.raw"
qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$out/disk.qcow2"

# --- manifest -----------------------------------------------------------------------------

# Values written into JSON unquoted-checked: versions, hashes, names. Anything else is a bug.
json_safe() {
	[[ $1 =~ ^[A-Za-z0-9._:+~=/\ -]*$ ]] || die "unexpected characters in manifest value: $1"
	printf '%s' "$1"
}
file_entry() { # name
	local f=$out/$1
	printf '"%s":{"sha256":"%s","size":%s}' "$1" "$(sha256sum <"$f" | cut -d' ' -f1)" "$(stat -c %s "$f")"
}
{
	printf '{"format":1,"name":"tiny","key":"%s","builtAt":"%s",' "$key" "$built_at"
	printf '"kernel":{"package":"%s","version":"%s","release":"%s","debSha256":"%s"},' \
		"$(json_safe "$kernel_pkg")" "$(json_safe "$kernel_version")" "$(json_safe "$release")" "$kernel_deb_sha"
	printf '"kernelDbg":{"package":"%s","version":"%s","debSha256":"%s"},' \
		"$(json_safe "$kernel_pkg-dbg")" "$(json_safe "$dbg_version")" "$dbg_deb_sha"
	printf '"busybox":{"package":"%s","version":"%s","debSha256":"%s"},' \
		"$BUSYBOX_PKG" "$(json_safe "$busybox_version")" "$busybox_deb_sha"
	printf '"fixtures":{"vigil_sct":{"path":"/%s","sha256":"%s","headers":["%s","%s","%s"]}},' \
		"$FIXTURE_KO" "$(sha256sum <"$root/$FIXTURE_KO" | cut -d' ' -f1)" \
		"$(json_safe "${headers_pkgs[0]}")" "$(json_safe "${headers_pkgs[1]}")" "$(json_safe "${headers_pkgs[2]}")"
	printf '"files":{%s,%s,%s,%s,%s,%s},' "$(file_entry vmlinuz)" "$(file_entry initrd.img)" \
		"$(file_entry disk.qcow2)" "$(file_entry vmlinux)" "$(file_entry System.map)" "$(file_entry config)"
	printf '"cmdline":"%s","agent":{"protocol":1,"port":"%s"}}\n' "$(json_safe "$CMDLINE")" "$AGENT_PORT"
} >"$out/manifest.json"
chmod 644 "$out"/*
chmod 755 "$out"

# --- publish ------------------------------------------------------------------------------

mv -T "$out" "$dir"
set_current
# Keep the two newest images (and whatever `current` names); older ones are only disk space.
current=$(readlink "$images/current")
find "$images" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended -regex '.*/[0-9a-f]{16}' -printf '%T@ %f\n' |
	sort -rn | tail -n +3 | while read -r _ old; do
	[[ $old == "$current" ]] || rm -rf "${images:?}/$old"
done

echo "tiny image built: $dir"
