"""Backbone speed on this CPU per tensor layout and chunk size (edgetl/transfer/cpu.py).

For each setting: inference ms per image (embedding, validation), and training ms per image
for a partial (top 3 stages) and a full step, a 32-image batch run as chunks whose gradients
are summed. Also the kernel (sys) CPU time, which shows the page-zeroing cost of big batches.

    .venv/bin/python benchmarks/bench_cpu_forward.py [--backbone tf_efficientnet_lite0] [--repeat 4]
"""

from __future__ import annotations

import resource
import time

import click
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from edgetl.backbones import create_architecture, get_spec
from edgetl.transfer.strategies import freeze_for, set_train_mode
from edgetl.model import Classifier

SETTINGS = [("contiguous (NCHW)", 32), ("channels_last", 32), ("contiguous (NCHW)", 16), ("channels_last", 16),
            ("channels_last", 8)]
BATCH = 32


def cpu_seconds() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def prepared(backbone: str, layout: str, strategy: str | None):
    torch.manual_seed(0)
    spec = get_spec(backbone)
    model = Classifier(create_architecture(backbone), spec.embedding_dim, 10, 0.2)
    x = torch.randn(BATCH, 3, spec.size, spec.size)
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if strategy:
        freeze_for(strategy, model.backbone, 3)
    return model, x


def timed(step, repeat: int) -> tuple[float, float]:
    """Best wall time of `repeat` runs after one warm-up, and the sys CPU seconds over them."""
    step()
    best, (_, sys0) = float("inf"), cpu_seconds()
    for _ in range(repeat):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    return best, cpu_seconds()[1] - sys0


@click.command()
@click.option("--backbone", default="tf_efficientnet_lite0", show_default=True)
@click.option("--repeat", default=4, show_default=True)
def main(backbone: str, repeat: int) -> None:
    table = Table(title=f"{backbone}: ms per image, {torch.get_num_threads()} threads, batch {BATCH}")
    for col in ("layout", "chunk", "inference", "(sys s)", "partial step", "full step", "(sys s)"):
        table.add_column(col, justify="right" if col != "layout" else "left")
    for layout, chunk in SETTINGS:
        model, x = prepared(backbone, layout, None)
        model.eval()

        def infer():
            with torch.inference_mode():
                for s in range(0, BATCH, chunk):
                    model(x[s:s + chunk])

        t_inf, sys_inf = timed(infer, repeat)
        row, sys_train = [], 0.0
        for strategy in ("partial", "full"):
            model, x = prepared(backbone, layout, strategy)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            y = torch.randint(0, 10, (BATCH,))
            set_train_mode(model)

            def train_step():
                opt.zero_grad()
                for s in range(0, BATCH, chunk):
                    (nn.functional.cross_entropy(model(x[s:s + chunk]), y[s:s + chunk]) * (chunk / BATCH)).backward()
                opt.step()

            t, s = timed(train_step, repeat)
            row.append(f"{t / BATCH * 1000:.1f}")
            sys_train += s
        table.add_row(layout, str(chunk), f"{t_inf / BATCH * 1000:.1f}", f"{sys_inf:.1f}", *row, f"{sys_train:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
