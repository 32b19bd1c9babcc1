"""Transferability ranking (edgetl.rank): the LogME math against a brute-force evidence, k-NN,
top_k, candidate parsing, and one real `edgetl rank` on the demo set (slow)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgetl.errors import EdgetlError
from edgetl.rank import Candidate, knn_accuracy, logme, parse_candidate, read_project, top_k
from edgetl.rank.logme import Spectrum, log_evidence, maximize_evidence
from tests.conftest import DEMO, EDGETL, run_cli


def brute_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, I/beta + F F^T/alpha): the marginal likelihood with w integrated out, by
    an n x n determinant and solve, sharing nothing with the SVD route."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    _, log_det = np.linalg.slogdet(cov)
    return float(-0.5 * (n * math.log(2 * math.pi) + log_det + y @ np.linalg.solve(cov, y)))


def problem(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and a 0/1 target that depends on them linearly, plus noise."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, dim))
    y = (f @ rng.normal(size=dim) + 0.5 * rng.normal(size=n) > 0).astype(np.float64)
    return f, y


@pytest.mark.parametrize("n, dim", [(30, 8), (20, 40), (12, 12)])
def test_svd_evidence_equals_brute_force(n, dim):
    f, y = problem(n, dim, seed=n + dim)
    spec = Spectrum.of(f)
    for alpha, beta in [(0.3, 2.0), (5.0, 0.5), (1e-2, 30.0)]:
        assert log_evidence(spec, spec.u.T @ y, float(y @ y), alpha, beta) == pytest.approx(
            brute_evidence(f, y, alpha, beta), rel=1e-10, abs=1e-9)


def test_fixed_point_reaches_the_maximum():
    f, y = problem(30, 8, seed=1)
    alpha, beta, best = maximize_evidence(Spectrum.of(f), y)
    assert best == pytest.approx(brute_evidence(f, y, alpha, beta), abs=1e-9)
    # Brute-force search: a 161 x 161 grid over log alpha, log beta in [-8, 8], then a fine
    # grid around its best cell. Nothing on either beats the fixed point.
    grid = np.linspace(-8, 8, 161)
    coarse = np.array([[brute_evidence(f, y, math.exp(a), math.exp(b)) for b in grid] for a in grid])
    i, j = np.unravel_index(coarse.argmax(), coarse.shape)
    fine_a, fine_b = np.linspace(grid[i] - 0.1, grid[i] + 0.1, 41), np.linspace(grid[j] - 0.1, grid[j] + 0.1, 41)
    fine = np.array([[brute_evidence(f, y, math.exp(a), math.exp(b)) for b in fine_b] for a in fine_a])
    assert best >= max(coarse.max(), fine.max()) - 1e-9
    assert best - fine.max() < 1e-3  # the grid's best is next to the fixed point, not elsewhere
    k, m = np.unravel_index(fine.argmax(), fine.shape)
    assert abs(fine_a[k] - math.log(alpha)) < 0.01 and abs(fine_b[m] - math.log(beta)) < 0.01


def test_separable_features_score_higher_than_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    noise = rng.normal(size=(300, 64))
    separable = noise.copy()
    separable[:, :4] += 3.0 * np.eye(4)[labels]  # each class shifted along its own axis
    assert logme(separable, labels) > logme(noise, labels) + 0.1
    assert knn_accuracy(separable, labels) > 0.8 > 0.4 > knn_accuracy(noise, labels)  # chance: 0.25


def test_logme_ignores_class_names_and_counts_only_present_classes():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(80, 16))
    labels = rng.integers(0, 3, 80)
    renamed = np.array([2, 0, 1])[labels]
    assert logme(f, labels) == pytest.approx(logme(f, renamed), abs=1e-12)
    assert logme(f, labels, num_classes=5) == pytest.approx(logme(f, labels), abs=1e-12)


def test_bad_inputs_are_named():
    with pytest.raises(EdgetlError, match="labels for 5 feature rows"):
        logme(np.zeros((5, 3)), [0, 1])
    with pytest.raises(EdgetlError, match="two classes"):
        logme(np.ones((5, 3)), [1] * 5)
    with pytest.raises(EdgetlError, match="NaN"):
        logme(np.full((4, 3), np.nan), [0, 1, 0, 1])
    with pytest.raises(EdgetlError, match="k >= 1"):
        knn_accuracy(np.ones((4, 3)), [0, 1, 0, 1], k=0)


def test_knn_leaves_the_image_itself_out():
    # Two images per class, far apart: with itself counted each image would be right at k=1;
    # left out, its nearest neighbour is its class-mate, still right; a singleton class is wrong.
    f = np.array([[1, 0], [0.99, 0.1], [-1, 0], [-0.99, -0.1], [0, 1]], dtype=np.float32)
    assert knn_accuracy(f, [0, 0, 1, 1, 2], k=1) == pytest.approx(4 / 5)


def test_top_k_keeps_the_best_by_logme_then_knn():
    scores = [{"name": "a", "logme": 0.1, "knn_top1": 0.9}, {"name": "b", "logme": 0.3, "knn_top1": 0.5},
              {"name": "c", "logme": 0.1, "knn_top1": 0.95}, {"name": "d", "logme": 0.3, "knn_top1": 0.5}]
    assert [s["name"] for s in top_k(scores, 3)] == ["b", "d", "c"]  # equal scores keep the input order
    assert [s["name"] for s in top_k(scores, 10)] == ["b", "d", "c", "a"]
    from edgetl.rank import CandidateScore

    objects = [CandidateScore(n, "tf_efficientnet_lite0", 224, lm, 0.5, 10, 1280, 0, 1.0, 0.1)
               for n, lm in (("x", -0.2), ("y", 0.4), ("z", 0.1))]
    assert [s.name for s in top_k(objects, 2)] == ["y", "z"]  # the scores `rank` returns work the same
    for bad in (0, -1, 1.5, True):
        with pytest.raises(EdgetlError, match="keep_top"):
            top_k(scores, bad)


def test_candidates_parse_and_are_checked():
    assert parse_candidate("tf_efficientnet_lite0") == Candidate("tf_efficientnet_lite0", 224)
    assert parse_candidate("tf_efficientnet_lite1").name == "tf_efficientnet_lite1@240"
    assert parse_candidate("tf_efficientnet_lite0@288").input_size == 288
    with pytest.raises(EdgetlError, match="unknown backbone 'resnet50'"):
        parse_candidate("resnet50@224")
    with pytest.raises(EdgetlError, match="NAME@SIZE"):
        parse_candidate("tf_efficientnet_lite0@big")
    with pytest.raises(EdgetlError, match="64-640"):
        parse_candidate("tf_efficientnet_lite0@32")


def test_project_file_data_is_relative_to_it(tmp_path):
    project = tmp_path / "proj" / "edgetl.yaml"
    project.parent.mkdir()
    project.write_text("data: images\nfinetune: {seed: 3, strategy: linear}\ncandidates:\n  - tf_efficientnet_lite0\n"
                       "  - {backbone: tf_efficientnet_lite0, input_size: 288}\n  - tf_efficientnet_lite2@300\n"
                       "  - tf_efficientnet_lite0@224\n")
    p = read_project(project)
    assert p.data == tmp_path / "proj" / "images" and p.seed == 3 and p.val_split is None
    assert [c.name for c in p.candidates] == ["tf_efficientnet_lite0@224", "tf_efficientnet_lite0@288",
                                              "tf_efficientnet_lite2@300"]  # the duplicate is scored once
    # The split as `edgetl build` reads it: from `finetune:` or `data:`, never two values.
    project.write_text("data: {path: images, val_split: 0.3}\ncandidates: [tf_efficientnet_lite0]\n")
    assert read_project(project).val_split == 0.3
    project.write_text("data: {path: images, seed: 1}\nfinetune: {seed: 2}\ncandidates: [tf_efficientnet_lite0]\n")
    with pytest.raises(EdgetlError, match="'data.seed' is 1 but 'finetune.seed' is 2"):
        read_project(project)
    project.write_text("data: images\ncandidates: [{input_size: 224}]\n")
    with pytest.raises(EdgetlError, match=r"candidates\[0\]"):
        read_project(project)
    project.write_text("candidates: [tf_efficientnet_lite0]\n")
    with pytest.raises(EdgetlError, match="key 'data'"):
        read_project(project)


def test_import_loads_no_torch():
    import subprocess
    import sys

    code = "import sys, edgetl.rank; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_rank_cli_scores_only_the_training_split(tmp_path):
    from edgetl.data import load_split

    cache = tmp_path / "cache"
    project = tmp_path / "edgetl.yaml"
    project.write_text(f"data: {DEMO}\ncandidates: [tf_efficientnet_lite0@128, tf_efficientnet_lite0@160]\n")
    proc = run_cli(EDGETL, "rank", project, "--json", "--cache-dir", cache)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    split = load_split(DEMO, 0.2, 0)  # finetune's defaults: the same training images
    assert out["split"] == "train" and out["layout"] == "class folders" and out["seed"] == 0
    assert [c["n"] for c in out["candidates"]] == [len(split.train)] * 2
    assert sorted(c["name"] for c in out["candidates"]) == ["tf_efficientnet_lite0@128", "tf_efficientnet_lite0@160"]
    assert out["candidates"][0]["logme"] >= out["candidates"][1]["logme"]
    assert all(0.0 <= c["knn_top1"] <= 1.0 for c in out["candidates"])
    # Only training images were embedded: each candidate's cache folder holds exactly them.
    folders = sorted((cache / "embeddings").iterdir())
    assert len(folders) == 2 and all(len(list(d.glob("*.npy"))) == len(split.train) for d in folders)
    # A second rank embeds nothing; the table names the best first.
    again = run_cli(EDGETL, "rank", DEMO, "--candidate", "tf_efficientnet_lite0@160", "--cache-dir", cache)
    assert again.returncode == 0, again.stderr
    assert "tf_efficientnet_lite0@160" in again.stdout and "--input-size 160" in again.stdout
    bad = run_cli(EDGETL, "rank", DEMO)
    assert bad.returncode == 2 and "--candidate" in bad.stderr
