"""`edgetl-device build-engine`: build (or print the trtexec line for) a bundle's TensorRT engine."""

from __future__ import annotations

from pathlib import Path

import click

from edgetl.bundle import load_manifest
from edgetl.errors import EdgetlError
from edgetl.runtime.engine import DEFAULT_MAX_BATCH, ENGINE_DIR, build_engine, plan_build, trtexec_command


@click.command("build-engine")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dla-core", type=int, default=None, help="Run on this DLA core (AGX Orin, Xavier); GPU fallback on.")
@click.option("--workspace-mb", type=int, default=None, help="Builder workspace (default: the target's).")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Timing cache to reuse and update (default: ~/.cache/edgetl/tensorrt/, per GPU and TensorRT).")
@click.option("--max-batch", type=int, default=DEFAULT_MAX_BATCH, show_default=True, help="Largest batch the engine takes.")
@click.option("--opt-batch", type=int, default=1, show_default=True, help="Batch TensorRT tunes for.")
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
    manifest = load_manifest(bundle, verify=True)
    if manifest["backend"] != "tensorrt":
        raise EdgetlError(f"bundle '{bundle}' is for backend '{manifest['backend']}', not tensorrt; "
                          "export it with a Jetson --target")
    if print_trtexec:
        target = manifest["target"]
        plan = plan_build(manifest, target["tensorrt"], dla_core, workspace_mb, max_batch, opt_batch)
        engine = bundle / ENGINE_DIR / f"{Path(plan.onnx).stem}.trtexec.engine"
        click.echo(trtexec_command(bundle, plan, engine, timing_cache))
        return
    path = build_engine(bundle, dla_core, workspace_mb, timing_cache, max_batch, opt_batch, force)
    click.echo(str(path))
