"""Which INT8 route for TFLite: PT2E (litert-torch + torchao) or ai-edge-quantizer?

    .venv/bin/python benchmarks/bench_int8_routes.py runs/h-lin --work /tmp/int8-routes

Both calibrate on the same stratified training images (recipe `minmax`'s selection) and are
scored on the run's validation split with the same head; latency is batch 1 at 2 threads,
the variants interleaved. edgetl ships ai-edge-quantizer; this script is the evidence.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from bench_tflite import time_variants  # noqa: E402  (the same interleaved timing)


def pt2e_int8(module, calibration: list[np.ndarray], out: Path) -> None:
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    litert_torch.config.show_progress = False
    nhwc = litert_torch.to_channel_last_io(module.eval(), args=[0]).eval()
    sample = (torch.from_numpy(calibration[0]),)
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    prepared = prepare_pt2e(torch.export.export(nhwc, sample).module(), quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(torch.from_numpy(x))
    converted = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
    litert_torch.convert(converted, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from edgetl.data import split_from_record
    from edgetl.formats.tflite import convert_fp32, describe_io
    from edgetl.model import load_run
    from edgetl.quantize.recipes import load_recipe, select_calibration_images
    from edgetl.formats.tflite import quantize_int8
    from edgetl.backends import open_backend

    run = load_run(args.run)
    split = split_from_record(json.loads((args.run / "metrics.json").read_text())["data"])
    preprocess = run.preprocess.with_layout("NHWC")
    recipe = load_recipe("minmax")
    train_paths, train_y = zip(*split.train)
    calibration = [preprocess.batch([p]) for p in select_calibration_images(list(train_paths), list(train_y), recipe)]
    val = preprocess.batch([p for p, _ in split.val])
    y_val = np.array([c for _, c in split.val])
    weight, bias = run.model.head.weight.detach().numpy(), run.model.head.bias.detach().numpy()

    paths, seconds = {}, {}
    t0 = time.perf_counter()
    paths["fp32"] = args.work / "fp32.tflite"
    convert_fp32(run.backbone, preprocess.size, "NHWC", paths["fp32"])
    seconds["fp32"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    paths["int8 ai-edge-quantizer"] = args.work / "aeq.tflite"
    io = describe_io(paths["fp32"], "NHWC")
    quantize_int8(paths["fp32"], paths["int8 ai-edge-quantizer"], calibration, recipe,
                  io["input"]["signature_input"], io["input"]["signature"])
    seconds["int8 ai-edge-quantizer"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    paths["int8 PT2E"] = args.work / "pt2e.tflite"
    pt2e_int8(run.backbone, calibration, paths["int8 PT2E"])
    seconds["int8 PT2E"] = time.perf_counter() - t0

    backends = {name: open_backend("tflite", p, {"input": {"shape": [1, *val.shape[1:]]}}, 2) for name, p in paths.items()}
    embeddings = {name: b.run(val) for name, b in backends.items()}
    latency = time_variants({name: (lambda b=b: b.run(val[:1])) for name, b in backends.items()}, 10, args.runs)

    table = Table(title=f"INT8 routes on {args.run} ({len(y_val)} val images, {len(calibration)} calibration images)")
    for col in ("variant", "top1", "max |emb - fp32 emb|", "ms (2 thr, median)", "size MB", "build s"):
        table.add_column(col)
    for name in backends:
        top1 = float(((embeddings[name] @ weight.T + bias).argmax(1) == y_val).mean())
        dev = float(np.abs(embeddings[name] - embeddings["fp32"]).max())
        table.add_row(name, f"{top1:.4f}", f"{dev:.3f}", f"{latency[name]:.2f}",
                      f"{paths[name].stat().st_size / 1e6:.2f}", f"{seconds[name]:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
