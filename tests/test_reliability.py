"""Regression tests for the reliability issue (what export overwrites, NaN options, labels as
rich markup or with line breaks, damaged caches, foreign head stores, thread counts, stale
staging folders, broken head indexes, wording, the one scanner, permissions, host paths).

Each test is named after its issue item: test_<item>_<n>_... Real CLIs in subprocesses, real
bundles (the session fixtures), no mocks. docs/reliability.md lists which test proves which
promise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import DEMO, EDGETL, manifest_json, run_cli
from tests.ondevice_support import DEVICE_CLI, DEVICE_ENV, copy_bundle, device, heads_json, make_class_folders

TABLE_ENV = {**DEVICE_ENV, "COLUMNS": "300"}


# -- helpers ---------------------------------------------------------------------------------------
def _digits(label: str, n: int = 10, skip: int = 8) -> list[Path]:
    return sorted((DEMO / label).iterdir())[skip:skip + n]


def _export(run: Path, out: Path, *extra, umask: int | None = None) -> subprocess.CompletedProcess:
    """`edgetl export RUN --target rpi5 --precision fp32 --out OUT`, the real host CLI."""
    wrapper = ["sh", "-c", f"umask {umask:03o} && exec \"$@\"", "sh"] if umask is not None else []  # no preexec_fn:
    # fork() with the session's JAX threads running can deadlock
    return subprocess.run([*wrapper, EDGETL, "export", str(run), "--target", "rpi5", "--precision", "fp32", "--out",
                           str(out), *map(str, extra)], capture_output=True, text=True, timeout=900)


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` (relative name -> sha256): what 'untouched' means."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 1, no traceback, exactly one `error:` line, and it is the last line of stderr."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == errors[0]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _add_class(bundle: Path, label: str, *extra, env=None) -> subprocess.CompletedProcess:
    """add-class from digit images; --force because imprinting a digit as a new class may
    (rightly) fail the guardrail, and these tests are about what happens around it."""
    return subprocess.run([DEVICE_CLI, "add-class", str(bundle), label, *map(str, _digits("3", 6)), "--force",
                           *map(str, extra)], capture_output=True, text=True, timeout=300, env=env or DEVICE_ENV)


def _strict_json(path: Path):
    """json.loads that refuses NaN/Infinity (Python's json accepts them; JSON does not)."""
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def _retrain_data(root: Path) -> Path:
    return make_class_folders(root, {"3": _digits("3"), "4": _digits("4")})


@pytest.fixture(scope="module")
def dev_bundle(int8_bundle, tmp_path_factory) -> Path:
    """The session's INT8 bundle without a head store."""
    return copy_bundle(int8_bundle, tmp_path_factory.mktemp("reliability") / "int8")


@pytest.fixture
def bundle(dev_bundle, tmp_path) -> Path:
    return copy_bundle(dev_bundle, tmp_path / "bundle")


@pytest.fixture(scope="module")
def cli_export(trained_run, int8_bundle, tmp_path_factory):
    """One real `edgetl export` (umask 022) over a copy of the INT8 bundle, beside staging
    folders a killed export left: a stale one, a recent one, one without the marker and a
    stale one of another bundle name."""
    from edgetl.core.fsutil import STAGE_MARK, STALE_AFTER_S

    parent = tmp_path_factory.mktemp("dist")
    out = copy_bundle(int8_bundle, parent / "rpi5")
    old = time.time() - STALE_AFTER_S - 600

    def staging(name: str, marker: bool, mtime: float | None) -> Path:
        folder = parent / name
        (folder / "backbone.tflite").parent.mkdir(parents=True)
        (folder / "backbone.tflite").write_bytes(b"half-written")
        if marker:
            (folder / STAGE_MARK).touch()
        if mtime is not None:
            os.utime(folder, (mtime, mtime))
        return folder

    folders = SimpleNamespace(stale=staging(".rpi5.export-k1ll3d", True, old),
                              recent=staging(".rpi5.export-running", True, None),
                              unmarked=staging(".rpi5.export-usermade", False, old),
                              other=staging(".orin.export-k1ll3d", True, old))
    before = manifest_json(out)
    proc = _export(trained_run, out, "--json", umask=0o022)
    return SimpleNamespace(proc=proc, out=out, parent=parent, before=before, **vars(folders))


# -- 1: what export overwrites ------------------------------------------------------------------------
def test_1_1_export_refuses_run_folder(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = _tree_digest(run)
    for out in (run, run / "bundle"):
        proc = _export(run, out)
        assert proc.stderr.strip().count("\n") == 0, proc.stderr  # one line on stderr
        _assert_one_error_line(proc, "run folder")
        assert _tree_digest(run) == before  # model.pt, metrics.json, labels.txt untouched
    assert not (run / "bundle").exists()


@pytest.mark.parametrize("case", ["user-file", "web-manifest", "bundle-plus-user-file"])
def test_1_2_export_refuses_folder_with_user_files(case, trained_run, int8_bundle, tmp_path):
    out = tmp_path / "out"
    if case == "user-file":
        out.mkdir()
        (out / "notes.txt").write_text("my notes\n")
        needle = "not an edgetl bundle"
    elif case == "web-manifest":  # manifest.json is a common name: a web app's is not a bundle
        out.mkdir()
        (out / "manifest.json").write_text('{"name": "my app", "start_url": "/"}\n')
        (out / "index.html").write_text("<html></html>\n")
        needle = "not an edgetl manifest"
    else:
        copy_bundle(int8_bundle, out)
        (out / "my-notes.txt").write_text("field notes\n")
        needle = "my-notes.txt"
    before = _tree_digest(out)
    proc = _export(trained_run, out)
    _assert_one_error_line(proc, str(out), needle)
    assert _tree_digest(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging left behind


def test_1_3_export_refuses_bundle_with_trained_heads(trained_run, int8_bundle, tmp_path):
    out = copy_bundle(int8_bundle, tmp_path / "rpi5")
    added = _add_class(out, "screw")
    assert added.returncode == 0, added.stderr
    before = _tree_digest(out)
    proc = _export(trained_run, out)
    _assert_one_error_line(proc, "1 version(s) trained on the device", f"move '{out / 'heads'}' away")
    assert _tree_digest(out) == before  # heads/, manifest and model untouched
    assert heads_json(out)["active"] == 1


def test_1_4_export_replaces_an_earlier_bundle(cli_export):
    assert cli_export.proc.returncode == 0, cli_export.proc.stderr[-3000:]
    assert cli_export.before["precision"] == "int8" and "model.tflite" in cli_export.before["files"]
    after = manifest_json(cli_export.out)
    assert after["precision"] == "fp32" and json.loads(cli_export.proc.stdout)["precision"] == "fp32"
    assert sorted(p.name for p in cli_export.out.iterdir()) == sorted(["manifest.json", *after["files"]])
    assert not [p for p in cli_export.parent.iterdir() if p.name.startswith(".rpi5.old-")]


# -- 3: NaN and other non-finite tolerances -------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_3_1_nonfinite_tolerance_is_a_usage_error(value, dev_bundle, tmp_path):
    data = _retrain_data(tmp_path / "data")
    for args in (("retrain", dev_bundle, data), ("add-class", dev_bundle, "screw", *_digits("3", 5))):
        proc = device(*args, "--tolerance", value)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("Error:") and "--tolerance" in last and "finite" in last
    assert not (dev_bundle / "heads").exists()


def test_3_2_api_refuses_nan_tolerance(bundle, tmp_path):
    import edgetl.ondevice as od
    from edgetl.errors import EdgetlError

    data = _retrain_data(tmp_path / "data")
    for bad in (float("nan"), float("inf"), -1.0, 101.0, True, "2"):
        with pytest.raises(EdgetlError, match="tolerance must be a number"):
            od.retrain(bundle, data, tolerance=bad)
        with pytest.raises(EdgetlError, match="tolerance must be a number"):
            od.add_class(bundle, "screw", _digits("3", 5), tolerance=bad)
    assert not (bundle / "heads").exists()


def test_3_3_head_index_never_holds_nan(bundle, tmp_path):
    data = _retrain_data(tmp_path / "data")
    assert device("retrain", bundle, data, "--tolerance", "0").returncode in (0, 3)
    assert _add_class(bundle, "screw").returncode == 0
    assert device("retrain", bundle, data, "--force").returncode == 0
    index = _strict_json(bundle / "heads" / "index.json")
    assert len(index["versions"]) >= 3
    for entry in index["versions"]:
        tolerance = (entry.get("metrics") or {}).get("guardrail", {}).get("tolerance_points")
        assert tolerance is None or 0 <= tolerance <= 100


# -- 4: labels are text, never rich markup ---------------------------------------------------------
def test_4_1_markup_labels_print_literally(bundle):
    for label in ("[/x]", "LED [red]"):
        proc = _add_class(bundle, label, env=TABLE_ENV)
        assert proc.returncode == 0, proc.stderr
    heads = subprocess.run([DEVICE_CLI, "heads", str(bundle)], capture_output=True, text=True, env=TABLE_ENV)
    assert heads.returncode == 0, heads.stderr
    assert "add-class [/x]" in heads.stdout and "add-class LED [red]" in heads.stdout
    image = _digits("3", 1, skip=0)[0]
    predict = subprocess.run([DEVICE_CLI, "predict", str(bundle), str(image), "--top-k", "20"], capture_output=True,
                             text=True, env=TABLE_ENV)
    assert predict.returncode == 0, predict.stderr
    assert "[/x]" in predict.stdout and "LED [red]" in predict.stdout
    for proc in (heads, predict):
        assert "MarkupError" not in proc.stderr and "Traceback" not in proc.stderr


def test_4_2_markup_in_paths_prints_literally(bundle, tmp_path):
    folder = tmp_path / "[bold]photos"  # a file name cannot hold '/', so no closing tags
    folder.mkdir()
    image = shutil.copyfile(_digits("3", 1, skip=0)[0], folder / "[red]img [bold red]x.jpg")
    proc = subprocess.run([DEVICE_CLI, "predict", str(bundle), str(image)], capture_output=True, text=True,
                          env=TABLE_ENV)
    assert proc.returncode == 0, proc.stderr
    assert "[red]img [bold red]x.jpg" in proc.stdout and "[bold]photos" in proc.stdout


# -- 5: a line break cannot be a label -----------------------------------------------------------
@pytest.mark.parametrize("name", ["a\nb", "x\u2028y"])
def test_5_1_finetune_refuses_line_break_folder(name, tmp_path):
    data = make_class_folders(tmp_path / "data", {"0": _digits("0", 6, 0), "1": _digits("1", 6, 0),
                                                  name: _digits("2", 6, 0)})
    proc = run_cli(EDGETL, "finetune", data, "--out", tmp_path / "run", "--strategy", "linear", "--epochs", "2")
    _assert_one_error_line(proc, "line break", repr(str(data / name)))
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.parametrize("label", ["x\u2028y", "a\nb", "a\rb"])
def test_5_2_add_class_refuses_line_break_label(label, dev_bundle):
    proc = device("add-class", dev_bundle, label, *_digits("3", 5))
    _assert_one_error_line(proc, "line break", repr(label))
    assert not (dev_bundle / "heads").exists()


def test_5_3_retrain_refuses_line_break_folder(dev_bundle, tmp_path):
    data = make_class_folders(tmp_path / "data", {"3": _digits("3"), "x\u2028y": _digits("4")})
    proc = device("retrain", dev_bundle, data)
    _assert_one_error_line(proc, "line break")
    assert not (dev_bundle / "heads").exists()


def test_5_4_labels_in_another_encoding_are_refused(dev_bundle, tmp_path):
    label = os.fsdecode(b"caf\xe9")  # Latin-1 bytes: a surrogate escape in Python
    proc = device("add-class", dev_bundle, label, *_digits("3", 5))
    _assert_one_error_line(proc, "not valid UTF-8")
    data = make_class_folders(tmp_path / "data", {"3": _digits("3"), label: _digits("4")})
    proc = device("retrain", dev_bundle, data)
    _assert_one_error_line(proc, "not valid UTF-8")
    assert not (dev_bundle / "heads" / "v0001.npz").exists()


# -- 6: a damaged embedding cache is rebuilt ------------------------------------------------------------
def _flip_bit_in_largest_member(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "bit-flip"])
def test_6_1_damaged_embedding_cache_is_rebuilt(damage, bundle, tmp_path):
    data = _retrain_data(tmp_path / "data")
    first = device("retrain", bundle, data, "--force")
    assert first.returncode == 0, first.stderr
    cache = bundle / "cache" / "embeddings.npz"
    intact = cache.read_bytes()
    if damage == "truncated":
        cache.write_bytes(intact[:len(intact) // 2])
    else:
        _flip_bit_in_largest_member(cache)
    assert cache.read_bytes() != intact
    again = device("retrain", bundle, data, "--force")
    assert again.returncode == 0, again.stderr
    assert "is damaged" in again.stderr and "rebuilding it" in again.stderr
    with np.load(cache, allow_pickle=False) as z:  # rebuilt, readable, complete
        assert z["embeddings"].shape == (20, manifest_json(bundle)["model"]["embedding_dim"])
    third = device("retrain", bundle, data, "--force")
    assert third.returncode == 0 and "is damaged" not in third.stderr
    assert "0 embedded, 20 from the cache" in third.stderr


class _Payload:
    """Unpickling this creates a file: proof that a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_6_2_pickled_embedding_cache_never_runs(bundle, tmp_path):
    data = _retrain_data(tmp_path / "data")
    marker = tmp_path / "pickle-ran"
    cache = bundle / "cache" / "embeddings.npz"
    cache.parent.mkdir()
    with open(cache, "wb") as f:
        np.savez(f, backbone=np.array([_Payload(marker)], dtype=object), digests=np.array(["x"]),
                 embeddings=np.zeros((1, 4), np.float32))
    proc = device("retrain", bundle, data, "--force")
    assert proc.returncode == 0, proc.stderr
    assert "is damaged" in proc.stderr and not marker.exists()


# -- 7: a head store belongs to its bundle -------------------------------------------------------------
def test_7_1_head_store_of_another_bundle_is_refused(int8_bundle, fp32_bundle, tmp_path):
    from edgetl.errors import EdgetlError
    from edgetl.runtime import Predictor

    donor = copy_bundle(int8_bundle, tmp_path / "int8")
    assert _add_class(donor, "screw").returncode == 0
    target = copy_bundle(fp32_bundle, tmp_path / "fp32")
    shutil.copytree(donor / "heads", target / "heads")
    before = _tree_digest(target / "heads")
    image = _digits("3", 1, skip=0)[0]
    for args in (("predict", target, image), ("heads", target), ("add-class", target, "bolt", *_digits("4", 5)),
                 ("retrain", target, _retrain_data(tmp_path / "data")), ("rollback", target, "0")):
        proc = device(*args)
        _assert_one_error_line(proc, "belongs to another bundle", f"move '{target / 'heads'}' away")
    assert _tree_digest(target / "heads") == before
    with pytest.raises(EdgetlError, match="belongs to another bundle"):
        Predictor.open(target)
    assert device("predict", donor, image).returncode == 0  # where it came from, it still works


def test_7_2_legacy_store_is_checked_against_the_factory_head(bundle):
    from edgetl.bundle import Head
    from edgetl.core.fsutil import sha256_file

    assert _add_class(bundle, "screw").returncode == 0
    index_path = bundle / "heads" / "index.json"
    index = json.loads(index_path.read_text())
    del index["binding"]  # as written before bindings existed
    index_path.write_text(json.dumps(index))
    image = _digits("3", 1, skip=0)[0]
    assert device("predict", bundle, image).returncode == 0  # its v0 is this bundle's factory head
    assert _add_class(bundle, "bolt").returncode == 0
    assert "binding" in json.loads(index_path.read_text())  # recorded on the next write

    del_binding = json.loads(index_path.read_text())
    del del_binding["binding"]
    v0 = Head.from_file(bundle / "heads" / "v0000.npz")
    (bundle / "heads" / "v0000.npz").write_bytes(Head(v0.weight * 2, v0.bias, v0.labels).to_bytes())
    del_binding["versions"][0]["sha256"] = sha256_file(bundle / "heads" / "v0000.npz")
    index_path.write_text(json.dumps(del_binding))
    proc = device("predict", bundle, image)
    _assert_one_error_line(proc, "was not made from this bundle", f"move '{bundle / 'heads'}' away")


# -- 8: thread counts ------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", ["100000", "-1", "0"])
def test_8_1_absurd_thread_counts_are_usage_errors(threads, dev_bundle):
    image = _digits("3", 1, skip=0)[0]
    for args in (("predict", dev_bundle, image), ("evaluate", dev_bundle, DEMO)):
        proc = device(*args, "--threads", threads)
        assert proc.returncode == 2, (proc.returncode, proc.stderr)  # not a signal (negative)
        assert "--threads" in proc.stderr.strip().splitlines()[-1]


def test_8_2_threads_above_the_cpu_count_are_capped(dev_bundle):
    """256 threads would reserve 2 GB of stacks: under a 1 GB address-space limit that was a
    failed model load or a MemoryError."""
    image = _digits("3", 1, skip=0)[0]
    limited = [sys.executable, "-c", "import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, "
               "(1 << 30, 1 << 30)); os.execv(sys.argv[1], sys.argv[1:])"]  # not preexec_fn: JAX threads + fork
    proc = subprocess.run([*limited, DEVICE_CLI, "predict", str(dev_bundle), str(image), "--threads", "256", "--json"],
                          capture_output=True, text=True, env=DEVICE_ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    if (os.cpu_count() or 1) < 256:
        assert f"using {os.cpu_count()}" in proc.stderr
    assert json.loads(proc.stdout)["predictions"][0]["label"]


# -- 9: staging folders of a killed export ----------------------------------------------------------------
def test_9_1_stale_staging_folders_are_removed(cli_export):
    assert cli_export.proc.returncode == 0, cli_export.proc.stderr[-3000:]
    assert not cli_export.stale.exists()
    assert cli_export.recent.exists()  # may belong to an export still running
    assert cli_export.unmarked.exists()  # not provably ours
    assert cli_export.other.exists()  # another bundle's
    left = sorted(p.name for p in cli_export.parent.iterdir() if p.name.startswith("."))
    assert left == sorted([cli_export.recent.name, cli_export.unmarked.name, cli_export.other.name])


# -- 11: broken head indexes are named -------------------------------------------------------------------
def _edit_index(bundle: Path, edit) -> None:
    path = bundle / "heads" / "index.json"
    index = json.loads(path.read_text())
    edit(index)
    path.write_text(json.dumps(index))


def test_11_1_active_version_not_listed_is_named_and_rollback_repairs_it(bundle):
    assert _add_class(bundle, "screw").returncode == 0
    _edit_index(bundle, lambda i: i.update(active=7))
    image = _digits("3", 1, skip=0)[0]
    for args in (("heads", bundle), ("predict", bundle, image)):
        _assert_one_error_line(device(*args), "marks version 7 active, but it lists only [0, 1]",
                               f"`edgetl-device rollback '{bundle}' 1`")
    plain = device("rollback", bundle)
    _assert_one_error_line(plain, "pass the version to activate")
    fixed = device("rollback", bundle, "1")
    assert fixed.returncode == 0, fixed.stderr
    assert heads_json(bundle)["active"] == 1 and device("predict", bundle, image).returncode == 0


@pytest.mark.parametrize("key", ["file", "sha256", "version"])
def test_11_2_entry_without_a_key_is_named(key, bundle):
    assert _add_class(bundle, "screw").returncode == 0
    _edit_index(bundle, lambda i: i["versions"][1].pop(key))
    for args in (("heads", bundle), ("predict", bundle, _digits("3", 1, skip=0)[0])):
        line = _assert_one_error_line(device(*args), "entry 1", f"lacks a valid '{key}'", "move it away")
        assert len(line) < 400  # names the key, does not dump the entry


def test_11_3_tampered_head_makes_heads_fail_and_says_how_to_repair(bundle):
    assert _add_class(bundle, "screw").returncode == 0
    head = bundle / "heads" / "v0001.npz"
    data = bytearray(head.read_bytes())
    data[-200] ^= 0xFF
    head.write_bytes(bytes(data))
    proc = device("heads", bundle)
    line = _assert_one_error_line(proc, "damaged version(s) (1)", "the active version 1 is damaged",
                                  f"`edgetl-device rollback '{bundle}' 0`")
    assert "problem: head file" in proc.stderr and "v0001.npz" in proc.stderr
    assert device("predict", bundle, _digits("3", 1, skip=0)[0]).returncode == 1
    assert device("rollback", bundle, "0").returncode == 0
    after = device("heads", bundle)
    _assert_one_error_line(after, "the active version 0 is intact and in use", "restore")
    assert json.loads(device("heads", bundle, "--json").stdout)["damaged"] == [1]
    assert device("predict", bundle, _digits("3", 1, skip=0)[0]).returncode == 0
    assert line != _error_lines(after.stderr)[0]


# -- 12: wording and early failures ---------------------------------------------------------------------
def test_12_1_predict_on_a_folder_says_folder(dev_bundle, tmp_path):
    proc = device("predict", dev_bundle, DEMO / "3")
    _assert_one_error_line(proc, f"'{DEMO / '3'}' is a folder", "evaluate")
    as_json = device("predict", dev_bundle, DEMO / "3", "--json")
    assert as_json.returncode == 1 and "is a folder" in json.loads(as_json.stdout)["errors"][0]
    assert _error_lines(as_json.stderr)  # --json also says on stderr why the exit is 1


def test_12_2_retrain_on_a_file_says_file(dev_bundle):
    image = _digits("3", 1, skip=0)[0]
    proc = device("retrain", dev_bundle, image)
    _assert_one_error_line(proc, f"'{image}' is a file", "one sub-folder per class")


def test_12_3_negative_seed_is_a_usage_error_before_embedding(bundle, tmp_path):
    data = _retrain_data(tmp_path / "data")
    proc = device("retrain", bundle, data, "--seed", "-1")
    assert proc.returncode == 2 and "--seed" in proc.stderr.strip().splitlines()[-1]
    assert "embedd" not in proc.stderr and not (bundle / "cache").exists() and not (bundle / "heads").exists()


def test_12_4_evaluate_out_unwritable_fails_before_the_run(dev_bundle, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    cases = [(a_file / "metrics.json", "is a file, not a folder"), (a_file / "sub" / "m.json", "is a file")]
    if not os.access("/", os.W_OK):  # a read-only folder stops everyone but root
        read_only = tmp_path / "ro"
        read_only.mkdir()
        read_only.chmod(0o555)
        cases.append((read_only / "metrics.json", "is not writable"))
    for out, needle in cases:
        proc = device("evaluate", dev_bundle, DEMO, "--out", out)
        _assert_one_error_line(proc, f"cannot write '{out}'", needle)
        assert "XNNPACK" not in proc.stderr  # failed before the model was even loaded
        assert a_file.read_text() == "not a folder\n"


# -- 13: one scanner -------------------------------------------------------------------------------------
def test_13_1_scanner_ignores_dot_folders_and_skips_symlink_loops(tmp_path, caplog):
    from edgetl.core.scan import scan_classes

    data = make_class_folders(tmp_path / "data", {"3": _digits("3", 5), "4": _digits("4", 5),
                                                  ".thumbnails": _digits("5", 5)})
    (data / "loop").symlink_to(data, target_is_directory=True)
    (data / "up").symlink_to(tmp_path, target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="edgetl"):
        scan = scan_classes(data)
    assert scan.labels == ["3", "4"] and len(scan.items) == 10
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"'{data / 'loop'}' is a symlink" in warned and f"'{data / 'up'}' is a symlink" in warned


def test_13_2_retrain_ignores_dot_folders_and_symlink_loops(bundle, tmp_path):
    data = make_class_folders(tmp_path / "data", {"3": _digits("3"), "4": _digits("4"),
                                                  ".thumbnails": _digits("5")})
    (data / "loop").symlink_to(data, target_is_directory=True)
    proc = device("retrain", bundle, data, "--json", "--force")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["metrics"]["new_labels"] == [] and result["metrics"]["images"] == 20
    assert ".thumbnails" not in result["labels"] and "loop" not in result["labels"]
    assert "is a symlink" in proc.stderr


# -- 14: permissions -----------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_14_1_int8_bundle_is_readable_by_others(int8_bundle):
    mask = _umask()  # the session's exports ran under this umask
    assert stat.S_IMODE(int8_bundle.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((int8_bundle / "manifest.json").stat().st_mode) == 0o666 & ~mask
    if mask == 0o022:
        assert stat.S_IMODE(int8_bundle.stat().st_mode) == 0o755
        assert stat.S_IMODE((int8_bundle / "manifest.json").stat().st_mode) == 0o644


def test_14_2_every_bundle_file_is_0644_under_umask_022(cli_export):
    assert cli_export.proc.returncode == 0, cli_export.proc.stderr[-3000:]
    for path in [cli_export.out, *cli_export.out.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_14_3_heads_written_on_the_device_are_readable_by_others(bundle):
    old = os.umask(0o022)
    try:
        result = device("add-class", bundle, "fourteen", *_digits("3", 6), "--force")  # the images are 3s
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    for path in (bundle / "heads").rglob("*"):
        if path.is_file() and path.name != ".lock":
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# -- 15: no host paths in a bundle ---------------------------------------------------------------------
def _strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def test_15_manifest_holds_no_host_paths(int8_bundle, cli_export, trained_run, small_recipe):
    assert cli_export.proc.returncode == 0, cli_export.proc.stderr[-3000:]
    roots = {str(trained_run), str(trained_run.parent), str(small_recipe.parent), str(DEMO),
             str(Path(__file__).resolve().parents[1]), tempfile.gettempdir(), os.path.expanduser("~"), "/tmp/"}
    for bundle in (int8_bundle, cli_export.out):
        body = manifest_json(bundle)
        assert "digest" in body["metrics"]["val"] and "root" not in body["metrics"]["val"]
        for text in _strings(body):
            assert not text.startswith("/"), (bundle, text)
            assert not any(root in text for root in roots), (bundle, text)
        labels = (bundle / "labels.txt").read_text(encoding="utf-8")
        assert not any(root in labels for root in roots)
