#!/usr/bin/env bash
# Sets up everything vigil needs on a fresh Debian 12 machine, and is quick when it is all there already:
# Debian packages (only the missing ones), npm packages (only when package-lock.json changed), the TypeScript
# build (only when sources changed) and the guest image (only when guest/ changed). Run by `npm start` and
# `npm test`; safe to run again at any time.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'vigil set-up: %s\n' "$*" >&2; }

# Debian packages. Keep in sync with docs/ARCHITECTURE.md ("What set-up installs").
APT_PACKAGES=(
  qemu-system-x86 qemu-utils      # the hypervisor and the disk tool
  busybox-static cpio xz-utils zstd e2fsprogs kmod  # building the tiny guest image
  make gcc-12                      # the tiny image's test fixture module (guest/sct, built against the kernel's headers)
  bpftool binutils                 # cross-checks of the introspection engine (bpftool btf dump, readelf)
  nftables                         # the loopback guard for open NICs (src/host/loopback-guard.ts)
  gcc libc6-dev                    # building the QEMU jail helper (native/vigil-jail.c)
  openssl                          # the site TLS certificate for a non-loopback API listener
  dnsmasq-base tcpdump conntrack   # the virtual switch: DHCP per network, pcap mirrors, conntrack hand-over (docs/network.md)
  postgresql                       # the cluster manager's shared inventory (docs/cluster.md, "PostgreSQL")
  yara                             # the cross-check of the signature scan (docs/transience.md, "Signature scan")
  debootstrap fdisk                # the dormant Debian test disk (scripts/build-debian-dormant.sh): rootfs, GPT via sfdisk
  chromium                         # the web console's end-to-end tests (playwright-core drives it; docs/web.md)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    say "missing Debian packages: ${missing[*]} — run as root (or install them) first"
    exit 1
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# PostgreSQL (docs/cluster.md, "PostgreSQL"): a running server and a login role for root, authenticated by peer
# over the unix socket in /var/run/postgresql, so no password is on any command line. PID 1 is not systemd
# here: the cluster is started with pg_ctlcluster. Quick when it is running and the role exists.
if [ "$(id -u)" -eq 0 ]; then
  pg_cluster=$(pg_lsclusters -h 2>/dev/null | awk 'NR == 1 { print $1 " " $2 }')
  if [ -z "$pg_cluster" ]; then
    pg_major=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    say "creating PostgreSQL cluster $pg_major main"
    pg_createcluster "$pg_major" main >/dev/null
    pg_cluster="$pg_major main"
  fi
  # shellcheck disable=SC2086 # "VERSION NAME": two words on purpose
  if ! pg_lsclusters -h $pg_cluster 2>/dev/null | awk '{ print $4 }' | grep -qx online; then
    say "starting PostgreSQL $pg_cluster"
    pg_ctlcluster $pg_cluster start
  fi
  if [ "$(runuser -u postgres -- psql -XtAq -c "SELECT 1 FROM pg_roles WHERE rolname = 'root'")" != 1 ]; then
    say "creating the PostgreSQL role root"
    runuser -u postgres -- psql -Xq -v ON_ERROR_STOP=1 -c "CREATE ROLE root LOGIN CREATEDB"
  fi
fi

# The QEMU jail helper: rebuilt when its source changes (docs/jail.md).
jail_sum=$(sha256sum native/vigil-jail.c | cut -d' ' -f1)
if [ ! -x native/build/vigil-jail ] || [ "$(cat native/build/vigil-jail.sha256 2>/dev/null)" != "$jail_sum" ]; then
  say "building native/build/vigil-jail"
  mkdir -p native/build
  gcc -O2 -Wall -Werror -o native/build/vigil-jail.tmp native/vigil-jail.c
  mv native/build/vigil-jail.tmp native/build/vigil-jail
  echo "$jail_sum" > native/build/vigil-jail.sha256
fi

# npm packages: `npm ci` when node_modules is missing or does not match the lock file.
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f node_modules/.vigil-lock.sha256 ] || [ "$(cat node_modules/.vigil-lock.sha256)" != "$lock_sum" ]; then
  say "installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  echo "$lock_sum" > node_modules/.vigil-lock.sha256
fi

# TypeScript build: when any source is newer than the last build.
if [ ! -f dist/.build-stamp ] || [ -n "$(find src web tsconfig.json tsconfig.build.json package.json -newer dist/.build-stamp -print -quit)" ]; then
  say "building"
  rm -rf dist
  npm run --silent build
  touch dist/.build-stamp
fi

# The built-in guest image (cached by the hash of guest/).
bash guest/build-tiny.sh

# The dormant Debian test disk for offline scans (cached by the hash of its script; docs/transience.md, "Test data").
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/build-debian-dormant.sh
fi

# The built-in bootable Debian 12 image "debian-12" (cached by the hash of its inputs; docs/transience.md, "The debian-12 image").
if [ "$(id -u)" -eq 0 ]; then
  bash guest/build-debian12.sh
fi
