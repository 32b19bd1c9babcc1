"""`predict` and `evaluate`: device commands (torch-free), also registered in the host CLI so
`edgetl evaluate` runs exactly the device runtime."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from edgetl.clikit import stdout
from edgetl.fsutil import atomic_write_json


@click.command("predict")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", default=3, show_default=True, help="Classes to show per image.")
@click.option("--threads", type=int, default=None, help="Inference threads (default: the target's).")
@click.option("--json", "as_json", is_flag=True, help="Print predictions as JSON.")
def predict_cmd(bundle: Path, images: tuple[Path, ...], top_k: int, threads: int | None, as_json: bool) -> None:
    """Classify IMAGES with the bundle."""
    from edgetl.runtime.images import BadImage
    from edgetl.runtime.predictor import Predictor

    predictor = Predictor.open(bundle, threads=threads)
    results, errors = [], []
    for path in images:
        try:
            results += predictor.predict(path, top_k=top_k)
        except BadImage as exc:
            errors.append(str(exc))
    if as_json:
        click.echo(json.dumps({"predictions": [p.to_dict() for p in results], "errors": errors}, indent=2))
    else:
        table = Table(title=f"{bundle} ({predictor.manifest['precision']}, {predictor.manifest['backend']})")
        for col in ("image", "label", "score", f"top-{top_k}", "ms"):
            table.add_column(col)
        for p in results:
            others = ", ".join(f"{lab} {s:.2f}" for lab, s in p.top_k[1:])
            table.add_row(p.source, p.label, f"{p.score:.3f}", others, f"{p.timing_ms['inference']:.1f}")
        stdout.print(table)
        for e in errors:
            click.echo(f"error: {e}", err=True)
    if errors:
        raise SystemExit(1)


@click.command("evaluate")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the metrics JSON here.")
@click.option("--threads", type=int, default=None, help="Inference threads (default: the target's).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics JSON.")
def evaluate_cmd(bundle: Path, data: Path, out: Path | None, threads: int | None, as_json: bool) -> None:
    """Score the bundle on DATA/<class>/ images with the device runtime."""
    from edgetl.runtime.evaluate import evaluate_folder

    metrics = evaluate_folder(bundle, data, threads=threads)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, metrics)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        stdout.print(f"{bundle}: top1 {metrics['top1']:.4f}, balanced accuracy {metrics['balanced_accuracy']:.4f} "
                     f"on {metrics['n']} images ({metrics['precision']}, {metrics['latency_ms']['inference_mean']:.1f} "
                     f"ms/image, {metrics['latency_ms']['threads']} threads)" + (f"; wrote {out}" if out else ""))
