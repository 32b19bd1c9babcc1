"""Regenerate tests/data/sign-digits-demo: 24 images per class (seed 0) from the shared
Sign Language Digits set, skipping the three full-resolution originals.

    .venv/bin/python benchmarks/make_demo_set.py
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "sign_language_digits"
TARGET = REPO / "tests" / "data" / "sign-digits-demo"
PER_CLASS = 24
MAX_BYTES = 100_000  # leaves out the 3024x3024 photos; the demo set stays under 5 MB


def main() -> None:
    rng = random.Random(0)
    total = 0
    for label in sorted(p.name for p in SOURCE.iterdir() if p.is_dir()):
        files = sorted(f for f in (SOURCE / label).iterdir() if f.stat().st_size < MAX_BYTES)
        (TARGET / label).mkdir(parents=True, exist_ok=True)
        for f in rng.sample(files, PER_CLASS):
            shutil.copyfile(f, TARGET / label / f.name)
            total += f.stat().st_size
    print(f"{TARGET}: {PER_CLASS} images x 10 classes, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
