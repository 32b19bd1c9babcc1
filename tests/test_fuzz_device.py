"""Fuzz the real `edgetl-device` with generated bad input: over 200 cases, deterministic
(random.Random(0)), each process under a 1 GB address-space limit.

Inputs: random bytes and mutated images with image extensions, forged headers (a PNG that
declares 100000x100000, 1x50000 and 50000x1 strips, a GIF with a giant logical screen, BMP,
WebP and JPEG headers with huge sizes), files that are not regular files, odd file, folder and
class names (unicode, spaces, rich markup, "--", line breaks, another encoding, very long), and
NaN/inf/huge/negative/non-numeric values in every numeric option.

Every process must end with exit 0, 1, 2 or 3 (never a signal), never print a traceback or a
MemoryError, and on a non-zero exit the last line of stderr is the error (`error:`, or
click's `Error:` for bad usage). Bad files are grouped into one call where the command takes
many, since each process costs about a second.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import DEMO
from tests.ondevice_support import DEVICE_CLI, DEVICE_ENV, copy_bundle, make_class_folders

ADDRESS_SPACE = 1 << 30  # 1 GB: a small board's memory
EXTENSIONS = (".jpg", ".png", ".bmp", ".gif", ".webp")
TABLE_ENV = {**DEVICE_ENV, "COLUMNS": "300"}


# The limit is set by a small exec wrapper rather than preexec_fn: the test process has
# imported JAX (through the export fixtures), and fork() with its threads running can deadlock.
LIMITED = [sys.executable, "-c", "import os, resource, sys; "
           f"resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE}, {ADDRESS_SPACE})); "
           "os.execv(sys.argv[1], sys.argv[1:])"]


def run_device(*args, env=None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*LIMITED, DEVICE_CLI, *map(str, args)], capture_output=True, encoding="utf-8",
                          errors="backslashreplace", env=env or DEVICE_ENV, timeout=timeout)


def assert_contained(proc: subprocess.CompletedProcess, allowed=(0, 1, 2, 3)) -> None:
    """The contract every fuzz case checks."""
    tail = proc.stderr[-3000:]
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}: {tail}"
    assert proc.returncode in allowed, (proc.returncode, tail)
    assert "Traceback" not in proc.stderr, tail
    assert "MemoryError" not in proc.stderr, tail
    if proc.returncode:
        lines = proc.stderr.strip().splitlines()
        assert lines and lines[-1].startswith(("error:", "Error:")), tail


# -- generated inputs -------------------------------------------------------------------------------
def _all_photos() -> list[Path]:
    folders = [sorted((DEMO / str(d)).iterdir()) for d in range(10)]
    return [folder[i] for i in range(min(map(len, folders))) for folder in folders]  # round-robin over digits


def _digits(n: int, skip: int = 0) -> list[Path]:
    """n distinct demo photos, starting at `skip` in a round-robin order over the digits."""
    photos = _all_photos()[skip:skip + n]
    assert len(photos) == n
    return photos


def _png(width: int, height: int, idat: bytes = b"", bit_depth: int = 8, colour: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(idat)) + chunk(b"IEND", b"")


def _strip_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def _gif_giant_screen() -> bytes:
    # logical screen 65535x65535, one 1x1 frame
    return (b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
            + b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00\x02\x02\x44\x01\x00\x3b")


def _gif_giant_frame() -> bytes:
    return (b"GIF89a" + struct.pack("<HH", 1, 1) + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
            + b"\x2c" + struct.pack("<HHHH", 0, 0, 65535, 65535) + b"\x00\x02\x02\x44\x01\x00\x3b")


def _bmp(width: int, height: int, bpp: int = 24) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bpp, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 64, 0, 0, 14 + len(info)) + info + b"\x00" * 64


def _webp_canvas(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") \
        + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def _jpeg_sof(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + sof + b"\xff\xd9"


FORGED = {
    "png-100000x100000.png": lambda: _png(100000, 100000, b"\x00" * 16),
    "png-strip-1x50000.png": lambda: _strip_png(1, 50000),
    "png-strip-50000x1.png": lambda: _strip_png(50000, 1),
    "png-16bit-65535x1.png": lambda: _png(65535, 1, b"\x00" * 64, bit_depth=16),
    "png-zero-size.png": lambda: _png(0, 0),
    "png-bad-colour-type.png": lambda: _png(8, 8, b"\x00" * 200, colour=7),
    "gif-giant-screen.gif": _gif_giant_screen,
    "gif-giant-frame.gif": _gif_giant_frame,
    "bmp-100000x100000.bmp": lambda: _bmp(100000, 100000),
    "bmp-top-down-huge.bmp": lambda: _bmp(100000, -100000),
    "bmp-zero-bpp.bmp": lambda: _bmp(8, 8, bpp=0),
    "bmp-strip-1x50000.bmp": lambda: _bmp(1, 50000),
    "webp-canvas-16384.webp": lambda: _webp_canvas(16384, 16384),
    "jpeg-sof-65500x65500.jpg": lambda: _jpeg_sof(65500, 65500),
    "jpeg-sof-1x65500.jpg": lambda: _jpeg_sof(1, 65500),
    "jpeg-sof-0x0.jpg": lambda: _jpeg_sof(0, 0),
}

MAGIC = {".jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", ".png": b"\x89PNG\r\n\x1a\n", ".bmp": b"BM",
         ".gif": b"GIF89a", ".webp": b"RIFF\x00\x10\x00\x00WEBPVP8 "}
PIL_FORMAT = {".jpg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP"}

# Valid images under names that are hard to print, pass or store.
ODD_FILE_NAMES = ["фото муравья 🐜.jpg", "[x].png", "[bold red]LED.jpg", "--.jpg",
                  "-rf.jpg", "with  two spaces .png", "a" * 240 + ".jpg", "line\nbreak.jpg", "para\u2028sep.png",
                  "tab\there.jpg", "quote'\"s.png", "back\\slash.jpg", "%s%n{0}.png", "\u202eevil.gif.jpg",
                  os.fsdecode(b"latin1-\xe9.jpg")]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:  # flipped bytes anywhere
        for _ in range(rng.randint(1, 12)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:  # truncated
        data = data[:rng.randrange(1, len(data))]
    elif kind == 2:  # a header field stomped
        at = rng.randrange(min(len(data), 64))
        data[at:at + 4] = rng.randbytes(4)
    else:  # a valid start, then noise
        data = data[:rng.randrange(1, 48)] + bytearray(rng.randbytes(rng.randrange(0, 3000)))
    return bytes(data)


def make_bad_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(bad inputs, valid images under odd names), generated from random.Random(0)."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    bad: list[Path] = []

    def put(name: str, data: bytes) -> None:
        path = root / name
        path.write_bytes(data)
        bad.append(path)

    for i in range(40):  # random bytes, image extension
        put(f"random-{i:02d}{EXTENSIONS[i % 5]}", rng.randbytes(rng.choice([1, 7, 64, 512, 4096, 20000])))
    for i in range(25):  # the right magic, then garbage
        ext = EXTENSIONS[i % 5]
        put(f"magic-{i:02d}{ext}", MAGIC[ext] + rng.randbytes(rng.choice([0, 10, 100, 1000, 10000])))
    with Image.open(_digits(1)[0]) as photo:
        small = photo.convert("RGB").resize((64, 48))
    for i in range(50):  # mutated real images of every format
        ext = EXTENSIONS[i % 5]
        buf = io.BytesIO()
        small.save(buf, PIL_FORMAT[ext])
        put(f"mutated-{i:02d}{ext}", _mutate(rng, buf.getvalue()))
    for name, make in FORGED.items():
        put(name, make())
    put("empty.jpg", b"")
    put("text.png", b"this is not a picture\n")
    (root / "folder.jpg").mkdir()
    bad.append(root / "folder.jpg")
    os.symlink("/dev/zero", root / "dev-zero.png")
    bad.append(root / "dev-zero.png")
    os.mkfifo(root / "fifo.jpg")
    bad.append(root / "fifo.jpg")
    os.symlink(root / "nowhere.jpg", root / "dangling.jpg")
    bad.append(root / "dangling.jpg")
    bad.append(root / "missing.webp")

    odd = []
    for name, src in zip(ODD_FILE_NAMES, _digits(len(ODD_FILE_NAMES), skip=10)):
        odd.append(Path(shutil.copyfile(src, root / name)))
    return bad, odd


@pytest.fixture(scope="module")
def fuzz_bundle(int8_bundle, tmp_path_factory) -> Path:
    return copy_bundle(int8_bundle, tmp_path_factory.mktemp("fuzz") / "bundle")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    return make_bad_files(tmp_path_factory.mktemp("fuzz-files") / "in")


def test_a_normal_predict_fits_the_memory_limit(fuzz_bundle):
    proc = run_device("predict", fuzz_bundle, _digits(1)[0], "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["predictions"][0]["label"] in [str(d) for d in range(10)]


def test_bad_image_files_in_one_predict(fuzz_bundle, bad_files):
    bad, odd = bad_files
    assert len(bad) >= 130
    inputs = bad + odd
    proc = run_device("predict", fuzz_bundle, *inputs, "--json")
    assert_contained(proc, allowed=(1,))
    out = json.loads(proc.stdout)
    assert len(out["predictions"]) + len(out["errors"]) == len(inputs)
    predicted = {p["source"] for p in out["predictions"]}
    assert {str(p) for p in odd} <= predicted  # odd names are still images
    table = run_device("predict", fuzz_bundle, *inputs, env=TABLE_ENV)
    assert_contained(table, allowed=(1,))
    assert len([line for line in table.stderr.splitlines() if line.startswith("error: ")]) == len(out["errors"])


def test_bad_files_in_class_folders_are_skipped_by_add_class_evaluate_retrain(fuzz_bundle, bad_files, tmp_path):
    bad, _ = bad_files
    regular = [p for p in bad if p.is_file() and not p.is_symlink()]
    data = make_class_folders(tmp_path / "data", {"3": sorted((DEMO / "3").iterdir())[:6],
                                                  "4": sorted((DEMO / "4").iterdir())[:6]})
    for i, path in enumerate(regular):
        shutil.copyfile(path, data / ("3" if i % 2 else "4") / path.name)
    bundle = copy_bundle(fuzz_bundle, tmp_path / "bundle")
    for args in (("evaluate", bundle, data), ("add-class", bundle, "mixed bag", data / "3", "--force"),
                 ("retrain", bundle, data, "--force")):
        proc = run_device(*args)
        assert_contained(proc, allowed=(0,))
        assert "skipped" in proc.stderr


def test_png_with_a_huge_chunk_length(fuzz_bundle, tmp_path):
    """A PNG whose IDAT length field claims 2.4 GB: Pillow allocates that much to read it."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    at = data.index(b"IDAT") - 4
    data[at:at + 4] = struct.pack(">I", 0x927C_0000)
    path = tmp_path / "huge-idat.png"
    path.write_bytes(bytes(data))
    proc = run_device("predict", fuzz_bundle, path, _digits(1)[0])
    assert_contained(proc, allowed=(1,))
    assert "huge-idat.png" in proc.stderr.strip().splitlines()[-1]


# -- names ------------------------------------------------------------------------------------------------
LABELS = ["ünïcødé ü", "with  spaces", "[/x]", "[bold red]LED[/]", "--", "-x", "a" * 10000, "日本語ラベル",
          "🐜 ant", "tab\there", "\x1b[31mred\x1b[0m", "rtl \u202eevil", "zero\u200bwidth", "%s%n{0}", "'quote\"",
          "back\\slash", "0", "", "   ", "a\nb", "x\u2028y", "nel\x85", os.fsdecode(b"caf\xe9"), "b" * 300]


@pytest.fixture(scope="module")
def label_bundle(fuzz_bundle, tmp_path_factory) -> Path:
    return copy_bundle(fuzz_bundle, tmp_path_factory.mktemp("fuzz-labels") / "bundle")


@pytest.mark.parametrize("label", LABELS, ids=[f"label{i:02d}" for i in range(len(LABELS))])
def test_add_class_label(label, label_bundle):
    images = _digits(5, skip=12)
    proc = run_device("add-class", "--force", label_bundle, "--", label, *images, env=TABLE_ENV)
    assert_contained(proc, allowed=(0, 1))
    if proc.returncode == 0:
        heads = run_device("heads", label_bundle, "--json")
        assert heads.returncode == 0, heads.stderr
        assert json.loads(heads.stdout)["versions"][-1]["labels"][-1] == label.strip()


def test_add_class_without_separator_takes_the_first_path_as_the_label(label_bundle):
    proc = run_device("add-class", label_bundle, "--", *_digits(6, skip=12), "--force")
    assert_contained(proc)


def test_every_label_prints(label_bundle):
    heads = run_device("heads", label_bundle, env=TABLE_ENV)
    assert_contained(heads, allowed=(0,))
    predict = run_device("predict", label_bundle, *_digits(3, skip=20), "--top-k", "1000", env=TABLE_ENV)
    assert_contained(predict, allowed=(0,))


FOLDERS = ["ünïcødé", "with space", "[x]", "--", "-x", "a" * 200, "日本語", "emoji 🐜", "tab\tname", "rtl\u202e",
           "zero\u200bwidth", "[red]LED", "%s%n", "{0}", "quote'\"", "back\\slash", " lead", "trail ", ".hidden",
           "..."]


def test_retrain_with_odd_class_folder_names(fuzz_bundle, tmp_path):
    photos = _digits(5 * len(FOLDERS))
    data = make_class_folders(tmp_path / "data", {name: photos[5 * i:5 * i + 5] for i, name in enumerate(FOLDERS)})
    bundle = copy_bundle(fuzz_bundle, tmp_path / "bundle")
    proc = run_device("retrain", bundle, data, "--force", "--json")
    assert_contained(proc, allowed=(0,))
    new = set(json.loads(proc.stdout)["metrics"]["new_labels"])
    assert new == {name for name in FOLDERS if not name.startswith(".")}
    for args in (("heads", bundle), ("evaluate", bundle, data)):
        assert_contained(run_device(*args, env=TABLE_ENV), allowed=(0, 1))


@pytest.mark.parametrize("name", ["a\nb", "x\u2028y", "vt\x0bb", os.fsdecode(b"caf\xe9")],
                         ids=["lf", "ls", "vt", "latin1"])
def test_retrain_refuses_folder_names_that_cannot_be_labels(name, fuzz_bundle, tmp_path):
    data = make_class_folders(tmp_path / "data", {"3": _digits(5, skip=30), name: _digits(5, skip=35)})
    assert_contained(run_device("retrain", fuzz_bundle, data), allowed=(1,))
    assert_contained(run_device("evaluate", fuzz_bundle, data), allowed=(1,))


@pytest.mark.parametrize("data", ["no\nsuch", "", "-", "--", "a" * 5000, "[/x]"], ids=lambda d: repr(d)[:20])
def test_retrain_odd_data_paths(data, fuzz_bundle):
    assert_contained(run_device("retrain", fuzz_bundle, "--", data), allowed=(1, 2))


# -- numbers ---------------------------------------------------------------------------------------
VALUES = ["nan", "inf", "-inf", "1e400", "-1", "0", "1", "99999999999999999999999", "abc", "", "5.5", "+3"]
OPTIONS = [("predict", "--top-k"), ("predict", "--threads"), ("evaluate", "--threads"), ("retrain", "--tolerance"),
           ("retrain", "--min-images"), ("retrain", "--seed"), ("add-class", "--tolerance"),
           ("add-class", "--min-images"), ("rollback", None), ("build-engine", "--workspace-mb"),
           ("build-engine", "--dla-core"), ("build-engine", "--max-batch"), ("build-engine", "--opt-batch")]


@pytest.fixture(scope="module")
def number_setup(fuzz_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-numbers")
    bundle = copy_bundle(fuzz_bundle, root / "bundle")
    evaluate = make_class_folders(root / "eval", {"3": _digits(2, skip=40), "4": _digits(2, skip=41)})
    retrain = make_class_folders(root / "retrain", {"3": sorted((DEMO / "3").iterdir())[:5],
                                                    "4": sorted((DEMO / "4").iterdir())[:5]})
    return bundle, evaluate, retrain


@pytest.mark.parametrize("value", VALUES, ids=[repr(v) for v in VALUES])
@pytest.mark.parametrize("command,option", OPTIONS, ids=[f"{c}{o or ' VERSION'}" for c, o in OPTIONS])
def test_numeric_option(command, option, value, number_setup):
    bundle, evaluate, retrain = number_setup
    where = {"predict": [_digits(1, skip=50)[0]], "evaluate": [evaluate], "retrain": [retrain],
             "add-class": [f"class {option} {value}", *_digits(5, skip=12)], "rollback": [],
             "build-engine": []}[command]
    args = [value] if option is None else [option, value]
    proc = run_device(command, bundle, *where, *args)
    assert_contained(proc)
    if value in ("nan", "inf", "-inf", "1e400", "abc", ""):
        assert proc.returncode == 2, proc.stderr[-2000:]  # never reaches the command


def test_enough_generated_cases(bad_files):
    bad, odd = bad_files
    cases = len(bad) + len(odd) + len(LABELS) + len(FOLDERS) + 4 + 6 + len(VALUES) * len(OPTIONS)
    assert cases >= 200, cases
