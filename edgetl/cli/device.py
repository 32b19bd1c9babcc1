"""`edgetl-device`: the device-side CLI. Imports no torch, timm or onnx
(tests/test_runtime_torchfree.py). Thin: parse options, call the runtime and edgetl.ondevice, print.

Exit codes: 0 done; 1 an error or a refused action; 2 bad usage; 3 the guardrail refused a
new head (the old one stays active); 4 `drift` detected drift (0: none detected).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgetl.cli.common import (FiniteFloat, check_writable, escape, json_text, one_line, progress_bars, run_group,
                               setup_logging, stderr, stdout)

GUARDRAIL_EXIT = 3
DRIFT_EXIT = 4
MAX_THREADS = 256  # edgetl.backends.MAX_THREADS; LiteRT crashes on absurd thread counts

_bundle_arg = click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
_task_opt = click.option("--task", default="default", show_default=True, help="Which head of a multi-task bundle.")
_threads_opt = click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None,
                            help="Inference threads (default: the target's).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Run, evaluate and adapt an edgetl bundle on the device.

    Add --debug anywhere to see tracebacks.
    """
    setup_logging(verbose)


# -- run and score ------------------------------------------------------------------------------
@cli.command("predict")
@_bundle_arg
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(1, 1000), default=3, show_default=True, help="Classes to show per image.")
@_threads_opt
@click.option("--json", "as_json", is_flag=True, help="Print predictions as JSON.")
def predict_cmd(bundle: Path, images: tuple[Path, ...], top_k: int, threads: int | None, as_json: bool) -> None:
    """Classify IMAGES with the bundle."""
    from rich.table import Table

    from edgetl.core.images import BadImage
    from edgetl.runtime import Predictor

    predictor = Predictor.open(bundle, threads=threads)
    results, errors = [], []
    for path in images:
        if path.is_dir():
            errors.append(f"'{path}' is a folder; pass image files (or use evaluate for class folders)")
            continue
        try:
            results += predictor.predict(path, top_k=top_k)
        except BadImage as exc:
            errors.append(str(exc))
    if as_json:
        click.echo(json_text({"predictions": [p.to_dict() for p in results], "errors": errors}))
    else:
        m = predictor.manifest
        table = Table(title=escape(f"{bundle} ({m.precision}, {m.backend})"))
        extra = [t for t in predictor.bundle.tasks if t != predictor.task]  # a column per other task
        for col in ("image", "label", "score", f"top-{top_k}", *extra, "ms"):
            table.add_column(escape(col))
        for p in results:
            others = ", ".join(f"{lab} {s:.2f}" for lab, s in p.top_k[1:])
            answers = [escape(f"{p.tasks[t]['label']} {p.tasks[t]['score']:.2f}") for t in extra]
            table.add_row(escape(p.source), escape(p.label), f"{p.score:.3f}", escape(others), *answers,
                          f"{p.timing_ms['inference']:.1f}")
        stdout.print(table)
    for e in errors:  # also with --json (where they are in the JSON too): stderr says why the exit is 1
        click.echo(f"error: {one_line(e)}", err=True)
    if errors:
        raise SystemExit(1)


@cli.command("evaluate")
@_bundle_arg
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the metrics JSON here.")
@_threads_opt
@_task_opt
@click.option("--json", "as_json", is_flag=True, help="Print the metrics JSON.")
def evaluate_cmd(bundle: Path, data: Path, out: Path | None, threads: int | None, task: str, as_json: bool) -> None:
    """Score the bundle on DATA/<class>/ images with the device runtime.

    With --task, DATA's class folders are named after that task's labels
    (e.g. DATA/even/, DATA/odd/).
    """
    from edgetl.core.fsutil import atomic_write_json
    from edgetl.runtime.evaluate import evaluate_folder

    check_writable(out)
    with progress_bars():
        metrics = evaluate_folder(bundle, data, threads=threads, task=task)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, metrics)
    if as_json:
        click.echo(json_text(metrics))
    else:
        stdout.print(escape(f"{bundle}{'' if task == 'default' else f' (task {task})'}: top1 {metrics['top1']:.4f}, balanced accuracy {metrics['balanced_accuracy']:.4f} "
                            f"on {metrics['n']} images ({metrics['precision']}, "
                            f"{metrics['latency_ms']['inference_mean']:.1f} ms/image, "
                            f"{metrics['latency_ms']['threads']} threads)" + (f"; wrote {out}" if out else "")))


@cli.command("build-engine")
@_bundle_arg
@click.option("--dla-core", type=click.IntRange(0, 15), default=None,
              help="Run on this DLA core (AGX Orin, Xavier); GPU fallback on.")
@click.option("--workspace-mb", type=click.IntRange(1, 1 << 20), default=None,
              help="Builder workspace (default: the target's).")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Timing cache to reuse and update (default: ~/.cache/edgetl/tensorrt/, per GPU and TensorRT).")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=8, show_default=True,
              help="Largest batch the engine takes.")
@click.option("--opt-batch", type=click.IntRange(1, 4096), default=1, show_default=True, help="Batch TensorRT tunes for.")
@click.option("--force", is_flag=True, help="Rebuild even if an engine for this bundle, GPU and TensorRT exists.")
@click.option("--print-trtexec", is_flag=True,
              help="Print the equivalent trtexec line (for boards without TensorRT's Python bindings) and exit.")
def build_engine_cmd(bundle: Path, dla_core, workspace_mb, timing_cache, max_batch, opt_batch, force,
                     print_trtexec) -> None:
    """Build the TensorRT engine for BUNDLE on this device (minutes; reused while the bundle,
    GPU and TensorRT version stay the same).

    \b
    Examples:
      edgetl-device build-engine dist/jetson-orin-nano
      edgetl-device build-engine dist/jetson-agx-orin --dla-core 0
      edgetl-device build-engine dist/jetson-nano --print-trtexec
    """
    from edgetl.backends.engine import ENGINE_DIR, build_engine, plan_build, trtexec_command
    from edgetl.bundle import Bundle
    from edgetl.errors import EdgetlError

    b = Bundle.open(bundle)
    if b.manifest.backend != "tensorrt":
        raise EdgetlError(f"bundle '{bundle}' is for backend '{b.manifest.backend}', not tensorrt; "
                          "export it with a Jetson --target")
    if print_trtexec:
        plan = plan_build(b.manifest, b.manifest.target["tensorrt"], dla_core, workspace_mb, max_batch, opt_batch)
        engine = bundle / ENGINE_DIR / f"{Path(plan.onnx).stem}.trtexec.engine"
        click.echo(trtexec_command(bundle, plan, engine, timing_cache))
        return
    click.echo(str(build_engine(b, dla_core, workspace_mb, timing_cache, max_batch, opt_batch, force)))


# -- adapt the head -----------------------------------------------------------------------------
_guard_opts = [
    click.option("--tolerance", type=FiniteFloat(0, 100), default=2.0, show_default=True,
                 help="Percentage points of old-class accuracy the new head may lose."),
    click.option("--force", is_flag=True, help="Activate the new head even if the guardrail refuses it."),
    click.option("--min-images", type=click.IntRange(1, 100000), default=5, show_default=True,
                 help="Fewest usable images a class needs."),
    _task_opt,
    click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
]


def _guarded(f):
    for opt in reversed(_guard_opts):
        f = opt(f)
    return f


def _finish(result, as_json: bool) -> None:
    from rich.table import Table

    if as_json:
        click.echo(json_text(result.to_dict()))
    m = result.metrics
    if not as_json:
        table = Table(title=f"{result.action}: guardrail (old-class accuracy)", title_justify="left")
        for col in ("set", "n", "before", "after", "drop (points)"):
            table.add_column(col, justify="left" if col == "set" else "right")
        for c in m["guardrail"]["checks"]:
            table.add_row(c["name"], str(c["n"]), f"{100 * c['old_accuracy']:.1f}%", f"{100 * c['new_accuracy']:.1f}%",
                          f"{c['drop_points']:.1f}")
        stdout.print(table)
    if result.activated:
        note = " [bold red](FORCED past the guardrail)[/]" if result.forced else ""
        stderr.print(f"head version {result.version} is active (parent {result.parent}); "
                     f"fitted in {m['fit_seconds']:.2f}s{note}")
        return
    print(f"error: guardrail refused the new head; version {result.parent} stays active. "
          f"{' '.join(result.reasons)}. Check the labels of the local data, or pass --force", file=sys.stderr)
    sys.exit(GUARDRAIL_EXIT)


@cli.command("add-class")
@_bundle_arg
@click.argument("name")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@_guarded
def add_class_cmd(bundle, name, images, tolerance, force, min_images, task, as_json):
    """Add class NAME to the head from a few IMAGES (files or folders) by weight imprinting."""
    from edgetl import ondevice

    with progress_bars():
        result = ondevice.add_class(bundle, name, list(images), task=task, min_images=min_images,
                                    tolerance=tolerance, force=force)
    _finish(result, as_json)


@cli.command("retrain")
@_bundle_arg
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed of the held-out split.")
@_guarded
def retrain_cmd(bundle, data, seed, tolerance, force, min_images, task, as_json):
    """Refit the head on DATA/<class>/* (old and new classes) and activate it if it passes the guardrail."""
    from edgetl import ondevice

    with progress_bars():
        result = ondevice.retrain(bundle, data, task=task, min_images=min_images, seed=seed, tolerance=tolerance,
                                  force=force)
    _finish(result, as_json)


@cli.command("adapt")
@_bundle_arg
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--strength", type=FiniteFloat(0, 1), default=1.0, show_default=True,
              help="How far from the active head (0) to the full alignment (1).")
@click.option("--tolerance", type=FiniteFloat(0, 100), default=2.0, show_default=True,
              help="Points of reference accuracy the statistics' estimation noise may cost.")
@click.option("--force", is_flag=True, help="Activate the new head even if the guardrail refuses it.")
@click.option("--min-images", type=click.IntRange(2, 1000000), default=20, show_default=True,
              help="Fewest usable images.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed of the guardrail's bootstrap draw.")
@_task_opt
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def adapt_cmd(bundle, images, strength, tolerance, force, min_images, seed, task, as_json):
    """Align the head to this camera from unlabeled IMAGES (files or folders; no labels).

    The embedding statistics of IMAGES are mapped onto those of the bundle's reference set
    and the map is folded into the active head, stored as a new head version (rollback
    undoes it). predict and evaluate use it at once.

    \b
    Examples:
      edgetl-device adapt dist/rpi5 field/
      edgetl-device adapt dist/rpi5 field/ --strength 0.5
    """
    from edgetl import ondevice

    if strength <= 0:
        raise click.BadParameter("must be above 0", param_hint="--strength")
    with progress_bars():
        result = ondevice.adapt(bundle, list(images), task=task, strength=strength, tolerance=tolerance, force=force,
                                min_images=min_images, seed=seed)
    if not as_json:
        sd = result.metrics["source_domain"]
        stderr.print(f"alignment from {result.metrics['images']} images (strength {strength:g}); on the reference "
                     f"set's own, source-domain images the head goes from {100 * sd['old_accuracy']:.1f}% to "
                     f"{100 * sd['new_accuracy']:.1f}% (expected to fall when the camera really differs)")
    _finish(result, as_json)


@cli.command("drift")
@_bundle_arg
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--permutations", type=click.IntRange(100, 100000), default=1000, show_default=True,
              help="Permutations of the two-sample test.")
@click.option("--alpha", type=FiniteFloat(0, 1), default=0.01, show_default=True,
              help="Accepted false-alarm rate: drift when the p-value is at most this (0.05 flagged 13 of 100 "
                   "clean hymenoptera subsets).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed of the permutations.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def drift_cmd(bundle, images, permutations, alpha, seed, as_json):
    """Test whether recent IMAGES differ from the bundle's reference images (MMD, RBF kernel).

    Exit 4 when drift is detected, 0 when not.

    \b
    Examples:
      edgetl-device drift dist/rpi5 recent/
      edgetl-device drift dist/rpi5 recent/ --json --permutations 5000
    """
    from edgetl import ondevice

    if not 0 < alpha < 1:
        raise click.BadParameter("must be between 0 and 1", param_hint="--alpha")
    with progress_bars():
        result = ondevice.drift(bundle, list(images), permutations=permutations, alpha=alpha, seed=seed)
    if as_json:
        click.echo(json_text(result.to_dict()))
    else:
        verdict = "[bold red]DRIFT[/]" if result.drift else "[green]no drift[/]"
        stdout.print(f"drift score (MMD^2) {result.score:.5f}, threshold {result.threshold:.5f}, p-value "
                     f"{result.p_value:.4f} (alpha {result.alpha:g}; {result.n_recent} recent vs "
                     f"{result.n_reference} reference images): {verdict}")
    if result.drift:
        sys.exit(DRIFT_EXIT)


def _percent(value) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


@cli.command("heads")
@_bundle_arg
@_task_opt
@click.option("--json", "as_json", is_flag=True, help="Print the versions (and problems) as JSON.")
def heads_cmd(bundle, task, as_json):
    """List the head versions in BUNDLE, the active one marked. Exit 1 when the store has a problem."""
    from rich.table import Table

    from edgetl import ondevice

    report = ondevice.heads(bundle, task)
    if as_json:
        click.echo(json_text(report.to_dict()))
    elif report.factory_only:
        stderr.print("no head store yet: the factory head (version 0) is active")
    else:
        table = Table(title=escape(f"heads in {bundle} (task {task}, * active)"), title_justify="left")
        for col in ("", "ver", "parent", "created (UTC)", "source", "classes", "held-out", "reference", "sha256"):
            table.add_column(col, overflow="fold")
        for v in report.versions:
            m = v.metrics if isinstance(v.metrics, dict) else {}  # informational: a hand-edited index may hold anything
            held = _percent(m.get("held_out_top1"))
            guard = m.get("guardrail") if isinstance(m.get("guardrail"), dict) else {}
            checks = {c.get("name"): c for c in guard.get("checks") or [] if isinstance(c, dict)}
            ref = _percent(checks["reference"].get("new_accuracy")) if "reference" in checks else ""
            if m.get("forced") is True:
                ref += " [red]FORCED[/]"
            table.add_row("*" if v.version == report.active else "", str(v.version),
                          "" if v.parent is None else str(v.parent), escape(v.created[:16].replace("T", " ")),
                          escape(v.source), str(len(v.labels)), held, ref, escape(str(v.sha256)[:8]))
        stdout.print(table)
    for p in report.problems:
        print(f"problem: {one_line(p)}", file=sys.stderr)
    if report.problems:
        intact = [v.version for v in report.versions if v.version not in report.damaged]
        shown = ", ".join(map(str, report.damaged))
        backup = f"restore '{bundle / 'heads'}' from a backup to recover version(s) {shown}"
        task_opt = "" if task == "default" else f" --task {task}"
        if report.active in report.damaged and intact:
            fix = (f"the active version {report.active} is damaged: `edgetl-device rollback '{bundle}' {max(intact)}"
                   f"{task_opt}` makes an intact version active; {backup}")
        elif report.active in report.damaged:
            fix = f"no version is intact: {backup}, or move it away to start again from the factory head"
        else:
            fix = f"the active version {report.active} is intact and in use; {backup}"
        print(one_line(f"error: the head store of '{bundle}' has {len(report.problems)} damaged version(s) ({shown}); "
                       f"{fix}"), file=sys.stderr)
        sys.exit(1)


@cli.command("rollback")
@_bundle_arg
@click.argument("version", type=click.IntRange(0), required=False)
@_task_opt
def rollback_cmd(bundle, version, task):
    """Make VERSION (default: the active head's parent) the active head again."""
    from edgetl import ondevice

    now, was = ondevice.rollback(bundle, version, task)
    stderr.print(f"head version {now} is active (was {was})")


from edgetl.cli.benchmark import benchmark_cmd  # noqa: E402  (torch-free, like the rest)

cli.add_command(benchmark_cmd)


def main() -> None:
    run_group(cli)


if __name__ == "__main__":
    main()
