#!/usr/bin/env bash
# virtio-net and virtio-vsock throughput, both directions, with petrel's test guest driving the
# devices through virtio-drivers and Python peers (bench/virtio_peer.py) on the host side.
#
# Set-up (as in README.md):   cargo build --release && bash tests/guest/build.sh
# Run (as root: it creates a network namespace, removed at the end):   bash bench/net-vsock.sh
# Environment:
#   NET_FRAMES=5000      frames per net direction
#   NET_PAYLOAD=1500     bytes after the Ethernet header (frames of NET_PAYLOAD + 14 bytes)
#   VSOCK_BYTES=4194304  bytes per vsock direction
#   PETREL=PATH, GUEST=PATH as for bench/run.sh
#
# Figures (guest-timed with the TSC, from the guest's first to last frame or byte):
#   net guest→host   frames/s and MB/s of net-bench-tx; the TAP's own rx counter must agree
#   net host→guest   frames/s and MB/s of net-rx while the host sends as fast as it can
#   vsock both ways  MB/s of vsock-bench (guest → a host Unix listener, host CONNECT → guest)
# Under PVM (nested, emulated guest ring 0) these measure the emulator more than petrel; on
# VMX/SVM hardware they measure petrel's device paths. The script exits non-zero when a run
# does not produce its figures.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
petrel="${PETREL:-$root/target/release/petrel}"
guest="${GUEST:-$root/tests/guest/target/x86_64-unknown-linux-gnu/release/petrel-test-guest}"
frames="${NET_FRAMES:-5000}"
payload="${NET_PAYLOAD:-1500}"
vbytes="${VSOCK_BYTES:-4194304}"
peer="$root/bench/virtio_peer.py"

fail() {
    echo "bench/net-vsock.sh: $*" >&2
    exit 1
}
[[ "$frames" =~ ^[0-9]+$ ]] && ((frames >= 1 && frames <= 1000000)) || fail "NET_FRAMES must be 1..=1000000"
[[ "$payload" =~ ^[0-9]+$ ]] && ((payload >= 10 && payload <= 1500)) || fail "NET_PAYLOAD must be 10..=1500"
[[ "$vbytes" =~ ^[0-9]+$ ]] && ((vbytes >= 1)) || fail "VSOCK_BYTES must be a positive number"
[[ -x "$petrel" ]] || fail "no petrel binary at $petrel (run: cargo build --release)"
[[ -f "$guest" ]] || fail "no test guest at $guest (run: bash tests/guest/build.sh)"
command -v ip >/dev/null || fail "ip (iproute2) is needed"
command -v python3 >/dev/null || fail "python3 is needed"
[[ $(id -u) == 0 ]] || fail "run as root (network namespace and TAP)"

ns="petrel-bench-$$"
tmp="$(mktemp -d)"
cleanup() {
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" tuntap add dev ptap0 mode tap
ip -n "$ns" addr add 10.0.2.1/24 dev ptap0
# Room for a whole burst in the TAP's queue: the emulated guest drains it slower than Python fills it.
ip -n "$ns" link set ptap0 txqueuelen $((frames + 1000)) up

tap_rx_packets() {
    ip -n "$ns" -s -j link show dev ptap0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["rx"]["packets"])'
}

# The value of key= in a line.
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

# Starts petrel in the namespace, output to $tmp/$1.out; waits for a line matching $2.
start_guest() {
    local name="$1" ready="$2"
    shift 2
    ip netns exec "$ns" "$petrel" run --kernel "$guest" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
    guest_pid=$!
    for _ in $(seq 600); do
        grep -q "$ready" "$tmp/$name.out" 2>/dev/null && return 0
        kill -0 "$guest_pid" 2>/dev/null || break
        sleep 0.1
    done
    cat "$tmp/$name.out" "$tmp/$name.err" >&2
    fail "$name: the guest never printed '$ready'"
}

rate() { python3 -c "import sys; n,b,us=map(float,sys.argv[1:]); print(f'{n/us*1e6:10.0f} frames/s {b/us:8.2f} MB/s')" "$@"; }
mbps() { python3 -c "import sys; b,us=map(float,sys.argv[1:]); print(f'{b/us:8.2f} MB/s')" "$@"; }

echo "petrel $("$petrel" --version 2>/dev/null | head -1), guest $guest"
echo "net: $frames frames of $((payload + 14)) bytes each way; vsock: $vbytes bytes each way"
echo

# 1. net guest → host
before=$(tap_rx_packets)
cmd=(run --kernel "$guest" --net tap=ptap0 --cmdline "petrel.scenario=net-bench-tx petrel.count=$frames petrel.bytes=$payload")
out=$(ip netns exec "$ns" "$petrel" "${cmd[@]}") || fail "net-bench-tx run failed"
after=$(tap_rx_packets)
line=$(grep '^NET tx-bench' <<<"$out") || fail "no 'NET tx-bench' line: $out"
n=$(field "$line" frames) b=$(field "$line" bytes) us=$(field "$line" us)
echo "net guest→host : $(rate "$n" "$b" "$us")   (TAP counted $((after - before)) of $n frames)"
echo "   command     : ip netns exec NS petrel ${cmd[*]}"
((after - before >= n)) || fail "the TAP saw $((after - before)) frames, the guest sent $n"

# 2. net host → guest
mac=02:b0:00:00:00:01
start_guest net-rx "NET ready" --net "tap=ptap0,mac=$mac" --cmdline "petrel.scenario=net-rx petrel.count=$frames"
ip netns exec "$ns" python3 "$peer" blast ptap0 "$mac" "$frames" "$payload" >"$tmp/blast.out"
wait "$guest_pid" || fail "net-rx run failed: $(cat "$tmp/net-rx.err")"
line=$(grep '^NET received' "$tmp/net-rx.out") || fail "no 'NET received' line"
n=$(field "$line" frames) b=$(field "$line" bytes) us=$(field "$line" us)
echo "net host→guest : $(rate "$n" "$b" "$us")   (guest got $n of $frames, bad=$(field "$line" bad); $(cat "$tmp/blast.out"))"
echo "   command     : petrel run --net tap=ptap0,mac=$mac --cmdline 'petrel.scenario=net-rx petrel.count=$frames' + virtio_peer.py blast"

# 3. vsock, guest → host then host → guest
sock="$tmp/v.sock"
python3 "$peer" vsock-sink "${sock}_5000" "$tmp/sink.count" &
sink_pid=$!
for _ in $(seq 100); do [[ -S "${sock}_5000" ]] && break; sleep 0.05; done
start_guest vsock "VSOCK listening" --vsock "cid=3,socket=$sock" --cmdline "petrel.scenario=vsock-bench petrel.bytes=$vbytes"
python3 "$peer" vsock-source "$sock" 6000 "$vbytes" >"$tmp/source.out"
wait "$guest_pid" || fail "vsock-bench run failed: $(cat "$tmp/vsock.err")"
wait "$sink_pid" || fail "the vsock sink failed"
tx=$(grep '^VSOCK bench-tx' "$tmp/vsock.out") || fail "no 'VSOCK bench-tx' line: $(cat "$tmp/vsock.out")"
rx=$(grep '^VSOCK bench-rx' "$tmp/vsock.out") || fail "no 'VSOCK bench-rx' line: $(cat "$tmp/vsock.out")"
read -r sunk sunk_s <"$tmp/sink.count"
sunk_us=$(python3 -c "import sys; print(float(sys.argv[1]) * 1e6)" "$sunk_s")
src_line=$(cat "$tmp/source.out")
src_us=$(python3 -c "import sys; print(float(sys.argv[1]) * 1e6)" "$(field "$src_line" s)")
echo "vsock guest→host: $(mbps "$(field "$tx" bytes)" "$(field "$tx" us)")   (host listener read $sunk bytes: $(mbps "$sunk" "$sunk_us") first to last byte, host-timed)"
echo "vsock host→guest: $(mbps "$(field "$rx" bytes)" "$(field "$rx" us)")   (host-timed, CONNECT to the guest's close: $(mbps "$(field "$src_line" bytes)" "$src_us"))"
echo "   command     : petrel run --vsock cid=3,socket=PATH --cmdline 'petrel.scenario=vsock-bench petrel.bytes=$vbytes' + virtio_peer.py vsock-sink/vsock-source"
[[ "$sunk" == "$(field "$tx" bytes)" ]] || fail "the host read $sunk bytes, the guest sent $(field "$tx" bytes)"
