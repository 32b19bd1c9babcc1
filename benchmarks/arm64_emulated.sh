#!/usr/bin/env bash
# A real ARM64 run of the device side (issue 16): edgetl-device on Debian bookworm arm64,
# emulated with qemu-user-static, against the same bundle and images as on this x86 host.
#
#   benchmarks/arm64_emulated.sh [WORK]        # WORK defaults to /tmp/edgetl-arm64
#   make arm64-emulated                        # the same
#
# Needs root (or sudo) for apt-get, binfmt_misc, mmdebstrap and chroot, and network access to
# Debian's mirror and PyPI. Idempotent: a re-run reuses WORK/rootfs, the venv inside it, the
# host run and the bundle, and repeats the x86 and aarch64 device runs on fresh bundle copies.
#   1. installs qemu-user-static, binfmt-support and mmdebstrap if missing, registers qemu-aarch64;
#   2. builds a bookworm arm64 root filesystem with mmdebstrap (WORK/rootfs);
#   3. builds edgetl's wheel from this working tree, makes the hymenoptera rpi5 INT8 bundle
#      if WORK/h-rpi5 is missing, and stages the bundle and images;
#   4. inside the rootfs: a venv with `pip install edgetl-*.whl[tflite]` (aarch64 wheels of
#      numpy, Pillow and ai-edge-litert from PyPI);
#   5. runs evaluate, predict, add-class, retrain, evaluate again and heads on x86 (this host's
#      .venv) and on aarch64, each on its own copy of the bundle, and prints a summary table.
# Emulated timings are not latencies: the summary reports accuracy and exit codes only.
# Environment: EDGETL_DATA (hymenoptera_data), EDGETL_HOST_BIN (host venv bin), DEBIAN_MIRROR.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mkdir -p "${1:-/tmp/edgetl-arm64}" && cd "${1:-/tmp/edgetl-arm64}" && pwd)
DATA=${EDGETL_DATA:-$(cd "$REPO/.." && pwd)/shared/data/hymenoptera_data}
HAND=$REPO/tests/data/sign-digits-demo/3
HOST_BIN=${EDGETL_HOST_BIN:-$REPO/.venv/bin}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The emulated core: cortex-a76 is the Raspberry Pi 5's (dotprod, fp16); cortex-a72 is the Pi 4's.
QEMU_CPU=${EDGETL_QEMU_CPU:-cortex-a76}
ROOTFS=$WORK/rootfs
STAGE=$WORK/stage
T0=$(date +%s)

say() { printf '\n== %s (%ds)\n' "$*" "$(( $(date +%s) - T0 ))"; }
die() { echo "arm64_emulated.sh: $*" >&2; exit 1; }
SUDO=
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "needs root (apt-get, mount, chroot): run as root or install sudo"
    SUDO=sudo
fi

[ -d "$DATA/train" ] && [ -d "$DATA/val" ] || die "no hymenoptera data at '$DATA' (set EDGETL_DATA)"
[ -d "$HAND" ] || die "no hand images at '$HAND'"
[ -x "$HOST_BIN/edgetl" ] || die "no host install at '$HOST_BIN' (run 'make test' or set EDGETL_HOST_BIN)"

# ---- 1. qemu-user-static + binfmt_misc + mmdebstrap -------------------------------------------
say "1. qemu-user-static, binfmt-support, mmdebstrap"
if ! command -v qemu-aarch64-static >/dev/null || ! command -v mmdebstrap >/dev/null \
        || ! command -v update-binfmts >/dev/null; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support mmdebstrap
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
        || die "cannot mount binfmt_misc (a container without privileges?): qemu cannot run aarch64 programs"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    $SUDO update-binfmts --enable qemu-aarch64 \
        || $SUDO update-binfmts --import qemu-aarch64 \
        || die "cannot register qemu-aarch64 with binfmt_misc"
fi
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "binfmt entry qemu-aarch64 is disabled"
qemu-aarch64-static --version | sed -n 1p

# ---- 2. bookworm arm64 root filesystem --------------------------------------------------------
say "2. Debian bookworm arm64 root filesystem ($ROOTFS)"
if [ ! -f "$ROOTFS/.edgetl-rootfs-ok" ]; then
    $SUDO rm -rf "$ROOTFS"
    # minbase + what a board needs to make a venv and pip-install wheels; no Recommends.
    $SUDO mmdebstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates \
        --aptopt='APT::Install-Recommends "false"' \
        bookworm "$ROOTFS" "$MIRROR"
    $SUDO touch "$ROOTFS/.edgetl-rootfs-ok"
else
    echo "reusing $ROOTFS"
fi
# F flag entries need no interpreter inside; copy it anyway for kernels/setups without it.
$SUDO install -m 0755 "$(command -v qemu-aarch64-static)" "$ROOTFS/usr/bin/qemu-aarch64-static"
$SUDO cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# Local CAs of this host (a TLS-intercepting proxy, a company CA) go into the rootfs's trust store.
LOCAL_CAS=$(find /usr/local/share/ca-certificates -maxdepth 1 -name '*.crt' 2>/dev/null | LC_ALL=C sort || true)

MOUNTED=()
cleanup() {
    local i
    for (( i=${#MOUNTED[@]}-1; i>=0; i-- )); do $SUDO umount -l "${MOUNTED[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
for m in proc dev sys; do
    if ! mountpoint -q "$ROOTFS/$m"; then
        case $m in
            proc) $SUDO mount -t proc proc "$ROOTFS/proc" ;;
            dev) $SUDO mount --bind /dev "$ROOTFS/dev" ;;
            sys) $SUDO mount --bind /sys "$ROOTFS/sys" ;;
        esac
        MOUNTED+=("$ROOTFS/$m")
    fi
done
# qemu-user 7.2 (bookworm) passes the host's x86 /proc/cpuinfo through to the guest, and the
# cpuinfo library inside LiteRT's XNNPACK delegate segfaults on it (Interpreter() dies with
# SIGSEGV; without the default delegates it loads). A board has an arm64 /proc/cpuinfo: give
# the guest one for the emulated core, one entry per host CPU (newer qemu, 8.x, fakes it itself).
case $QEMU_CPU in
    cortex-a76) CPU_LINE='fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp'
                CPU_ID=(0x41 0x4 0xd0b 1) ;;
    cortex-a72) CPU_LINE='fp asimd evtstrm crc32 cpuid'
                CPU_ID=(0x41 0x0 0xd08 3) ;;
    *) die "EDGETL_QEMU_CPU: cortex-a76 (Raspberry Pi 5) or cortex-a72 (Pi 4), not '$QEMU_CPU'" ;;
esac
if ! grep -q '^CPU implementer' "$ROOTFS/proc/cpuinfo"; then
    for (( i=0; i<$(nproc --all); i++ )); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: %s\n' "$i" "$CPU_LINE" "${CPU_ID[0]}"
        printf 'CPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' "${CPU_ID[@]:1}"
    done > "$WORK/cpuinfo.$QEMU_CPU"
    $SUDO mount --bind "$WORK/cpuinfo.$QEMU_CPU" "$ROOTFS/proc/cpuinfo"
    MOUNTED+=("$ROOTFS/proc/cpuinfo")
fi
in_rootfs() {
    # pip trusts its own certifi bundle unless told: point it at the system's.
    $SUDO chroot "$ROOTFS" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb COLUMNS=120 \
        PIP_CERT=/etc/ssl/certs/ca-certificates.crt QEMU_CPU="$QEMU_CPU" \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}
ARCH_IN=$(in_rootfs uname -m)
[ "$ARCH_IN" = aarch64 ] || die "uname -m in the rootfs says '$ARCH_IN', not aarch64"
echo "uname -m inside: $ARCH_IN"
CA_CHANGED=
for ca in $LOCAL_CAS; do
    if ! cmp -s "$ca" "$ROOTFS/usr/local/share/ca-certificates/$(basename "$ca")"; then
        $SUDO cp "$ca" "$ROOTFS/usr/local/share/ca-certificates/"
        CA_CHANGED=1
    fi
done
if [ -n "$CA_CHANGED" ]; then
    echo "adding this host's local CA certificates to the rootfs (emulated openssl: a minute or two)"
    in_rootfs update-ca-certificates 2>&1 | grep -v 'rehash: warning: skipping ca-certificates.crt' || true
fi

# ---- 3. wheel, bundle, staged images ----------------------------------------------------------
say "3. edgetl wheel, bundle and images"
SRC=$WORK/src
rm -rf "$SRC" "$WORK/wheel" && mkdir -p "$SRC" "$WORK/wheel"
# Build from a copy of the working tree (tracked + untracked, not ignored) so the build writes
# nothing (build/, *.egg-info) into the repository.
if git -C "$REPO" rev-parse >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -z -co --exclude-standard -- pyproject.toml README.md edgetl \
        | tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$SRC"
else
    (cd "$REPO" && tar --exclude=__pycache__ -cf - pyproject.toml README.md edgetl) | tar -xf - -C "$SRC"
fi
"$HOST_BIN/python" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/wheel" "$SRC"
WHEEL=$(ls "$WORK"/wheel/edgetl-*.whl)
echo "wheel: $WHEEL"

if [ ! -f "$WORK/h-rpi5/manifest.json" ]; then
    if [ ! -f "$WORK/h-run/model.pt" ]; then
        "$HOST_BIN/edgetl" finetune "$DATA" --strategy linear --out "$WORK/h-run"
    fi
    "$HOST_BIN/edgetl" export "$WORK/h-run" --target rpi5 --precision int8 --out "$WORK/h-rpi5" \
        --allow-accuracy-drop
else
    echo "reusing bundle $WORK/h-rpi5"
fi

# The stage: one pristine bundle and the images, the same bytes for x86 and aarch64.
#   val/         the dataset's validation split (ants 70, bees 83)
#   hand-add/    10 photos of a hand (sign digit 3): add-class "hand"
#   local/       retrain data: 20 train ants, 20 train bees, 10 other hand photos
#   predict/     2 val ants, 2 val bees, the last 4 hand photos (seen by neither step)
rm -rf "$STAGE" && mkdir -p "$STAGE"/{hand-add,predict,local/ants,local/bees,local/hand}
cp -a "$WORK/h-rpi5" "$STAGE/bundle"
rm -rf "$STAGE/bundle/cache" "$STAGE/bundle/heads"  # nothing adapted or cached on x86
cp -a "$DATA/val" "$STAGE/val"
mapfile -t hands < <(find "$HAND" -maxdepth 1 -type f -iname '*.jpg' | LC_ALL=C sort)
[ "${#hands[@]}" -ge 24 ] || die "need 24 hand images in $HAND, found ${#hands[@]}"
cp "${hands[@]:0:10}" "$STAGE/hand-add/"
cp "${hands[@]:10:10}" "$STAGE/local/hand/"
cp "${hands[@]:20:4}" "$STAGE/predict/"
for c in ants bees; do
    mapfile -t files < <(find "$DATA/train/$c" -maxdepth 1 -type f | LC_ALL=C sort)
    cp "${files[@]:0:20}" "$STAGE/local/$c/"
    mapfile -t files < <(find "$DATA/val/$c" -maxdepth 1 -type f | LC_ALL=C sort)
    for f in "${files[@]:0:2}"; do cp "$f" "$STAGE/predict/$c-$(basename "$f")"; done
done
cp "$WHEEL" "$STAGE/"

# The device steps, the same script on both sides: BIN (a venv's bin) STAGE OUT.
cat > "$STAGE/device-steps.sh" <<'EOF'
#!/bin/bash
BIN=$1 STAGE=$2 OUT=$3
rm -rf "$OUT" && mkdir -p "$OUT" && cp -a "$STAGE/bundle" "$OUT/bundle"
step() {  # step NAME ARGS...: stdout -> NAME.json, stderr -> NAME.err, exit code -> NAME.rc
    local name=$1; shift
    echo "-- edgetl-device $*" | sed "s#$OUT/##g; s#$STAGE/##g"
    "$BIN/edgetl-device" "$@" >"$OUT/$name.json" 2>"$OUT/$name.err"
    echo $? >"$OUT/$name.rc"
    echo "   exit $(cat "$OUT/$name.rc")"
}
step evaluate evaluate "$OUT/bundle" "$STAGE/val" --json
step predict predict "$OUT/bundle" "$STAGE"/predict/* --json --top-k 2
step add-class add-class "$OUT/bundle" hand "$STAGE/hand-add" --json
step retrain retrain "$OUT/bundle" "$STAGE/local" --json
step evaluate-after evaluate "$OUT/bundle" "$STAGE/val" --json
step predict-after predict "$OUT/bundle" "$STAGE"/predict/* --json --top-k 2
step heads heads "$OUT/bundle" --json
EOF
chmod +x "$STAGE/device-steps.sh"

# ---- 4. venv inside the rootfs ----------------------------------------------------------------
say "4. venv in the arm64 rootfs: pip install $(basename "$WHEEL")[tflite]"
$SUDO rm -rf "$ROOTFS/opt/edgetl/stage" "$ROOTFS/opt/edgetl/out"
$SUDO mkdir -p "$ROOTFS/opt/edgetl"
$SUDO cp -a "$STAGE" "$ROOTFS/opt/edgetl/stage"
IN_WHEEL=/opt/edgetl/stage/$(basename "$WHEEL")
if [ ! -x "$ROOTFS/opt/edgetl/venv/bin/python" ]; then
    in_rootfs python3 -m venv /opt/edgetl/venv
fi
in_rootfs /opt/edgetl/venv/bin/python -m pip install -q --disable-pip-version-check "$IN_WHEEL[tflite]"
# The wheel's version does not change with the code: reinstall edgetl itself every run.
in_rootfs /opt/edgetl/venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    --force-reinstall "$IN_WHEEL"
VERSIONS=$(in_rootfs /opt/edgetl/venv/bin/python -c '
import platform, sys, numpy, PIL, importlib.metadata as md
try:
    litert = "ai-edge-litert " + md.version("ai-edge-litert")
except md.PackageNotFoundError:
    litert = "tflite-runtime " + md.version("tflite-runtime")
print(f"{platform.machine()}; Python {platform.python_version()}; numpy {numpy.__version__}; "
      f"Pillow {PIL.__version__}; {litert}; edgetl " + md.version("edgetl"))')
VERSIONS="$VERSIONS; qemu-user $(qemu-aarch64-static --version | awk 'NR == 1 {print $3}') -cpu $QEMU_CPU"
echo "inside: $VERSIONS"
# torch-free, as a board is: the device runtime must not pull it in.
in_rootfs /opt/edgetl/venv/bin/python -c 'import importlib.util as u; assert u.find_spec("torch") is None, "torch in the device venv"'

# ---- 5. the device steps: x86 (host venv), then aarch64 (emulated) -----------------------------
say "5a. device steps on x86_64 ($HOST_BIN)"
X86_T0=$(date +%s)
bash "$STAGE/device-steps.sh" "$HOST_BIN" "$STAGE" "$WORK/out-x86_64"
X86_S=$(( $(date +%s) - X86_T0 ))
say "5b. device steps on aarch64 (qemu-user, chroot $ROOTFS)"
ARM_T0=$(date +%s)
in_rootfs bash /opt/edgetl/stage/device-steps.sh /opt/edgetl/venv/bin /opt/edgetl/stage /opt/edgetl/out
ARM_S=$(( $(date +%s) - ARM_T0 ))
rm -rf "$WORK/out-aarch64" && cp -a "$ROOTFS/opt/edgetl/out" "$WORK/out-aarch64"

# ---- summary ----------------------------------------------------------------------------------
say "summary"
"$HOST_BIN/python" - "$WORK" "$VERSIONS" "$X86_S" "$ARM_S" "$(( $(date +%s) - T0 ))" <<'EOF'
import json, sys
from pathlib import Path
work, versions, x86_s, arm_s, total_s = Path(sys.argv[1]), *sys.argv[2:]
sides = {"x86_64": work / "out-x86_64", "aarch64": work / "out-aarch64"}
steps = ["evaluate", "predict", "add-class", "retrain", "evaluate-after", "predict-after", "heads"]

def load(side, step):
    d = sides[side]
    rc = int((d / f"{step}.rc").read_text())
    try:
        data = json.loads((d / f"{step}.json").read_text())
    except (OSError, ValueError):
        data = None
    return rc, data

def top1(data):
    return f"{data['top1']:.4f} ({round(data['top1'] * data['n'])}/{data['n']})" if data else "-"

def labels(data):
    rows = data if isinstance(data, list) else (data or {}).get("predictions", [])
    return [r.get("label") or r.get("top", [{}])[0].get("label") for r in rows] if rows else None

res = {s: {st: load(s, st) for st in steps} for s in sides}
problems = []
table = [("", "x86_64", "aarch64 (qemu)")]
for st in steps:
    table.append((f"{st} exit code", str(res["x86_64"][st][0]), str(res["aarch64"][st][0])))
    for s in sides:
        if res[s][st][0] != 0:
            problems.append(f"{s}: {st} exited {res[s][st][0]}: {(sides[s] / f'{st}.err').read_text().strip()[-300:]}")
for st in ["evaluate", "evaluate-after"]:
    table.append((f"{st} top-1", top1(res["x86_64"][st][1]), top1(res["aarch64"][st][1])))
for st, key in [("add-class", "support_accuracy"), ("retrain", "held_out_top1")]:
    vals = [res[s][st][1]["metrics"].get(key) if res[s][st][1] else None for s in sides]
    table.append((f"{st} {key}", *(f"{v:.4f}" if v is not None else "-" for v in vals)))
    vals = [res[s][st][1].get("activated") if res[s][st][1] else None for s in sides]
    table.append((f"{st} activated", *map(str, vals)))
for st in ["predict", "predict-after"]:
    ls = [labels(res[s][st][1]) for s in sides]
    table.append((f"{st} labels", *(" ".join(x) if x else "-" for x in ls)))
    if ls[0] != ls[1]:
        problems.append(f"{st}: labels differ: x86 {ls[0]} aarch64 {ls[1]}")
    preds = [(res[s][st][1] or {}).get("predictions", []) for s in sides]
    if preds[0] and len(preds[0]) == len(preds[1]):
        d = max(abs(a["score"] - b["score"]) for a, b in zip(*preds))
        table.append((f"{st}: largest score difference from x86", "", f"{d:.1e}"))
# The embeddings add-class and retrain computed (BUNDLE/cache), image by image.
import numpy as np
caches = []
for d in sides.values():
    try:
        with np.load(d / "bundle" / "cache" / "embeddings.npz") as z:
            caches.append(dict(zip(map(str, z["digests"]), z["embeddings"])))
    except (OSError, KeyError, ValueError):
        caches.append({})
common = sorted(set(caches[0]) & set(caches[1]))
if common:
    d = max(float(np.abs(caches[0][k] - caches[1][k]).max()) for k in common)
    table.append((f"embeddings of the {len(common)} adaptation images: largest difference from x86", "", f"{d:.1e}"))
table.append(("wall time of the steps (s, not a latency)", x86_s, arm_s))
for st in ["evaluate", "evaluate-after"]:
    a, b = (res[s][st][1] for s in sides)
    if a and b:
        diff = abs(round(a["top1"] * a["n"]) - round(b["top1"] * b["n"]))
        if a["n"] != b["n"] or diff > 1:
            problems.append(f"{st}: aarch64 differs from x86 by {diff} images (allowed: 1)")
w = [max(len(str(r[i])) for r in table) for i in range(3)]
print(f"aarch64 side: {versions}")
for i, r in enumerate(table):
    print("| " + " | ".join(str(c).ljust(w[j]) for j, c in enumerate(r)) + " |")
    if i == 0:
        print("|" + "|".join("-" * (x + 2) for x in w) + "|")
print(f"total wall time: {total_s} s")
(work / "summary.json").write_text(json.dumps({"versions": versions, "table": table, "problems": problems,
                                               "total_s": int(total_s)}, indent=2))
if problems:
    print("PROBLEMS:\n  " + "\n  ".join(problems))
    sys.exit(1)
print("OK: every step exited 0 on both sides; top-1 within one image")
EOF
