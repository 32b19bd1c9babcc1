"""Build the TensorRT engine on the device, and find the one that fits this device.

An engine is valid for one TensorRT version on one GPU architecture, so it is built where it
runs (as jetson-inference and TAO do) from the bundle's ONNX, and stored under a key of
(bundle sha256, GPU name + compute capability, TensorRT version). A loader refuses an engine
whose key differs. The API differences between TensorRT 8.x, 10.x and 11.x are decided in
`plan_build` (pure Python, tested without TensorRT) and applied in `build_engine`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgetl.bundle import Bundle, BundleError, Manifest, bundle_digest
from edgetl.core.fsutil import atomic_write_bytes, atomic_write_json
from edgetl.errors import EdgetlError

log = logging.getLogger("edgetl")

ENGINE_DIR = "engines"
DEFAULT_MAX_BATCH = 8


def version_tuple(version: str) -> tuple[int, int, int]:
    parts = [int(p) for p in re.findall(r"\d+", str(version))[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# Cache key
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EngineKey:
    bundle_sha256: str  # of manifest.json, which lists every bundle file's sha256
    gpu: str
    compute_capability: str
    tensorrt: str

    def filename(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-") or "gpu"
        sm = self.compute_capability.replace(".", "")
        return f"{self.bundle_sha256[:16]}-{gpu}-sm{sm}-trt{self.tensorrt}.engine"

    def mismatch(self, other: "EngineKey") -> list[str]:
        return [f"{k}: engine has {getattr(other, k)!r}, this device needs {getattr(self, k)!r}"
                for k in asdict(self) if getattr(self, k) != getattr(other, k)]


def engine_key(bundle_dir: str | Path, gpu: str, compute_capability: str, tensorrt: str) -> EngineKey:
    return EngineKey(bundle_digest(bundle_dir), gpu, compute_capability, str(tensorrt))


def engine_path(bundle_dir: str | Path, key: EngineKey) -> Path:
    return Path(bundle_dir) / ENGINE_DIR / key.filename()


def write_engine(bundle_dir: str | Path, key: EngineKey, data: bytes, plan: "BuildPlan") -> Path:
    path = engine_path(bundle_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    atomic_write_json(path.with_suffix(".json"), {"key": asdict(key), "plan": asdict(plan),
                                                  "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return path


def check_engine(path: str | Path, expected: EngineKey) -> dict:
    """The engine's sidecar record, if its key is `expected`; otherwise a one-line refusal."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.is_file():
        raise EdgetlError(f"no TensorRT engine '{path}' for this bundle on this device; "
                          f"build it here with `edgetl-device build-engine {path.parent.parent}`")
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        found = EngineKey(**record["key"])
    except (OSError, ValueError, KeyError, TypeError):
        raise EdgetlError(f"engine '{path}' has no readable key file '{sidecar.name}'; delete it and run "
                          f"`edgetl-device build-engine {path.parent.parent}`") from None
    diff = expected.mismatch(found)
    if diff:
        raise EdgetlError(f"refusing engine '{path}': it was built for another bundle or device ({'; '.join(diff)}); "
                          f"run `edgetl-device build-engine {path.parent.parent}` here")
    return record


# --------------------------------------------------------------------------------------
# Build plan: every TensorRT-version decision, as data
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildPlan:
    tensorrt: str
    precision: str  # bundle precision: fp32 | fp16 | int8 (QDQ)
    onnx: str  # file in the bundle
    input_name: str
    input_shape: tuple[int, ...]  # without batch, e.g. (3, 224, 224)
    min_batch: int
    opt_batch: int
    max_batch: int
    explicit_batch_flag: bool  # TensorRT < 10 needs EXPLICIT_BATCH for ONNX networks
    strongly_typed: bool  # TensorRT >= 11: precision comes from the graph (Q/DQ), no flags
    builder_flags: tuple[str, ...]  # names in trt.BuilderFlag
    workspace_mb: int
    workspace_api: str  # "memory_pool" (TensorRT >= 8.4) | "max_workspace_size"
    dla_core: int | None
    execute_api: str  # "v3" (named tensors, TensorRT >= 8.5) | "v2" (bindings)

    def shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.input_shape)


def plan_build(manifest: Manifest, tensorrt: str, dla_core: int | None = None, workspace_mb: int | None = None,
               max_batch: int = DEFAULT_MAX_BATCH, opt_batch: int = 1) -> BuildPlan:
    major, minor, _ = version_tuple(tensorrt)
    target = manifest.target
    precision = manifest.precision
    model = manifest.model
    if precision not in ("fp32", "fp16", "int8"):
        raise BundleError(f"bundle precision '{precision}' is not one TensorRT builds (fp32, fp16, int8)")

    strongly_typed = major >= 11
    flags: list[str] = []
    if precision == "fp16":
        if strongly_typed:
            raise EdgetlError(f"TensorRT {tensorrt} removed BuilderFlag.FP16 (networks are strongly typed); "
                              "use an int8 (QDQ) or fp32 bundle, or convert the ONNX to FP16 with ModelOpt AutoCast")
        flags.append("FP16")
    elif precision == "int8" and not strongly_typed:
        # Explicit quantization: INT8 lets TensorRT honour the Q/DQ pairs; FP16 lets the
        # layers left in float (head pooling, residual tails) run in half precision.
        flags += ["INT8", "FP16"]

    if dla_core is not None:
        cores = target.get("dla_cores")
        if cores is not None and not 0 <= dla_core < cores:
            raise EdgetlError(f"dla_core {dla_core}: target '{target.get('name')}' has "
                              f"{cores} DLA core(s){'' if cores else ' (none)'}; drop dla_core or pass 0..{cores - 1}")
        if precision == "fp32":
            raise EdgetlError("dla_core needs an fp16 or int8 bundle: DLA does not run fp32; "
                              "re-export with precision fp16 or int8")
        flags.append("GPU_FALLBACK")
        # DLA has no dynamic shapes: one fixed batch.
        max_batch = opt_batch

    if not 1 <= opt_batch <= max_batch:
        raise EdgetlError(f"opt_batch {opt_batch} must be between 1 and max_batch {max_batch}")
    shape = tuple(int(v) for v in model["input"]["shape"][1:])
    return BuildPlan(
        tensorrt=str(tensorrt), precision=precision, onnx=model["file"], input_name=model["input"]["name"],
        input_shape=shape, min_batch=opt_batch if dla_core is not None else 1, opt_batch=opt_batch,
        max_batch=max_batch, explicit_batch_flag=major < 10, strongly_typed=strongly_typed,
        builder_flags=tuple(flags),
        workspace_mb=int(workspace_mb or target.get("workspace_mb") or 1024),
        workspace_api="memory_pool" if (major, minor) >= (8, 4) else "max_workspace_size",
        dla_core=dla_core, execute_api=execute_api(tensorrt),
    )


def execute_api(tensorrt: str) -> str:
    """'v3' (set_tensor_address + execute_async_v3, TensorRT >= 8.5; the only one in 10.x)
    or 'v2' (binding indices + execute_async_v2, TensorRT 8.2 on JetPack 4)."""
    return "v3" if version_tuple(tensorrt)[:2] >= (8, 5) else "v2"


def trtexec_command(bundle_dir: str | Path, plan: BuildPlan, engine: str | Path, timing_cache: str | Path | None = None,
                    calibration_cache: str | None = None) -> str:
    """The equivalent `trtexec` line: the fallback where Python bindings are missing
    (JetPack 4's Python 3.6, JetPack 5's Python 3.8)."""
    bundle_dir = Path(bundle_dir)
    dims = "x".join

    def spec(batch: int) -> str:
        return f"{plan.input_name}:{dims(str(v) for v in plan.shape(batch))}"

    args = ["trtexec", f"--onnx={bundle_dir / plan.onnx}", f"--saveEngine={engine}",
            f"--minShapes={spec(plan.min_batch)}", f"--optShapes={spec(plan.opt_batch)}",
            f"--maxShapes={spec(plan.max_batch)}"]
    args.append(f"--memPoolSize=workspace:{plan.workspace_mb}" if plan.workspace_api == "memory_pool"
                else f"--workspace={plan.workspace_mb}")
    if plan.strongly_typed:
        args.append("--stronglyTyped")
    for flag in plan.builder_flags:
        if flag in ("FP16", "INT8"):
            args.append(f"--{flag.lower()}")
    if calibration_cache:
        args.append(f"--calib={bundle_dir / calibration_cache}")
    if plan.dla_core is not None:
        args += [f"--useDLACore={plan.dla_core}", "--allowGPUFallback"]
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    return shlex.join(str(a) for a in args)


# --------------------------------------------------------------------------------------
# Device facts and the real build (needs tensorrt and cuda-python)
# --------------------------------------------------------------------------------------

def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise EdgetlError("TensorRT's Python package is not importable here; on a Jetson install "
                          "python3-libnvinfer (JetPack), or build with the line from "
                          "`edgetl-device build-engine BUNDLE --print-trtexec`") from None
    return tensorrt


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise EdgetlError("cuda-python is not installed: pip install 'edgetl[tensorrt]'") from None
    return cudart


def cuda_check(result):
    """cuda-python returns (error, *values); raise on error, return the values."""
    err, *values = result
    if int(err) != 0:
        raise EdgetlError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


def current_gpu() -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of CUDA device 0."""
    cudart = import_cudart()
    props = cuda_check(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00").strip(), f"{props.major}.{props.minor}"


def default_timing_cache(gpu: str, compute_capability: str, tensorrt: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgetl" / "tensorrt"
    key = EngineKey("", gpu, compute_capability, tensorrt).filename().lstrip("-")
    return root / key.replace(".engine", ".timing-cache")


def build_engine(bundle: Bundle, dla_core: int | None = None, workspace_mb: int | None = None,
                 timing_cache: str | Path | None = None, max_batch: int = DEFAULT_MAX_BATCH,
                 opt_batch: int = 1, force: bool = False) -> Path:
    """Parse the bundle's ONNX, build a serialized engine for this GPU, store it under its key.

    An engine already stored under this key with the same build plan is reused unless `force`.
    """
    trt = import_tensorrt()
    bundle_dir = bundle.dir
    plan = plan_build(bundle.manifest, trt.__version__, dla_core, workspace_mb, max_batch, opt_batch)
    gpu, cc = current_gpu()
    key = engine_key(bundle_dir, gpu, cc, trt.__version__)
    existing = engine_path(bundle_dir, key)
    if existing.is_file() and not force:
        try:
            if check_engine(existing, key)["plan"] == json.loads(json.dumps(asdict(plan))):
                log.info("engine %s already built for this bundle, GPU and TensorRT; reusing it", existing)
                return existing
        except EdgetlError:
            pass  # unreadable key file: rebuild over it
    timing_cache = Path(timing_cache) if timing_cache else default_timing_cache(gpu, cc, trt.__version__)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network_flags = 0
    if plan.explicit_batch_flag:
        network_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if plan.strongly_typed:
        network_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    onnx_path = bundle_dir / plan.onnx
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgetlError(f"TensorRT {trt.__version__} cannot parse '{onnx_path}': {errors}")

    config = builder.create_builder_config()
    workspace = plan.workspace_mb << 20
    if plan.workspace_api == "memory_pool":
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:
        config.max_workspace_size = workspace
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.dla_core is not None:
        if builder.num_DLA_cores <= plan.dla_core:
            raise EdgetlError(f"dla_core {plan.dla_core}: this device has {builder.num_DLA_cores} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core

    profile = builder.create_optimization_profile()
    profile.set_shape(plan.input_name, plan.shape(plan.min_batch), plan.shape(plan.opt_batch), plan.shape(plan.max_batch))
    config.add_optimization_profile(profile)

    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    log.info("building the TensorRT %s engine for %s (sm %s), %s, batch %d..%d%s; this takes minutes",
             trt.__version__, gpu, cc, plan.precision, plan.min_batch, plan.max_batch,
             f", DLA core {plan.dla_core}" if plan.dla_core is not None else "")
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgetlError(f"TensorRT could not build an engine from '{onnx_path}' (see the messages above); "
                          f"try `{trtexec_command(bundle_dir, plan, engine_path(bundle_dir, key))} --verbose`")
    path = write_engine(bundle_dir, key, bytes(serialized), plan)
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    log.info("engine %s written in %.0f s (timing cache %s)", path, time.perf_counter() - started, timing_cache)
    return path
