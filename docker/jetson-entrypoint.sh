#!/bin/sh
# Build (or reuse) the bundle's TensorRT engine for this board, then run edgetl-device.
# The engine is stored inside the mounted bundle under its key (bundle sha256, GPU, TensorRT),
# and the timing cache under /cache, so only the first start pays for the build.
set -eu
if [ -f "${EDGETL_BUNDLE}/manifest.json" ]; then
    edgetl-device build-engine "${EDGETL_BUNDLE}" ${EDGETL_BUILD_ARGS:-}
fi
exec edgetl-device "$@"
