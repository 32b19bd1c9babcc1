"""`edgetl`: the host CLI. Thin: parse options (generated from the config dataclasses), call
the public API, print."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from edgetl.adapt.methods import METHODS as ADAPT_METHODS
from edgetl.cli.common import FiniteFloat, escape, json_text, progress_bars, run_group, setup_logging, stdout
from edgetl.cli.options import config_options
from edgetl.exporter import ExportConfig
from edgetl.transfer.config import FinetuneConfig


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """edgetl: fine-tune a compact backbone, compile it per edge device, ship a bundle.

    \b
    Typical flow:
      edgetl finetune images/ --out runs/a            # train (transfer learning)
      edgetl export runs/a --target rpi5 --out dist/rpi5
      edgetl-device predict dist/rpi5 photo.jpg       # on the board, no torch

    Add --debug anywhere to see tracebacks.
    """
    setup_logging(verbose)


def print_metrics(title: str, metrics: dict, as_json: bool) -> None:
    from rich.table import Table

    if as_json:
        click.echo(json.dumps({k: v for k, v in metrics.items() if k not in ("history", "data")}, ensure_ascii=False))
        return
    table = Table(title=escape(title))
    table.add_column("class")
    table.add_column("recall", justify="right")
    table.add_column("images", justify="right")
    for label, row in metrics["per_class"].items():
        table.add_row(escape(label), f"{row['recall']:.3f}", str(row["support"]))
    table.add_section()
    table.add_row("top1", f"{metrics['top1']:.4f}", str(metrics["n"]))
    table.add_row("balanced accuracy", f"{metrics['balanced_accuracy']:.4f}", "")
    stdout.print(table)


@cli.command(context_settings={"max_content_width": 100})
@click.argument("data", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Run folder to write.")
@config_options(FinetuneConfig)
@click.option("--target-images", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Unlabeled field images: adapt the fine-tuned run to them (OUT is the adapted run).")
@click.option("--adapt", "adapt_method", type=click.Choice(ADAPT_METHODS), default=None,
              help="With --target-images: the adaptation, as `edgetl adapt` (default auto).")
@click.option("--task", "tasks", multiple=True, metavar="NAME=CSV|DIR",
              help="An extra task on the same backbone: CSV rows `file,label`, file relative to DATA, or a folder "
                   "DIR/<label>/<image> of the same images (matched by content) (repeatable). The class folders "
                   "stay the primary task, 'default'.")
@click.option("--task-weight", "task_weights", multiple=True, metavar="NAME=W",
              help="A task's loss weight, above 0 (default 1; NAME may be 'default'). With --strategy linear the "
                   "heads are independent, so the weights do not change them; with partial/full they weigh each "
                   "task's loss in the joint fine-tuning of the backbone.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def finetune(data, out, target_images, adapt_method, tasks, task_weights, as_json, **options):
    """Fine-tune a pretrained backbone on a folder of images.

    DATA is either DATA/train/<class>/* + DATA/val/<class>/*, or DATA/<class>/* split here
    (stratified, seeded). Unreadable files are reported by name and skipped.

    \b
    Writes OUT/model.pt (loads with torch.load(weights_only=True)), OUT/labels.txt,
    OUT/metrics.json (top1, balanced_accuracy, n, per_class, confusion, strategy, history)
    and OUT/training_curve.png.

    \b
    Examples:
      edgetl finetune data/hymenoptera --strategy linear --out runs/h-lin
      edgetl finetune data/digits --val-split 0.2 --strategy partial --unfreeze 3 --out runs/d
      edgetl finetune data/insects --strategy linear --input-size 288 --out runs/i   # small objects
      edgetl finetune data/parts --backbone mobilenetv3_large_100 --weights mnv3.pth --out runs/m
      torchrun --nproc-per-node 2 -m edgetl.cli.host finetune data/digits --strategy partial --out runs/d2
      edgetl finetune data/hymenoptera --target-images field/ --adapt align --out runs/h-field
      edgetl finetune data/digits --strategy linear --task parity=parity.csv --out runs/d-tasks

    \b
    With --target-images, OUT is the run adapted to those unlabeled images exactly as
    `edgetl adapt` does it (see `edgetl adapt --help`); metrics.json records the adaptation
    and, under "unadapted", the fine-tuned model's validation figures before it.
    """
    import edgetl
    from edgetl.transfer.distributed import launched_rank

    if launched_rank():  # under torchrun the other ranks stay quiet: rank 0 logs and prints the result
        logging.getLogger("edgetl").setLevel(logging.WARNING)
    if adapt_method is not None and target_images is None:
        raise click.UsageError("--adapt needs --target-images DIR (the unlabeled field images to adapt to); pass it, "
                               "or drop --adapt")
    from edgetl.errors import EdgetlError
    from edgetl.multitask import parse_assignments

    try:  # NAME=VALUE syntax is usage (exit 2); what the values hold is checked by finetune
        tasks = parse_assignments(tasks, "--task")
        weights = {name: float(value) for name, value in parse_assignments(task_weights, "--task-weight").items()}
    except (EdgetlError, ValueError) as exc:
        raise click.UsageError(f"{exc}; --task-weight takes NAME=NUMBER" if isinstance(exc, ValueError) else str(exc))
    with progress_bars():
        run = edgetl.finetune(data, out, target_images=target_images, adapt=adapt_method, tasks=tasks,
                              task_weights=weights, **options)
    if launched_rank():
        return
    print_metrics(f"{run.metrics['strategy']} · validation ({out})", run.metrics, as_json)
    if not as_json:
        if "adaptation" in run.metrics:
            _print_adaptation(run.metrics)
        for name, m in (run.metrics.get("tasks") or {}).items():
            click.echo(f"task {name}: top1 {m['top1']:.4f}, balanced accuracy {m['balanced_accuracy']:.4f} on "
                       f"{m['n']} validation images ({len(m['labels'])} labels)")
        click.echo(f"run written to {out}/ (model.pt, labels.txt, metrics.json, training_curve.png)")


@cli.command("evaluate-run")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the metrics JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate_run(run, data, out, as_json):
    """Evaluate a training checkpoint (torch) on DATA/<class>/* (or DATA/val/<class>/*).

    \b
    Example:
      edgetl evaluate-run runs/h-lin data/hymenoptera/val
    """
    from edgetl.cli.common import check_writable
    from edgetl.evaluate import evaluate_run_on_folder

    check_writable(out)
    with progress_bars():
        metrics = evaluate_run_on_folder(run, data, out)
    print_metrics(f"{run} on {data}", metrics, as_json)


@cli.command("adapt")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--target-images", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Unlabeled images from the field camera (searched recursively).")
@click.option("--adapt", "method", type=click.Choice(ADAPT_METHODS), default="auto",
              show_default=True, help="align: embedding statistics folded into the head; coral: with correlations "
                                      "(needs 2 images per embedding dimension); adabn: BatchNorm statistics; dann: "
                                      "domain-adversarial fine-tuning; selftrain: the head re-trained on the source labels "
                                      "and the field images' pseudo-labels (keeps clean accuracy); auto: chosen "
                                      "without labels.")
@click.option("--strength", type=FiniteFloat(0, 1), default=1.0, show_default=True,
              help="align/coral/adabn: from the run (0) to the full adaptation (1); auto chooses.")
@click.option("--tolerance", type=FiniteFloat(0, 100), default=1.0, show_default=True,
              help="Points of source (selection split) top-1 the adapted model may lose; auto's filter.")
@click.option("--dann-strategy", type=click.Choice(["partial", "full"]), default=None,
              help="dann: train the run's top stages (its --unfreeze, 3) or all (default: the run's strategy if "
                   "partial/full, else partial).")
@click.option("--dann-epochs", type=click.IntRange(1, 1000), default=None,
              help="dann: maximum epochs (default: the run's if it fine-tuned with that strategy, else 12/10).")
@click.option("--cache-dir", default=None, help="Embedding cache (default $EDGETL_CACHE or ~/.cache/edgetl).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Adapted run folder to write.")
@click.option("--json", "as_json", is_flag=True, help="Print the adaptation record as JSON.")
def adapt_cmd(run, target_images, method, strength, tolerance, dann_strategy, dann_epochs, cache_dir, out, as_json):
    """Adapt RUN to unlabeled field images; write a normal run (export it as usual).

    The adapted run records the method, its parameters and image counts in metrics.json
    ("adaptation"), the source run's data split, and "calibration_images" (the field images,
    for INT8 calibration). Its reported top1 is on the run's clean validation split.

    dann trains the backbone (minutes on a CPU): source classification plus a domain
    classifier behind a gradient reversal layer; it stops early on the selection split, or
    when the domain classifier is at chance (edgetl/adapt/dann.py states the rule). auto
    trains it too, as one of its candidates.

    selftrain keeps the backbone and re-trains the head on the source labels plus the field
    images' pseudo-labels (teacher: align and adabn): on a simulated cheap camera it
    recovered the most and kept clean accuracy (docs/benchmarks.md).

    \b
    Examples:
      edgetl adapt runs/a --target-images field/ --out runs/a-field
      edgetl adapt runs/a --target-images field/ --adapt selftrain --out runs/a-field
      edgetl adapt runs/a --target-images field/ --adapt align --strength 0.5 --out runs/a-field
      edgetl adapt runs/a --target-images field/ --adapt dann --dann-strategy partial --out runs/a-dann
    """
    from edgetl.adapt import adapt_run

    if strength <= 0:
        raise click.BadParameter("must be above 0", param_hint="--strength")
    dann = {k: v for k, v in (("strategy", dann_strategy), ("epochs", dann_epochs)) if v is not None}
    with progress_bars():
        adapted = adapt_run(run, target_images, method, out, strength=strength, tolerance=tolerance,
                            cache_dir=cache_dir, dann=dann)
    if as_json:
        click.echo(json_text(adapted.metrics["adaptation"]))
        return
    _print_adaptation(adapted.metrics)
    click.echo(f"adapted run written to {out}/")


def _print_adaptation(metrics: dict) -> None:
    """One line: the method, dann's stop, the source check and the clean validation score."""
    a = metrics["adaptation"]
    c = a["source_check"]
    stop = a.get("training", {}).get("stopped")
    stopped = f"; stopped after epoch {stop['after_epoch']} ({stop['rule']})" if stop else ""
    stdout.print(escape(f"{a['method']} (strength {a['strength']:g}) from {a['n_target']} target images{stopped}; "
                        f"source check on {c['n']} {c['split']} images: {100 * c['source_top1']:.1f}% -> "
                        f"{100 * c['adapted_top1']:.1f}% ({'pass' if c['passed'] else 'over the tolerance'}); "
                        f"clean val top1 {metrics['top1']:.4f} (source {a['source_top1']:.4f})"))


@cli.command()
def backbones():
    """List the supported backbones and their preprocessing."""
    from rich.table import Table

    from edgetl.backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, package_weights_file

    def norm(values, imagenet) -> str:
        return "ImageNet" if tuple(values) == imagenet else ",".join(dict.fromkeys(f"{v:g}" for v in values))

    def weights(spec) -> str:
        if not spec.weight_package:
            return "--weights PATH"
        return "installed" if package_weights_file(spec) else "not installed"

    table = Table(title="backbones",
                  caption="weights: the default ones. --input-size N runs a backbone at N px, same crop fraction")
    for col in ("name", "input", "resize", "mean", "std", "interp", "dim", "weights"):
        table.add_column(col, no_wrap=col == "name")
    for spec in BACKBONES.values():
        p = spec.preprocess()
        table.add_row(spec.name, str(spec.size), str(p.resize), norm(spec.mean, IMAGENET_MEAN),
                      norm(spec.std, IMAGENET_STD), spec.interpolation, str(spec.embedding_dim), weights(spec))
    stdout.print(table)


@cli.command("rank")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--candidate", "candidates", multiple=True, metavar="NAME[@SIZE]",
              help="A backbone (at an input size) to score; repeat it. Default: the project file's candidates.")
@click.option("--val-split", type=FiniteFloat(0.0, 1.0), default=None,
              help="Validation fraction of a folder without train/ and val/ (as finetune: 0.2).")
@click.option("--seed", type=int, default=None, help="Split seed (as finetune: 0).")
@click.option("--cache-dir", default=None, help="Embedding cache (default $EDGETL_CACHE or ~/.cache/edgetl).")
@click.option("--json", "as_json", is_flag=True, help="Print the ranking as JSON.")
def rank_cmd(source: Path, candidates, val_split, seed, cache_dir, as_json):
    """Rank candidate backbones by transferability, before fine-tuning any.

    SOURCE is a project file (edgetl.yaml: its `data` and `candidates`) or an image folder
    with --candidate options. Each candidate embeds the training split once (cached, shared
    with finetune) and is scored by LogME (You et al., ICML 2021; higher is better) and
    leave-one-out 5-NN accuracy. The validation split is never looked at.

    \b
    Examples:
      edgetl rank edgetl.yaml
      edgetl rank data/digits --candidate tf_efficientnet_lite0 --candidate tf_efficientnet_lite0@288
    """
    from rich.table import Table

    from edgetl.rank import parse_candidate, rank, read_project

    data, chosen = source, [parse_candidate(c) for c in candidates]
    if source.is_file():
        project = read_project(source)
        data, chosen = project.data, chosen or project.candidates
        val_split = project.val_split if val_split is None else val_split
        seed = project.seed if seed is None else seed
    elif not chosen:
        raise click.UsageError("pass --candidate NAME[@SIZE] (repeatable), or a project file instead of a folder")
    with progress_bars():
        # Unset: finetune's defaults, so rank scores the very images finetune trains on.
        ranking = rank(data, chosen, val_split=FinetuneConfig.val_split if val_split is None else val_split,
                       seed=FinetuneConfig.seed if seed is None else seed, cache_dir=cache_dir)
    if as_json:
        click.echo(json_text(ranking.to_dict()))
        return
    n = ranking.scores[0].n
    table = Table(title=escape(f"transferability on {ranking.data} ({n} training images, {len(ranking.labels)} classes)"),
                  caption="best first by LogME (nats per image, higher is better; compare on the same data only) · "
                          f"{ranking.k}-NN: leave-one-out accuracy · embedded: images not in the cache")
    for col in ("#", "candidate", "LogME", f"{ranking.k}-NN top1", "embedded", "seconds"):
        table.add_column(col, justify="left" if col == "candidate" else "right", no_wrap=col == "candidate")
    for i, s in enumerate(ranking.scores, 1):
        table.add_row(str(i), s.name, f"{s.logme:.4f}", f"{s.knn_top1:.4f}", str(s.embedded),
                      f"{s.embed_seconds + s.score_seconds:.1f}")
    stdout.print(table)
    best = ranking.scores[0]
    split = f" --val-split {ranking.val_split:g} --seed {ranking.seed}" if ranking.val_split is not None else ""
    click.echo(f"ranked in {ranking.seconds:.1f} s; fine-tune the best with: edgetl finetune {ranking.data} "
               f"--backbone {best.backbone} --input-size {best.input_size}{split} --out RUN")


@cli.command("cache")
@click.option("--cache-dir", default=None, help="Cache folder (default $EDGETL_CACHE or ~/.cache/edgetl).")
@click.option("--clear", is_flag=True, help="Delete the cached embeddings, backbones and build stages.")
def cache_cmd(cache_dir, clear):
    """Show what the cache holds, or clear it.

    A linear probe embeds each image once per backbone and keeps the resolved pretrained
    backbone, so a rerun over the same images takes seconds; `edgetl build` keeps each
    finished stage (fine-tune, export, verify, benchmark) under build/. Everything here can
    be recomputed; clearing only makes the next run slow again.

    \b
    Examples:
      edgetl cache
      edgetl cache --clear
    """
    from rich.table import Table

    from edgetl.transfer.cachedir import cache_entries, clear_cache
    from edgetl.transfer.features import default_cache_dir

    root = cache_dir or default_cache_dir()
    if clear:
        click.echo(f"cleared {root}: {clear_cache(root) / 1e6:.1f} MB freed")
        return
    entries = cache_entries(root)
    table = Table(title=f"edgetl cache: {escape(str(root))}")
    for col in ("kind", "what", "files", "MB", "folder"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.kind, escape(e.what), str(e.files), f"{e.bytes / 1e6:.1f}", escape(e.path.name))
    table.add_section()
    table.add_row("total", "", str(sum(e.files for e in entries)), f"{sum(e.bytes for e in entries) / 1e6:.1f}", "")
    stdout.print(table)


@cli.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print the targets as JSON.")
def targets_cmd(as_json: bool) -> None:
    """List the deployment targets (targets/*.yaml)."""
    from rich.table import Table

    from edgetl.targets import list_targets

    targets = list_targets()
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in targets], indent=2))
        return
    table = Table(title="edgetl targets", caption="* the default precision · budget: latency per image, ms · "
                                                  "tol.: accepted top-1 loss when quantized, points")
    for col in ("name", "runtime", "chip", "precisions", "threads", "layout", "budget", "tol.", "calibration"):
        table.add_column(col, no_wrap=col in ("name", "precisions", "runtime"))  # names are what --target takes
    for t in targets:
        precisions = ", ".join(f"{p}*" if p == t.default_precision else p for p in t.precisions)
        table.add_row(t.name, t.runtime, t.cpu or t.gpu_arch or "-", precisions, str(t.threads), t.layout,
                      f"{t.latency_budget_ms:g}", f"{t.accuracy_tolerance_pts:g}", t.calibration)
    stdout.print(table)


@cli.command("export")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--target", "target", required=True, help="Target name (see `edgetl targets`) or a target YAML path.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Bundle folder to write: new, empty, or an earlier bundle.")
@config_options(ExportConfig)
@click.option("--allow-accuracy-drop", is_flag=True, help="Exit 0 even if the quantized model misses the tolerance.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export_cmd(run: Path, target: str, out: Path, allow_accuracy_drop: bool, as_json: bool, **options) -> None:
    """Export RUN as a bundle for a target, evaluated with the device runtime.

    Exit 1 when the quantized model misses the target's accuracy tolerance (the bundle and
    its metrics are written either way).
    """
    import logging
    import sys

    import edgetl
    from rich.table import Table

    with progress_bars():
        result = edgetl.export(run, target, out, **options)
    manifest = result.manifest
    if as_json:
        click.echo(json.dumps(manifest.to_json(), indent=2, ensure_ascii=False))
    else:
        m = manifest.metrics
        table = Table(title=escape(f"{out}: {manifest.target_name} {manifest.precision} ({manifest.format})"))
        for col in ("model", "top1", "balanced acc.", "size MB", "host ms/img"):
            table.add_column(col)
        for prec in dict.fromkeys(["fp32", manifest.precision]):
            table.add_row(prec, f"{m[prec]['top1']:.4f}", f"{m[prec]['balanced_accuracy']:.4f}",
                          f"{m['size_bytes'][prec] / 1e6:.2f}", f"{m[prec]['latency_ms']['inference_mean']:.1f}")
        stdout.print(table)
        if result.gate:
            g = result.gate
            verdict = "[green]pass[/]" if g["passed"] else ("[red]FAIL (accepted)[/]" if allow_accuracy_drop
                                                            else "[red]FAIL[/]")
            stdout.print(f"accuracy gate: drop {g['drop_pts']:.2f} pts, tolerance {g['tolerance_pts']:g} pts: {verdict}")
        if manifest.extra.get("recovery"):
            _print_recovery(manifest.extra["recovery"])
    if not result.passed:
        if allow_accuracy_drop:
            logging.getLogger("edgetl").warning("%s; accepted (--allow-accuracy-drop)", result.message)
        else:
            print(f"error: {result.message}; try another --calib-recipe, or pass --allow-accuracy-drop to accept it",
                  file=sys.stderr)
            sys.exit(1)


def _print_recovery(record: dict) -> None:
    """The recovery ladder's steps (edgetl/recovery.py) under the export table."""
    from rich.table import Table

    from edgetl.recovery import describe

    t = record["trigger"]
    table = Table(title=f"recovery: the gate failed at drop {t['drop_pts']:.2f} pts", title_justify="left")
    for col in ("step", "what", "top1", "drop pts", "host ms/img", "size MB", "verdict"):
        table.add_column(col, overflow="fold")
    for s in record.get("steps", []):
        if "skipped" in s:
            table.add_row(s["step"], escape(f"{s['name']}: {s['skipped']}"), "-", "-", "-", "-", "skipped")
            continue
        won = record.get("winner") == s["step"] and s["passed"]
        table.add_row(s["step"], escape(s["what"]), f"{s['top1']:.4f}", f"{s['drop_pts']:.2f}", f"{s['latency_ms']:.1f}",
                      f"{s['size_bytes'] / 1e6:.2f}", "[green]won[/]" if won else ("pass" if s["passed"] else "fail"))
    stdout.print(table)
    stdout.print(escape(describe(record)))


from edgetl.cli.device import evaluate_cmd  # noqa: E402  (the device runtime, run on the host)

cli.add_command(evaluate_cmd)

from edgetl.cli.build import build_cmd  # noqa: E402  (edgetl build: edgetl.yaml -> every target's bundle)

cli.add_command(build_cmd)


def main() -> None:
    run_group(cli)


if __name__ == "__main__":
    main()
