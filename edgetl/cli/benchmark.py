"""`edgetl-device benchmark`: the click shell over edgetl.runtime.benchmark (registered on the
device CLI in device.py). Imports no torch, timm or onnx (tests/test_build.py runs it blocked)."""

from __future__ import annotations

from pathlib import Path

import click

from edgetl.cli.common import check_writable, escape, json_text, progress_bars, stdout

MAX_THREADS = 256  # edgetl.backends.MAX_THREADS
BACKEND_NAMES = ("tflite", "onnxruntime", "tensorrt")  # edgetl.backends.BACKENDS, without importing it here


@click.command("benchmark")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--runs", type=click.IntRange(1, 100000), default=50, show_default=True, help="Timed runs.")
@click.option("--warmup", type=click.IntRange(0, 100000), default=10, show_default=True,
              help="Untimed runs first (weight packing, arena allocation).")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None,
              help="Inference threads (default: the target's, at most this machine's CPUs).")
@click.option("--backend", type=click.Choice(BACKEND_NAMES), default=None,
              help="Backend to time (default: the bundle's). onnxruntime times a Jetson bundle's ONNX on a host "
                   "without TensorRT.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the JSON here (for `edgetl build --device-results`).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def benchmark_cmd(bundle: Path, runs: int, warmup: int, threads, backend, out, as_json: bool) -> None:
    """Time BUNDLE's model: warm-up runs, then RUNS single-image runs; median and p90.

    Like LiteRT's benchmark_model: an already preprocessed input, the target's thread count.
    The JSON names the bundle's target and sha256, so `edgetl build --device-results FILE`
    applies it to exactly this bundle.

    \b
    Examples:
      edgetl-device benchmark dist/rpi5
      edgetl-device benchmark dist/candidates/rpi5/tf_efficientnet_lite0 --json > rpi5-lite0.json
      edgetl-device benchmark dist/jetson-orin-nano --backend onnxruntime --runs 20
    """
    from edgetl.core.fsutil import atomic_write_json
    from edgetl.runtime.benchmark import BenchmarkConfig, benchmark_bundle

    check_writable(out)
    with progress_bars():
        result = benchmark_bundle(bundle, BenchmarkConfig(runs=runs, warmup=warmup, threads=threads, backend=backend))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, result)
    if as_json:
        click.echo(json_text(result))
        return
    from rich.table import Table

    lat = result["latency_ms"]
    table = Table(title=escape(f"{bundle}: {result['target']} {result['precision']} ({result['backend']}, "
                               f"{result['threads']} threads)"),
                  caption=f"{result['runs']} runs after {result['warmup']} warm-up · {result['machine']['cpu'] or '?'}")
    for col in ("median ms", "p90 ms", "mean ms", "min ms", "max ms", "preprocess ms"):
        table.add_column(col, justify="right")
    table.add_row(*(f"{v:.2f}" for v in (lat["median"], lat["p90"], lat["mean"], lat["min"], lat["max"],
                                         result["preprocess_ms"])))
    stdout.print(table)
