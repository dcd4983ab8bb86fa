#!/usr/bin/env bash
# Builds petrel's test guest (release) and prints the absolute path of the ELF as the last line
# of stdout. Idempotent: when nothing changed it only runs a no-op `cargo build` (~0.1 s).
#
# After each new build it checks the ELF: an ELF64 x86-64 executable whose PT_LOAD segments sit
# at 2 MiB with p_paddr == p_vaddr, and whose code has no instruction KVM's emulator cannot run
# (under PVM every guest instruction is emulated): SSE/AVX/MMX/x87 registers, popcnt/lzcnt/tzcnt,
# BMI, rdtscp, cmpxchg8b/16b, fwait, and int3 other than padding between functions.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

# Our codegen flags come from .cargo/config.toml; flags from the environment (e.g. a CI's
# RUSTFLAGS, or variables inherited from an outer `cargo test`) would replace them.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET CARGO_TARGET_DIR \
      CARGO_BUILD_TARGET_DIR CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS \
      CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER CARGO_PROFILE_RELEASE_PANIC RUSTC_WORKSPACE_WRAPPER

# rustc warns on every build that -sse2/+soft-float are "future-incompatible" for this target
# (expected, see README.md); show cargo's output only when the build fails.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
build() { cargo build --release --offline --locked --target x86_64-unknown-linux-gnu --target-dir "$here/target" >"$log" 2>&1; }
if ! build; then
    # The guest depends on virtio-drivers (and its dependencies, pinned by Cargo.lock). Offline
    # builds need them in cargo's cache: fetch them once (the only network use), then retry.
    if cargo fetch --locked --target x86_64-unknown-linux-gnu >>"$log" 2>&1 && build; then
        :
    else
        cat "$log" >&2
        echo "build.sh: cargo build failed" >&2
        exit 1
    fi
fi

elf="$here/target/x86_64-unknown-linux-gnu/release/petrel-test-guest"
stamp="$here/target/petrel-test-guest.checked"

check_elf() {
    local elf="$1" hdr
    hdr="$(LC_ALL=C readelf -h "$elf")"
    grep -q 'Class: *ELF64' <<<"$hdr" || { echo "build.sh: $elf is not ELF64" >&2; return 1; }
    grep -q 'Type: *EXEC' <<<"$hdr" || { echo "build.sh: $elf is not an executable" >&2; return 1; }
    grep -q 'Machine: *Advanced Micro Devices X86-64' <<<"$hdr" || { echo "build.sh: $elf is not x86-64" >&2; return 1; }

    # PT_LOAD: vaddr == paddr, inside [2 MiB, 1 GiB).
    LC_ALL=C readelf -lW "$elf" | awk '
        function hex(s,   i, c, v) { sub(/^0x/, "", s); v = 0
            for (i = 1; i <= length(s); i++) { c = index("0123456789abcdef", tolower(substr(s, i, 1))) - 1; v = v * 16 + c }
            return v }
        $1 == "LOAD" { n++
            if ($3 != $4) { print "build.sh: PT_LOAD vaddr " $3 " != paddr " $4 > "/dev/stderr"; bad = 1 }
            if (hex($4) < 2097152 || hex($4) + hex($6) > 1073741824) { print "build.sh: PT_LOAD at " $4 " outside [2 MiB, 1 GiB)" > "/dev/stderr"; bad = 1 } }
        END { if (n == 0) { print "build.sh: no PT_LOAD segment" > "/dev/stderr"; bad = 1 }; exit bad }'

    # Function ranges, so int3 can be told apart from inter-function padding.
    local ranges
    ranges="$(LC_ALL=C nm -S --defined-only "$elf" | awk 'NF == 4 && ($3 == "t" || $3 == "T") { print $1, $2 }')"
    LC_ALL=C objdump -d -M intel --no-show-raw-insn "$elf" | awk -v ranges="$ranges" '
        function hex(s,   i, c, v) { sub(/^0x/, "", s); v = 0
            for (i = 1; i <= length(s); i++) { c = index("0123456789abcdef", tolower(substr(s, i, 1))) - 1; v = v * 16 + c }
            return v }
        BEGIN { n = split(ranges, f, /[ \n]/)
            for (i = 1; i + 1 <= n; i += 2) { lo[i] = hex(f[i]); hi[i] = lo[i] + hex(f[i + 1]) } }
        function in_function(a,   i) { for (i in lo) if (a >= lo[i] && a < hi[i]) return 1; return 0 }
        /^ *[0-9a-f]+:\t/ {
            split($0, p, "\t"); a = p[1]; gsub(/[ :]/, "", a); addr = hex(a); insn = p[2]
            m = insn; sub(/ .*/, "", m)
            bad = ""
            if (insn ~ /[xyz]mm[0-9]|[^a-z]mm[0-7]([^0-9]|$)|st\([0-7]\)/) bad = "SSE/AVX/MMX/x87 register"
            else if (m ~ /^(popcnt|lzcnt|tzcnt|andn|bextr|blsi|blsmsk|blsr|bzhi|mulx|pdep|pext|rorx|sarx|shlx|shrx|rdtscp|cmpxchg8b|cmpxchg16b|fwait|wait|movbe|crc32|adcx|adox|rdseed|emms|\(bad\))$/) bad = "unsupported by the emulator"
            else if (m ~ /^f/ && m != "fs") bad = "x87"
            else if (m == "int3" && in_function(addr)) bad = "int3 inside a function"
            if (bad != "") { printf "build.sh: 0x%s: %s: %s\n", a, bad, insn > "/dev/stderr"; errors++ } }
        END { exit errors > 0 }'
}

if [[ ! -f "$stamp" || "$elf" -nt "$stamp" ]]; then
    if ! check_elf "$elf"; then
        echo "build.sh: $elf failed the instruction/segment check" >&2
        exit 1
    fi
    touch "$stamp"
fi

echo "$elf"
