#!/usr/bin/env bash
# Installs what Serval's build, demo and tests need on a Debian machine, when missing.
# Idempotent: installs nothing when everything is present. Run as root.
set -euo pipefail

# Debian package → a file it installs (checked to decide whether to install).
declare -A PKGS=(
  [clang]=/usr/bin/clang
  [llvm]=/usr/bin/llvm-strip
  [libbpf-dev]=/usr/include/bpf/bpf_helpers.h
  [iptables]=/usr/sbin/iptables
  [ipset]=/usr/sbin/ipset
  [iproute2]=/usr/sbin/ip
  [bird2]=/usr/sbin/bird
  [etcd-server]=/usr/bin/etcd
  [containernetworking-plugins]=/usr/lib/cni/portmap
  [protobuf-compiler]=/usr/bin/protoc
  [iperf3]=/usr/bin/iperf3
  [bpftool]=/usr/sbin/bpftool
  [frr]=/usr/lib/frr/bgpd
  [tcpdump]=/usr/bin/tcpdump
  [nftables]=/usr/sbin/nft
  [pkg-config]=/usr/bin/pkg-config
)

missing=()
for pkg in "${!PKGS[@]}"; do
  [ -e "${PKGS[$pkg]}" ] || missing+=("$pkg")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The etcd and frr packages start system services we do not use; the tests and the lab run
# their own instances on their own ports.
for svc in etcd frr bird; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi

# bpffs for BPF pins (usually mounted already).
if [ "$(id -u)" -eq 0 ] && ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
  mount -t bpf bpf /sys/fs/bpf || true
fi
