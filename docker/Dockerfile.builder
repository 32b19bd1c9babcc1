# edgetl host toolchain for x86_64 CI: fine-tune and export per-target bundles.
# Builds the Jetson bundles too (ONNX / QDQ ONNX); their engines are built on the devices.
# By default it runs what .github/workflows/edge-artifacts.yml runs: `edgetl build` on the
# mounted project's edgetl.yaml, writing dist/ (bundles, summary.json, report.md, junit.xml).
#
#   docker build -f docker/Dockerfile.builder -t edgetl-builder .
#   docker run --rm -v "$PWD:/work" -v edgetl-cache:/home/edgetl/.cache/edgetl edgetl-builder
#   docker run --rm -v "$PWD:/work" edgetl-builder export runs/a --target rpi5 --out dist/rpi5
FROM python:3.11.10-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# The cache folder exists in the image, owned by the user, so a named volume mounted on it
# (docker run -v edgetl-cache:/home/edgetl/.cache/edgetl) starts writable by that user.
RUN useradd --create-home --uid 1000 edgetl \
    && mkdir -p /home/edgetl/.cache/edgetl \
    && chown -R edgetl:edgetl /home/edgetl/.cache

WORKDIR /opt/edgetl
COPY pyproject.toml README.md ./
COPY edgetl ./edgetl
COPY targets ./targets
COPY calibration ./calibration
# CPU wheels of torch/torchvision: CI has no GPU, and the default CUDA build adds ~3 GB.
# Versions come from pyproject.toml's ranges, not from pins here.
# hadolint ignore=DL3013
RUN python -m pip install --extra-index-url https://download.pytorch.org/whl/cpu \
        "torch>=2.4,<2.15" "torchvision>=0.19,<0.30" \
    && python -m pip install ".[host,tflite]" \
    && edgetl build --help > /dev/null

USER 1000
WORKDIR /work
ENTRYPOINT ["edgetl"]
CMD ["build", "edgetl.yaml", "--out", "dist/"]
