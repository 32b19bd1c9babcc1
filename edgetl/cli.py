"""`edgetl`: the host CLI. Thin: parse options, call the library, print."""

from __future__ import annotations

import click

from edgetl.clikit import run_group, setup_logging


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


from edgetl.export.commands import export_cmd, targets_cmd  # noqa: E402  (commands register after the group exists)

cli.add_command(targets_cmd)
cli.add_command(export_cmd)

from edgetl.runtime.commands import evaluate_cmd  # noqa: E402  (the device runtime, run on the host)

cli.add_command(evaluate_cmd)


def _print_metrics(title: str, metrics: dict, as_json: bool) -> None:
    import json

    from rich.table import Table

    from edgetl.clikit import stdout

    if as_json:
        click.echo(json.dumps({k: v for k, v in metrics.items() if k not in ("history", "data")}, ensure_ascii=False))
        return
    table = Table(title=title)
    table.add_column("class")
    table.add_column("recall", justify="right")
    table.add_column("images", justify="right")
    for label, row in metrics["per_class"].items():
        table.add_row(label, f"{row['recall']:.3f}", str(row["support"]))
    table.add_section()
    table.add_row("top1", f"{metrics['top1']:.4f}", str(metrics["n"]))
    table.add_row("balanced accuracy", f"{metrics['balanced_accuracy']:.4f}", "")
    stdout.print(table)


@cli.command(context_settings={"max_content_width": 100})
@click.argument("data", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Run folder to write.")
@click.option("--backbone", default="tf_efficientnet_lite0", show_default=True,
              help="Registered backbone (see `edgetl backbones`).")
@click.option("--weights", default="default", show_default=True,
              help="'default' (installed ImageNet weights), PATH to a timm/torchvision/lukemelas state dict, "
                   "'timm' (download, needs network) or 'none' (random init).")
@click.option("--input-size", type=int, default=None,
              help="Input resolution in pixels, used in training, export and on the device (default: the "
                   "backbone's, 224 for Lite0). Larger sees small objects better at quadratic cost: 288 is "
                   "1.65x the compute of 224.")
@click.option("--strategy", type=click.Choice(["auto", "linear", "partial", "full"]), default="auto",
              show_default=True, help="linear: frozen backbone + new head; partial: top N stages; full: everything; "
                                      "auto: by images per class.")
@click.option("--unfreeze", default=3, show_default=True, help="partial: number of top backbone stages to train.")
@click.option("--epochs", type=int, default=None, help="Maximum epochs (default per strategy: linear 300, "
                                                          "partial 12, full 10).")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", type=float, default=None, help="Head learning rate (default 1e-3); backbone stages get less.")
@click.option("--backbone-lr-ratio", default=0.1, show_default=True, help="Top backbone stage lr = lr x ratio.")
@click.option("--layer-decay", default=0.7, show_default=True, help="Each lower stage's lr is multiplied by this.")
@click.option("--weight-decay", default=1e-4, show_default=True, help="AdamW weight decay.")
@click.option("--dropout", default=0.2, show_default=True, help="Dropout on the embedding before the head.")
@click.option("--label-smoothing", default=0.1, show_default=True)
@click.option("--augment", type=click.Choice(["none", "light", "strong"]), default="light", show_default=True,
              help="Training augmentation (partial/full; linear trains on cached un-augmented embeddings).")
@click.option("--l2sp", default=0.0, show_default=True,
              help="L2-SP strength: pull backbone weights toward the pretrained ones (replaces their weight decay).")
@click.option("--patience", type=int, default=None, help="Early-stopping patience in epochs (default per strategy).")
@click.option("--val-split", default=0.2, show_default=True, help="Validation fraction when DATA has no train/ val/.")
@click.option("--seed", default=0, show_default=True, help="Seeds the split, initialisation and batch order.")
@click.option("--cache-dir", default=None, help="Cache of embeddings and resolved backbones (default $EDGETL_CACHE "
                                                "or ~/.cache/edgetl); see `edgetl cache`.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def finetune(data, out, as_json, **options):
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
    """
    from edgetl.finetune import FinetuneConfig, finetune as run_finetune

    metrics = run_finetune(data, out, FinetuneConfig(**options))
    _print_metrics(f"{metrics['strategy']} · validation ({out})", metrics, as_json)
    if not as_json:
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
    from edgetl.evaluate import evaluate_run_on_folder

    metrics = evaluate_run_on_folder(run, data, out)
    _print_metrics(f"{run} on {data}", metrics, as_json)


@cli.command()
def backbones():
    """List the supported backbones and their preprocessing."""
    from rich.table import Table

    from edgetl.backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, package_weights_file
    from edgetl.clikit import stdout

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


@cli.command("cache")
@click.option("--cache-dir", default=None, help="Cache folder (default $EDGETL_CACHE or ~/.cache/edgetl).")
@click.option("--clear", is_flag=True, help="Delete the cached embeddings and backbones.")
def cache_cmd(cache_dir, clear):
    """Show what the fine-tuning cache holds, or clear it.

    A linear probe embeds each image once per backbone and keeps the resolved pretrained
    backbone, so a rerun over the same images takes seconds. Everything here can be
    recomputed; clearing only makes the next run slow again.

    \b
    Examples:
      edgetl cache
      edgetl cache --clear
    """
    from rich.table import Table

    from edgetl.clikit import stdout
    from edgetl.finetune.cachedir import cache_entries, clear_cache
    from edgetl.finetune.features import default_cache_dir

    root = cache_dir or default_cache_dir()
    if clear:
        click.echo(f"cleared {root}: {clear_cache(root) / 1e6:.1f} MB freed")
        return
    entries = cache_entries(root)
    table = Table(title=f"edgetl cache: {root}")
    for col in ("kind", "what", "files", "MB", "folder"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.kind, e.what, str(e.files), f"{e.bytes / 1e6:.1f}", e.path.name)
    table.add_section()
    table.add_row("total", "", str(sum(e.files for e in entries)), f"{sum(e.bytes for e in entries) / 1e6:.1f}", "")
    stdout.print(table)


def main() -> None:
    run_group(cli)


if __name__ == "__main__":
    main()
