#!/usr/bin/env bash
# petrel's benchmark suite: petrel against a raw KVM floor measured in the same run, and
# virtio-blk throughput against the host's own dd (there is no floor for it: kvm-floor has no
# virtio device).
#
# Set-up (as in README.md):   cargo build --release && bash tests/guest/build.sh
# Run:                        bash bench/run.sh
# Environment:
#   BENCH_RUNS=15     timed runs of each case (at least 10), alternated between petrel and floor
#   PETREL=PATH       the petrel binary        (default target/release/petrel)
#   GUEST=PATH        the test guest ELF       (default tests/guest/target/.../petrel-test-guest)
#   FLOOD_COUNT=10000 serial bytes for the per-exit figure
#
# The virtio-blk case runs the test guest's blk-bench scenario (32 sequential 1 MiB reads, then
# 32 writes and a flush) on a 64 MiB sparse image in a temporary directory (removed at the end;
# put it elsewhere with TMPDIR), with --metrics for petrel's host time per request, and `dd`
# over the same 32 MiB of a page-cached file in the same rounds as the reference.
#
# Prints medians, min/max, petrel/floor ratios and the goals (PASS/MISS is informational: the
# script exits 0 whatever the figures). It fails loudly, with a non-zero status, when /dev/kvm,
# a binary, gcc, python3 or dd is missing, or when a run does not produce the expected output.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
petrel="${PETREL:-$root/target/release/petrel}"
guest="${GUEST:-$root/tests/guest/target/x86_64-unknown-linux-gnu/release/petrel-test-guest}"
runs="${BENCH_RUNS:-15}"
flood="${FLOOD_COUNT:-10000}"

fail() {
    echo "bench/run.sh: $*" >&2
    exit 1
}

[[ "$runs" =~ ^[0-9]+$ ]] && ((runs >= 10)) || fail "BENCH_RUNS must be a number >= 10 (got '$runs')"
[[ "$flood" =~ ^[0-9]+$ ]] && ((flood >= 1000 && flood <= 10000000)) ||
    fail "FLOOD_COUNT must be a number in 1000..=10000000 (got '$flood')"
[[ -e /dev/kvm ]] || fail "/dev/kvm does not exist: KVM is needed"
[[ -r /dev/kvm && -w /dev/kvm ]] || fail "/dev/kvm is not readable and writable by $(id -un)"
[[ -x "$petrel" ]] || fail "no petrel binary at $petrel (run: cargo build --release)"
[[ -f "$guest" ]] || fail "no test guest at $guest (run: bash tests/guest/build.sh)"
command -v gcc >/dev/null || fail "gcc is needed to build bench/kvm-floor.c"
command -v python3 >/dev/null || fail "python3 is needed for the measurements"
command -v dd >/dev/null || fail "dd is needed for the virtio-blk reference"

out="$root/target/bench"
mkdir -p "$out"
gcc -O2 -Wall -Wextra -Werror -pthread -o "$out/kvm-floor" "$root/bench/kvm-floor.c" ||
    fail "cannot build bench/kvm-floor.c"
# The launcher is static so that its own few pages, not a dynamic loader's, are the floor of
# the RSS it reports (see spawn-measure.c); without a static libc it is linked dynamically.
if ! gcc -O2 -Wall -Wextra -Werror -static -o "$out/spawn-measure" "$root/bench/spawn-measure.c" 2>/dev/null; then
    echo "bench/run.sh: no static libc; the launcher is dynamic (RSS figures below ~1 MiB are its own)" >&2
    gcc -O2 -Wall -Wextra -Werror -o "$out/spawn-measure" "$root/bench/spawn-measure.c" ||
        fail "cannot build bench/spawn-measure.c"
fi

cpu="$(LC_ALL=C awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
if [[ -d /sys/module/kvm_pvm ]]; then
    pvm="loaded (software nested virtualization: guest code runs in KVM's emulator)"
else
    pvm="not loaded"
fi
echo "machine:  $(nproc) CPUs, ${cpu:-unknown CPU}"
echo "kernel:   $(uname -sr)"
echo "kvm_pvm:  $pvm"
echo "clock:    $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null || echo unknown) clocksource"
echo "petrel:   $petrel ($(git -C "$root" describe --always --dirty 2>/dev/null || echo 'no git'))"
echo "runs:     $runs per case, alternated; serial flood of $flood bytes"
tmp="${TMPDIR:-/tmp}"
echo "blk:      image in $tmp ($(df -PT "$tmp" 2>/dev/null | awk 'NR == 2 { print $2 }' || echo '?') file system)"
echo

exec python3 "$root/bench/measure.py" \
    --petrel "$petrel" --guest "$guest" --floor "$out/kvm-floor" --launcher "$out/spawn-measure" \
    --runs "$runs" --flood "$flood" --workdir "$out"
