#!/usr/bin/env bash
# fetch-guest-assets.sh — fetch and prepare the guest assets used by petrel's
# tier-2 end-to-end tests (real Debian kernels). Nothing binary is committed to
# the repository; this script produces everything from Debian's apt archive.
#
# Produces, in $PETREL_ASSETS_DIR (default: <repo>/assets, gitignored):
#   debian-cloud.bzImage   /boot/vmlinuz-* of Debian's cloud kernel (bzImage)
#   debian-cloud.vmlinux   the ELF64 x86-64 vmlinux decompressed from that bzImage
#   initramfs.cpio.gz      tiny busybox-static initramfs (prints "PETREL-INITRAMFS up",
#                          then powers off)
#   MANIFEST               package names/versions, sha256 + size of every file
#   cache/*.deb            the downloaded .deb packages
#
# Environment:
#   PETREL_ASSETS_DIR      output directory (default <repo>/assets)
#   PETREL_ASSETS_FORCE=1  rebuild even if the manifest says everything is up to date
#                          (also re-resolves the kernel package, i.e. picks up a newer kernel)
#   PETREL_KERNEL_PACKAGE  use this image package instead of resolving the metapackage
#                          (e.g. linux-image-6.1.0-48-cloud-amd64-unsigned)
#
# See docs/guest-assets.md. Must run as root when something has to be installed
# (apt-get install / apt-get update); apt-get download itself does not need root.

set -euo pipefail
export LC_ALL=C

# Bump when the recipe changes (initramfs content, manifest layout, ...): a
# manifest written by another recipe version is never considered up to date.
readonly RECIPE_VERSION=1
readonly KERNEL_META=linux-image-cloud-amd64
readonly BUSYBOX_PKG=busybox-static

START_NS=$(date +%s%N)
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
ASSETS_DIR=${PETREL_ASSETS_DIR:-$REPO_DIR/assets}
CACHE_DIR=$ASSETS_DIR/cache
MANIFEST=$ASSETS_DIR/MANIFEST
readonly PRODUCED_FILES=(debian-cloud.bzImage debian-cloud.vmlinux initramfs.cpio.gz)

log() { printf '[fetch-guest-assets] %s\n' "$*" >&2; }
die() { printf '[fetch-guest-assets] ERROR: %s\n' "$*" >&2; exit 1; }
on_err() { printf '[fetch-guest-assets] ERROR: unexpected failure (exit %d) at line %d: %s\n' "$1" "$2" "$3" >&2; }
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

elapsed() {
    local now
    now=$(date +%s%N)
    awk -v a="$START_NS" -v b="$now" 'BEGIN { printf "%.2fs", (b - a) / 1e9 }'
}

print_paths() {
    local f
    echo "Guest assets in $ASSETS_DIR:"
    for f in "${PRODUCED_FILES[@]}" MANIFEST; do
        printf '  %s\n' "$ASSETS_DIR/$f"
    done
}

# Value of KEY in the manifest (first '=' splits key and value).
manifest_get() { sed -n "s/^$(printf '%s' "$1" | sed 's/[.[\*^$/]/\\&/g')=//p" "$MANIFEST" | head -n1; }

manifest_up_to_date() {
    [ -f "$MANIFEST" ] || return 1
    [ "$(manifest_get recipe_version)" = "$RECIPE_VERSION" ] || return 1
    local f want got
    for f in "${PRODUCED_FILES[@]}"; do
        [ -f "$ASSETS_DIR/$f" ] || return 1
        want=$(manifest_get "file.$f.sha256")
        [ -n "$want" ] || return 1
        got=$(sha256sum "$ASSETS_DIR/$f" | cut -d' ' -f1)
        [ "$want" = "$got" ] || { log "$f does not match the manifest; rebuilding"; return 1; }
    done
    return 0
}

# -------------------------------------------------------------- apt helpers --
APT_UPDATED=0
apt_update_once() {
    [ "$APT_UPDATED" = 1 ] && return 0
    [ "$(id -u)" = 0 ] || die "apt-get update needed but not running as root"
    log "running apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed (is Debian's apt archive reachable?)"
    APT_UPDATED=1
}

# need_tool COMMAND PACKAGE: install PACKAGE if COMMAND is missing.
need_tool() {
    command -v "$1" >/dev/null 2>&1 && return 0
    [ "$(id -u)" = 0 ] || die "'$1' is missing; install package '$2' (or run this script as root)"
    log "installing $2 (for $1)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >&2; then
        apt_update_once
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >&2 \
            || die "apt-get install $2 failed"
    fi
    command -v "$1" >/dev/null 2>&1 || die "'$1' still missing after installing $2"
}

APT_OPTS=()
# apt-get download as root otherwise warns that the _apt sandbox user cannot write here.
[ "$(id -u)" = 0 ] && APT_OPTS+=(-o APT::Sandbox::User=root)

# Candidate version of a package according to the local apt lists (empty if unknown).
candidate_version() {
    apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -v '^(none)$' | head -n1 || true
}

# The real image package behind the metapackage (linux-image-<abi>-cloud-amd64[-unsigned]).
resolve_kernel_package() {
    if [ -n "${PETREL_KERNEL_PACKAGE:-}" ]; then
        printf '%s\n' "$PETREL_KERNEL_PACKAGE"
        return 0
    fi
    apt-cache depends "$KERNEL_META" 2>/dev/null \
        | sed -n 's/^ *|\{0,1\}Depends: *\(linux-image-[0-9][^ ]*-cloud-amd64\(-unsigned\)\{0,1\}\) *$/\1/p' \
        | head -n1 || true
}

# download_deb PKG: downloads PKG's candidate into $CACHE_DIR (reusing a cached
# file whose sha256 matches the archive's), prints the .deb path.
download_deb() {
    local pkg=$1 line file want empty
    # --print-uris prints nothing for a file that already exists in the current
    # directory, so ask from an empty one.
    empty=$(mktemp -d)
    line=$(cd "$empty" && apt-get "${APT_OPTS[@]}" download --print-uris "$pkg" 2>/dev/null | head -n1) || true
    rmdir "$empty"
    [ -n "$line" ] || return 1
    # 'URI' FILENAME SIZE SHA256:HEX
    file=$(printf '%s\n' "$line" | awk '{print $2}')
    want=$(printf '%s\n' "$line" | sed -n 's/.*SHA256:\([0-9a-f]\{64\}\).*/\1/p')
    if [ -f "$CACHE_DIR/$file" ] && [ -n "$want" ] \
        && [ "$(sha256sum "$CACHE_DIR/$file" | cut -d' ' -f1)" = "$want" ]; then
        log "using cached $file"
    else
        rm -f "$CACHE_DIR/$file"
        log "downloading $pkg"
        (cd "$CACHE_DIR" && apt-get "${APT_OPTS[@]}" download "$pkg" >&2) || return 1
        [ -f "$CACHE_DIR/$file" ] || return 1
        if [ -n "$want" ] && [ "$(sha256sum "$CACHE_DIR/$file" | cut -d' ' -f1)" != "$want" ]; then
            rm -f "$CACHE_DIR/$file"
            die "$file: sha256 mismatch against the apt archive index"
        fi
    fi
    printf '%s\n' "$CACHE_DIR/$file"
}

# Resolve + download everything; sets KERNEL_PKG KERNEL_VER KERNEL_DEB META_VER BUSYBOX_VER BUSYBOX_DEB.
resolve_and_download() {
    KERNEL_PKG=$(resolve_kernel_package)
    [ -n "$KERNEL_PKG" ] || { log "cannot resolve $KERNEL_META with apt-cache depends"; return 1; }
    META_VER=$(candidate_version "$KERNEL_META")
    KERNEL_VER=$(candidate_version "$KERNEL_PKG")
    [ -n "$KERNEL_VER" ] || { log "package $KERNEL_PKG is unknown to apt"; return 1; }
    BUSYBOX_VER=$(candidate_version "$BUSYBOX_PKG")
    [ -n "$BUSYBOX_VER" ] || { log "package $BUSYBOX_PKG is unknown to apt"; return 1; }
    log "kernel: $KERNEL_META ${META_VER:-?} -> $KERNEL_PKG $KERNEL_VER; busybox: $BUSYBOX_PKG $BUSYBOX_VER"
    KERNEL_DEB=$(download_deb "$KERNEL_PKG") || { log "apt-get download $KERNEL_PKG failed"; return 1; }
    BUSYBOX_DEB=$(download_deb "$BUSYBOX_PKG") || { log "apt-get download $BUSYBOX_PKG failed"; return 1; }
    # Drop superseded .debs (older kernels, older busybox) from the cache.
    local old
    for old in "$CACHE_DIR"/*.deb; do
        if [ -e "$old" ] && [ "$old" != "$KERNEL_DEB" ] && [ "$old" != "$BUSYBOX_DEB" ]; then
            log "removing superseded $(basename "$old")"
            rm -f "$old"
        fi
    done
}

# ------------------------------------------------- vmlinux extraction --
# Little-endian unsigned integer of WIDTH bytes at OFFSET in FILE; hex bytes.
read_le() { od -An -t "u$3" -j "$2" -N "$3" "$1" | tr -d ' \n'; }
hex_at() { od -An -tx1 -j "$2" -N "$3" "$1" | tr -d ' \n'; }

# Same idea as Linux's scripts/extract-vmlinux: the bzImage's protected-mode part
# carries the compressed vmlinux. Candidates are (a) the exact payload named by the
# boot-protocol header (payload_offset/payload_length, protocol >= 2.08) and (b)
# every occurrence of a compressor's magic bytes; each is decompressed until the
# output is an ELF.
readonly FORMAT_ORDER=(gzip xz zstd lz4 bzip2 lzma lzo)
declare -A MAGIC_HEX=(
    [gzip]=1f8b08 [xz]=fd377a585a00 [zstd]=28b52ffd [lz4]=02214c18
    [bzip2]=425a68 [lzma]=5d000000 [lzo]=894c5a4f
)
readonly SCAN_MAX_PER_FORMAT=64

tool_for_format() {
    case $1 in
        gzip) need_tool gzip gzip ;;
        xz | lzma) need_tool xz xz-utils ;;
        zstd) need_tool zstd zstd ;;
        lz4) need_tool lz4 lz4 ;;
        bzip2) need_tool bzip2 bzip2 ;;
        lzo) need_tool lzop lzop ;;
    esac
}

# decompress FORMAT: stdin -> stdout. Trailing data (the kernel appends the
# uncompressed size, signed images carry a signature) may make the tool exit
# non-zero; the caller judges the output, not the exit status.
decompress() {
    case $1 in
        gzip) gzip -dc ;;
        xz) xz -dc --single-stream ;;
        lzma) xz -dc --format=lzma ;;
        zstd) zstd -dcq ;;
        lz4) lz4 -dc ;;
        bzip2) bzip2 -dc ;;
        lzo) lzop -dc ;;
    esac
}

# is_complete_elf FILE: ELF magic, readelf can parse it, and the file is not
# truncated (the section header table, which ld puts last, is fully present).
is_complete_elf() {
    local hdr shoff shnum shentsize
    [ -s "$1" ] && [ "$(hex_at "$1" 0 4)" = 7f454c46 ] || return 1
    hdr=$(readelf -h "$1" 2>/dev/null) || return 1
    shoff=$(sed -n 's/^ *Start of section headers: *\([0-9]*\).*/\1/p' <<<"$hdr")
    shnum=$(sed -n 's/^ *Number of section headers: *\([0-9]*\).*/\1/p' <<<"$hdr")
    shentsize=$(sed -n 's/^ *Size of section headers: *\([0-9]*\).*/\1/p' <<<"$hdr")
    [ -n "$shoff" ] && [ -n "$shnum" ] && [ -n "$shentsize" ] || return 1
    [ $((shoff + shnum * shentsize)) -le "$(stat -c %s "$1")" ]
}

# try_candidate IMAGE OUT FORMAT OFFSET [LENGTH]: returns 0 if OUT is now an ELF.
try_candidate() {
    local img=$1 out=$2 fmt=$3 off=$4 len=${5:-}
    tool_for_format "$fmt"
    if [ -n "$len" ]; then
        { tail -c +$((off + 1)) "$img" | head -c "$len" | decompress "$fmt" >"$out"; } 2>/dev/null || true
    else
        { tail -c +$((off + 1)) "$img" | decompress "$fmt" >"$out"; } 2>/dev/null || true
    fi
    is_complete_elf "$out"
}

# Byte offsets of FORMAT's magic in IMAGE (at most SCAN_MAX_PER_FORMAT).
magic_offsets() {
    local pat
    # shellcheck disable=SC2001
    pat=$(sed 's/../\\x&/g' <<<"${MAGIC_HEX[$2]}")  # 1f8b08 -> \x1f\x8b\x08
    { grep -obUaP "$pat" "$1" 2>/dev/null || true; } | head -n "$SCAN_MAX_PER_FORMAT" | cut -d: -f1
}

# extract_vmlinux IMAGE OUT: sets VMLINUX_FORMAT and VMLINUX_OFFSET; returns 1 if
# no candidate decompresses to an ELF.
extract_vmlinux() {
    local img=$1 out=$2 fmt off len m setup_sects proto
    VMLINUX_FORMAT='' VMLINUX_OFFSET=''
    # (a) boot-protocol header.
    if [ "$(hex_at "$img" $((0x202)) 4)" = 48647253 ]; then
        proto=$(read_le "$img" $((0x206)) 2)
        if [ "$proto" -ge $((0x208)) ]; then
            setup_sects=$(read_le "$img" $((0x1f1)) 1)
            [ "$setup_sects" != 0 ] || setup_sects=4
            off=$(( (setup_sects + 1) * 512 + $(read_le "$img" $((0x248)) 4) ))
            len=$(read_le "$img" $((0x24c)) 4)
            for fmt in "${FORMAT_ORDER[@]}"; do
                m=${MAGIC_HEX[$fmt]}
                [ "$(hex_at "$img" "$off" $(( ${#m} / 2 )))" = "$m" ] || continue
                log "boot header: $fmt payload at offset $off, $len bytes"
                if try_candidate "$img" "$out" "$fmt" "$off" "$len"; then
                    VMLINUX_FORMAT=$fmt VMLINUX_OFFSET=$off
                    # The kernel build appends the uncompressed size (le32) to the payload.
                    m=$(read_le "$img" $((off + len - 4)) 4)
                    [ "$m" = "$(stat -c %s "$out")" ] \
                        || log "warning: payload trailer says $m bytes, got $(stat -c %s "$out")"
                    return 0
                fi
                break
            done
        fi
    fi
    # (b) magic scan, like scripts/extract-vmlinux.
    log "scanning $(basename "$img") for compressed-payload magics"
    for fmt in "${FORMAT_ORDER[@]}"; do
        while read -r off; do
            [ -n "$off" ] || continue
            if try_candidate "$img" "$out" "$fmt" "$off"; then
                VMLINUX_FORMAT=$fmt VMLINUX_OFFSET=$off
                log "found $fmt payload at offset $off"
                return 0
            fi
        done < <(magic_offsets "$img" "$fmt")
    done
    rm -f "$out"
    return 1
}

# ------------------------------------------------------------- modes --
if [ "${1:-}" = --extract-vmlinux ]; then
    # Standalone use: fetch-guest-assets.sh --extract-vmlinux BZIMAGE OUT
    [ $# = 3 ] || die "usage: $0 --extract-vmlinux BZIMAGE OUT"
    need_tool od coreutils
    need_tool readelf binutils
    extract_vmlinux "$2" "$3" || die "no compressed ELF vmlinux found in $2"
    echo "$3: $VMLINUX_FORMAT payload at offset $VMLINUX_OFFSET, entry $(readelf -h "$3" | sed -n 's/^ *Entry point address: *//p')"
    exit 0
elif [ $# != 0 ]; then
    die "usage: $0 [--extract-vmlinux BZIMAGE OUT]   (env: PETREL_ASSETS_DIR, PETREL_ASSETS_FORCE, PETREL_KERNEL_PACKAGE)"
fi

# ---------------------------------------------------------------- fast path --
mkdir -p "$ASSETS_DIR" || die "cannot create $ASSETS_DIR"
exec 9>"$ASSETS_DIR/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9 || die "cannot lock $ASSETS_DIR/.lock"
fi

if [ "${PETREL_ASSETS_FORCE:-0}" != 1 ] && manifest_up_to_date; then
    echo "assets up to date ($(manifest_get kernel.package) $(manifest_get kernel.version), $(elapsed))"
    print_paths
    exit 0
fi

# ------------------------------------------------------------ 1. download --
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    die "this script needs a Debian-based system (apt-get, dpkg-deb)"
fi
need_tool sha256sum coreutils
need_tool od coreutils
need_tool readelf binutils
need_tool gzip gzip

mkdir -p "$CACHE_DIR"

if ! resolve_and_download; then
    log "retrying after apt-get update"
    apt_update_once
    resolve_and_download || die "could not resolve/download ${KERNEL_PKG:-$KERNEL_META} and $BUSYBOX_PKG from the apt archive (see above)"
fi

WORK=$(mktemp -d "$ASSETS_DIR/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------- 2. extract bzImage --
log "extracting $(basename "$KERNEL_DEB")"
mkdir -p "$WORK/kernel"
dpkg-deb -x "$KERNEL_DEB" "$WORK/kernel" || die "dpkg-deb -x $KERNEL_DEB failed"
shopt -s nullglob
vmlinuz=("$WORK"/kernel/boot/vmlinuz-*)
configs=("$WORK"/kernel/boot/config-*)
shopt -u nullglob
[ "${#vmlinuz[@]}" = 1 ] || die "expected exactly one /boot/vmlinuz-* in $KERNEL_DEB, found ${#vmlinuz[@]}"
BZIMAGE=$WORK/debian-cloud.bzImage
cp "${vmlinuz[0]}" "$BZIMAGE"
KERNEL_RELEASE=${vmlinuz[0]##*/vmlinuz-}
KCONFIG=${configs[0]:-}

[ "$(hex_at "$BZIMAGE" $((0x202)) 4)" = 48647253 ] || die "$(basename "${vmlinuz[0]}") is not a bzImage (no HdrS)"
BOOT_PROTO=$(read_le "$BZIMAGE" $((0x206)) 2)
BOOT_PROTO_STR=$(printf '%d.%02d' $((BOOT_PROTO >> 8)) $((BOOT_PROTO & 0xff)))

# ------------------------------------------------ 3. extract ELF vmlinux --
VMLINUX=$WORK/debian-cloud.vmlinux
extract_vmlinux "$BZIMAGE" "$VMLINUX" || die "no compressed ELF vmlinux found in $(basename "${vmlinuz[0]}")"

ELF_HDR=$(readelf -h "$VMLINUX") || die "readelf -h failed on the extracted vmlinux"
grep -Eq '^ *Class: *ELF64$' <<<"$ELF_HDR" || die "extracted vmlinux is not ELF64"
grep -Eq '^ *Machine: *Advanced Micro Devices X86-64$' <<<"$ELF_HDR" || die "extracted vmlinux is not x86-64"
ELF_ENTRY=$(sed -n 's/^ *Entry point address: *//p' <<<"$ELF_HDR")
[ -n "$ELF_ENTRY" ] || die "no entry point in the extracted vmlinux"
# vmlinux holds two banners: init/version.c's weak placeholder ("# SMP ...") and
# init/version-timestamp.c's real one ("#1 SMP ..."), which is what the kernel prints.
banners=$(grep -ao 'Linux version [[:print:]]*' "$VMLINUX" || true)
KERNEL_BANNER=$(grep -m1 ' #[0-9][0-9]* ' <<<"$banners" || head -n1 <<<"$banners")
log "vmlinux: $VMLINUX_FORMAT payload at offset $VMLINUX_OFFSET; ELF64 x86-64, entry point $ELF_ENTRY"

# Cross-check against the kernel config shipped in the package.
KCONFIG_KEYS=(CONFIG_KERNEL_GZIP CONFIG_KERNEL_XZ CONFIG_KERNEL_ZSTD CONFIG_KERNEL_LZ4 CONFIG_KERNEL_LZMA
              CONFIG_KERNEL_BZIP2 CONFIG_KERNEL_LZO CONFIG_RD_GZIP CONFIG_PVH CONFIG_RELOCATABLE
              CONFIG_RANDOMIZE_BASE CONFIG_PHYSICAL_START CONFIG_SERIAL_8250_CONSOLE CONFIG_VIRTIO_MMIO
              CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES CONFIG_ACPI)
if [ -n "$KCONFIG" ]; then
    want_cfg=CONFIG_KERNEL_$(printf '%s' "$VMLINUX_FORMAT" | tr '[:lower:]' '[:upper:]')
    grep -qx "$want_cfg=y" "$KCONFIG" || log "warning: detected $VMLINUX_FORMAT but $want_cfg is not set in $(basename "$KCONFIG")"
    grep -qx 'CONFIG_RD_GZIP=y' "$KCONFIG" || die "kernel lacks CONFIG_RD_GZIP=y; a gzip initramfs would not work"
fi

# ------------------------------------------------------ 4. build initramfs --
log "extracting $(basename "$BUSYBOX_DEB")"
mkdir -p "$WORK/busybox"
dpkg-deb -x "$BUSYBOX_DEB" "$WORK/busybox" || die "dpkg-deb -x $BUSYBOX_DEB failed"
BUSYBOX_BIN=
for cand in "$WORK/busybox/bin/busybox" "$WORK/busybox/usr/bin/busybox"; do
    [ -f "$cand" ] && { BUSYBOX_BIN=$cand; break; }
done
[ -n "$BUSYBOX_BIN" ] || die "no busybox binary in $BUSYBOX_DEB"
file_hdr=$(readelf -h "$BUSYBOX_BIN" 2>/dev/null) || die "busybox is not an ELF binary"
grep -q 'X86-64' <<<"$file_hdr" || die "busybox is not x86-64"
prog_hdrs=$(readelf -lW "$BUSYBOX_BIN" 2>/dev/null) || die "readelf -l failed on busybox"
if grep -q 'INTERP' <<<"$prog_hdrs"; then die "busybox is not statically linked"; fi

cat >"$WORK/init" <<'EOF'
#!/bin/sh
# petrel test initramfs (generated by scripts/fetch-guest-assets.sh)
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "PETREL-INITRAMFS up"
echo "PETREL-INITRAMFS kernel $(/bin/busybox uname -r)"
echo "PETREL-INITRAMFS cmdline $(/bin/busybox cat /proc/cmdline)"
echo "PETREL-INITRAMFS poweroff"
/bin/busybox poweroff -f
# Not reached. If the platform cannot power off (no ACPI), reboot(2) makes init
# exit and the kernel panics ("Attempted to kill init"); boot with panic=-1 to
# turn that into a reboot.
EOF

# Minimal deterministic "newc" cpio writer (no root needed for device nodes,
# fixed mtime/owner so the archive is byte-for-byte reproducible).
CPIO=$WORK/initramfs.cpio
CPIO_INO=300000
: >"$CPIO"
cpio_pad() { # pad the archive to a multiple of $1 bytes
    local size pad
    size=$(stat -c %s "$CPIO")
    pad=$(( ($1 - size % $1) % $1 ))
    [ "$pad" = 0 ] || head -c "$pad" /dev/zero >>"$CPIO"
}
# cpio_entry NAME MODE(octal) RDEVMAJOR RDEVMINOR [DATAFILE | -s STRING]
cpio_entry() {
    local name=$1 mode=$((8#$2)) rmaj=$3 rmin=$4 size=0 nlink=1 src=${5:-} str=
    if [ "$src" = -s ]; then str=$6; size=${#str}; src=; fi
    [ -n "$src" ] && size=$(stat -c %s "$src")
    [ $((mode & 8#170000)) = $((8#040000)) ] && nlink=2
    CPIO_INO=$((CPIO_INO + 1))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$CPIO_INO" "$mode" 0 0 "$nlink" 0 "$size" 0 0 "$rmaj" "$rmin" $(( ${#name} + 1 )) 0 >>"$CPIO"
    printf '%s\0' "$name" >>"$CPIO"
    cpio_pad 4
    if [ -n "$src" ]; then cat "$src" >>"$CPIO"; elif [ -n "$str" ]; then printf '%s' "$str" >>"$CPIO"; fi
    cpio_pad 4
}
for d in bin sbin dev proc sys tmp root usr usr/bin usr/sbin; do
    cpio_entry "$d" 040755 0 0
done
cpio_entry dev/console 020600 5 1
cpio_entry dev/null 020666 1 3
cpio_entry bin/busybox 100755 0 0 "$BUSYBOX_BIN"
for applet in sh mount umount echo cat ls mkdir sleep uname dmesg poweroff reboot halt; do
    cpio_entry "bin/$applet" 120777 0 0 -s busybox
done
cpio_entry init 100755 0 0 "$WORK/init"
cpio_entry TRAILER!!! 0 0 0
cpio_pad 512
# Sanity check: busybox's own cpio must list it.
cpio_list=$("$BUSYBOX_BIN" cpio -t <"$CPIO" 2>/dev/null) || die "generated cpio archive is not readable"
grep -qx init <<<"$cpio_list" || die "generated cpio archive lacks /init"
gzip -9 -n -c "$CPIO" >"$WORK/initramfs.cpio.gz"

# ----------------------------------------------------- 5. install + manifest --
rm -f "$MANIFEST"   # an interrupted install must never look up to date
for f in "${PRODUCED_FILES[@]}"; do
    mv -f "$WORK/$f" "$ASSETS_DIR/$f"
done

{
    echo "# petrel guest assets - generated by scripts/fetch-guest-assets.sh; do not edit."
    echo "# Format: key=value (split at the first '='). Regenerate: PETREL_ASSETS_FORCE=1 scripts/fetch-guest-assets.sh"
    echo "recipe_version=$RECIPE_VERSION"
    echo "generated=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host=$(. /etc/os-release 2>/dev/null; echo "${ID:-unknown}-${VERSION_CODENAME:-${VERSION_ID:-unknown}}")"
    echo "kernel.meta_package=$KERNEL_META"
    echo "kernel.meta_version=${META_VER:-}"
    echo "kernel.package=$KERNEL_PKG"
    echo "kernel.version=$KERNEL_VER"
    echo "kernel.release=$KERNEL_RELEASE"
    echo "kernel.banner=$KERNEL_BANNER"
    echo "kernel.deb=$(basename "$KERNEL_DEB")"
    echo "kernel.deb.sha256=$(sha256sum "$KERNEL_DEB" | cut -d' ' -f1)"
    echo "kernel.boot_protocol=$BOOT_PROTO_STR"
    echo "kernel.vmlinux.compression=$VMLINUX_FORMAT"
    echo "kernel.vmlinux.payload_offset=$VMLINUX_OFFSET"
    echo "kernel.vmlinux.entry=$ELF_ENTRY"
    if [ -n "$KCONFIG" ]; then
        for k in "${KCONFIG_KEYS[@]}"; do
            v=$(sed -n "s/^$k=//p" "$KCONFIG" | head -n1)
            [ -n "$v" ] || v=n
            echo "kernel.config.$k=$v"
        done
    fi
    echo "busybox.package=$BUSYBOX_PKG"
    echo "busybox.version=$BUSYBOX_VER"
    echo "busybox.deb=$(basename "$BUSYBOX_DEB")"
    echo "busybox.deb.sha256=$(sha256sum "$BUSYBOX_DEB" | cut -d' ' -f1)"
    for f in "${PRODUCED_FILES[@]}"; do
        echo "file.$f.sha256=$(sha256sum "$ASSETS_DIR/$f" | cut -d' ' -f1)"
        echo "file.$f.size=$(stat -c %s "$ASSETS_DIR/$f")"
    done
} >"$WORK/MANIFEST"
mv -f "$WORK/MANIFEST" "$MANIFEST"

echo "assets ready: $KERNEL_PKG $KERNEL_VER ($VMLINUX_FORMAT-compressed vmlinux, entry $ELF_ENTRY)," \
     "$BUSYBOX_PKG $BUSYBOX_VER ($(elapsed))"
print_paths
