"""FP32 ONNX vs INT8 QDQ ONNX (the TensorRT INT8 input) top-1, per calibration recipe, on
onnxruntime CPU: the host-side accuracy proxy for the Jetson INT8 path.

    .venv/bin/python benchmarks/bench_qdq.py RUN:DATA [RUN:DATA ...] [--recipes minmax,percentile,entropy]
        [--samples 128,512] [--weights int8,float]

RUN is an `edgetl finetune` run; DATA its data folder (the run's own split is rebuilt from
its metrics.json). Calibration images come from the training split, selected by the
recipe (stratified, seeded; --samples overrides the recipe's count); top-1 is on the
validation split. Latency is onnxruntime CPU,
batch 1, 2 threads, FP32 and INT8 interleaved. `--weights` picks how the QDQ file stores conv
weights: `int8` (shipped: int8 initializers read by DequantizeLinear) and/or `float` (the
form before issue 16: float weights behind a QuantizeLinear/DequantizeLinear pair); the size
columns compare each file with the FP32 ONNX.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgetl.data import load_split, split_from_record
from edgetl.formats.onnx_tensorrt import export_onnx
from edgetl.model import load_run
from edgetl.formats.onnx_tensorrt import quantize_qdq
from edgetl.quantize.recipes import load_recipe, select_calibration_images


def session(path: Path, threads: int = 2):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def embed(sess, x: np.ndarray, batch: int = 32) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def latency_ms(sessions: dict, x1: np.ndarray, rounds: int = 30) -> dict:
    times = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, {s.get_inputs()[0].name: x1})
    for _ in range(rounds):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: x1})
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def bench(run_dir: Path, data: Path, recipes: list[str], samples: list[int], opset: int, console: Console,
          weights: tuple[str, ...] = ("int8",)) -> list[dict]:
    run = load_run(run_dir)
    record = json.loads((run_dir / "metrics.json").read_text()).get("data")
    split = split_from_record(record) if record and "val_files" in record else load_split(data, 0.2, 0)
    w = run.model.head.weight.detach().numpy()
    b = run.model.head.bias.detach().numpy()
    pre = run.preprocess.with_layout("NCHW")
    val_paths = [p for p, _ in split.val]
    y = np.array([label for _, label in split.val])
    t0 = time.perf_counter()
    x_val = pre.batch(val_paths)
    console.log(f"{data.name}: {len(val_paths)} val images preprocessed in {time.perf_counter() - t0:.0f} s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(run.model.backbone, pre.size, Path(tmp) / "fp32.onnx", opset).path
        s32 = session(fp32)
        top1_fp32 = float(np.mean((embed(s32, x_val) @ w.T + b).argmax(1) == y))
        for name, n, form in ((r, n, f) for r in recipes for n in samples for f in weights):
            recipe = load_recipe(name)
            recipe = replace(recipe, samples=n) if n else recipe
            calib_paths = select_calibration_images([p for p, _ in split.train], [lab for _, lab in split.train], recipe)
            calib = [pre.batch([p]) for p in calib_paths]
            t = time.perf_counter()
            qdq = quantize_qdq(fp32, Path(tmp) / f"int8-{name}-{n}-{form}.onnx", calib, recipe,
                               float_weights=form == "float").path
            quant_s = time.perf_counter() - t
            s8 = session(qdq)
            top1_int8 = float(np.mean((embed(s8, x_val) @ w.T + b).argmax(1) == y))
            lat = latency_ms({"fp32": s32, "int8": s8}, x_val[:1])
            rows.append({"data": data.name, "n_val": len(y), "recipe": name, "method": recipe.method,
                         "calib_images": len(calib), "weights": form, "fp32_bytes": fp32.stat().st_size,
                         "int8_bytes": qdq.stat().st_size, "top1_fp32": top1_fp32, "top1_int8": top1_int8,
                         "drop_pts": (top1_fp32 - top1_int8) * 100, "quantize_s": quant_s,
                         "fp32_ms": lat["fp32"], "int8_ms": lat["int8"]})
            console.log(rows[-1])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", help="RUN:DATA")
    ap.add_argument("--recipes", default="minmax,percentile,entropy")
    ap.add_argument("--samples", default="0", help="Calibration image counts to try (0: the recipe's own).")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--weights", default="int8", help="QDQ weight storage to try: int8 (shipped), float, or both.")
    ap.add_argument("--json", type=Path, help="Also write the rows as JSON here.")
    args = ap.parse_args()
    console = Console(width=180)  # the table stays whole in a log or pipe
    rows = []
    for pair in args.pairs:
        run_dir, data = pair.split(":", 1)
        rows += bench(Path(run_dir), Path(data), args.recipes.split(","), [int(v) for v in args.samples.split(",")],
                      args.opset, console, tuple(args.weights.split(",")))
    table = Table(title="INT8 QDQ ONNX (TensorRT input) vs FP32 ONNX, onnxruntime CPU")
    for col in ("data", "n val", "recipe", "calib imgs", "weights", "FP32 MB", "INT8 MB", "x FP32", "FP32 top1",
                "INT8 top1", "drop (pts)", "quantize s", "FP32 ms", "INT8 ms"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["data"], str(r["n_val"]), r["recipe"], str(r["calib_images"]), r["weights"],
                      f"{r['fp32_bytes'] / 1e6:.2f}", f"{r['int8_bytes'] / 1e6:.2f}",
                      f"{r['int8_bytes'] / r['fp32_bytes']:.3f}", f"{r['top1_fp32'] * 100:.2f}",
                      f"{r['top1_int8'] * 100:.2f}", f"{r['drop_pts']:+.2f}", f"{r['quantize_s']:.0f}",
                      f"{r['fp32_ms']:.1f}", f"{r['int8_ms']:.1f}")
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
