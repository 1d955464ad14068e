#!/usr/bin/env bash
# GPU verification of the exllamav2 engine, for a CUDA machine without network (see docs/gpu.md).
#
#   OUT=/path/to/out bash scripts/gpu-check.sh        # from the repository root
#
# Needs, carried in git-ignored folders of the checkout:
#   .whl/  exllamav2-0.3.2 wheel + the light deps the image lacks (litestar, msgspec, ...)
#   .gpu/  a prebuilt exllamav2_ext.so folder (scripts/prepare-gpu.sh copies one), optional:
#          without it the first `import exllamav2` JIT-builds the extension (~140 s)
# Writes $OUT/gpu-report.md, $OUT/gpu-report.json, $OUT/conformance.json, logs.
# Bounded to fit one 600 s run on a GPU machine: the inner limits add up to 570 s
#   wheel install 45 + preflight 170 (a JIT build of the extension takes ~140 s) + tiny model 45
#   + gpu_check.py 310 (which spends at most --budget-s 300 across its phases).
# exllamav2 runs as users run it: no EXLLAMA_NO_SDPA here; the engine itself sets
# config.no_sdpa when flash-attn is absent, and that is what this check exercises.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
OUT="${OUT:-$ROOT/reports/gpu}"
mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "[gpu-check $(($(date +%s) - T0))s] $*" | tee -a "$OUT/gpu-check.log"; }

PY="${PYTHON:-python3}"
SITE=/tmp/site
MODEL="${MODEL_DIR:-/tmp/dualcall-tiny}"

# 1. offline installs ------------------------------------------------------------------------
if compgen -G ".whl/*.whl" >/dev/null; then
    log "installing $(ls .whl/*.whl | wc -l) carried wheels into $SITE"
    timeout 45 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl >>"$OUT/gpu-check.log" 2>&1 || log "WARNING: wheel install reported errors"
else
    log "no .whl/ folder: using what the machine has"
fi

EXT_SO="$(ls .gpu/*/exllamav2_ext*.so .gpu/exllamav2_ext*.so 2>/dev/null | head -n 1 || true)"
EXT_DIR=""
if [ -n "$EXT_SO" ]; then
    EXT_DIR="$(cd "$(dirname "$EXT_SO")" && pwd)"
    log "prebuilt extension: $EXT_SO"
else
    log "no prebuilt extension in .gpu/: exllamav2 will JIT-build it (~140 s)"
fi

# the working tree first, then the carried wheels, then the prebuilt extension
export PYTHONPATH="$ROOT:$SITE${EXT_DIR:+:$EXT_DIR}${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/texts}"
unset EXLLAMA_NO_SDPA   # the engine's own config.no_sdpa is what is under test
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

# 2. preflight: CUDA and exllamav2 import (pays the JIT build once, if there is one) -----------
log "preflight"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$OUT/gpu-check.log" 2>&1 || true
if ! timeout 170 "$PY" - >>"$OUT/gpu-check.log" 2>&1 <<'EOF'
import time, torch
t = time.time()
assert torch.cuda.is_available(), "CUDA is not available"
import exllamav2, exllamav2.ext, exllamav2.attn
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
print("exllamav2", exllamav2.__version__, "jit_build", exllamav2.ext.build_jit,
      "flash_attn", exllamav2.attn.has_flash_attn, f"import {time.time() - t:.1f} s")
EOF
then
    log "FAIL: preflight (torch/CUDA/exllamav2 import) failed; see $OUT/gpu-check.log"
    printf '# GPU check report\n\nPreflight failed: torch/CUDA/exllamav2 could not be imported. See gpu-check.log.\n' \
        >"$OUT/gpu-report.md"
    exit 1
fi
tail -n 2 "$OUT/gpu-check.log"

# 3. the tiny checkpoint ---------------------------------------------------------------------
log "building the tiny model in $MODEL"
if ! timeout 45 "$PY" -m workers.tinymodel "$MODEL" --size tiny --seed 0 --force 2>&1 | tee -a "$OUT/gpu-check.log"; then
    log "FAIL: could not build the tiny model"
    exit 1
fi

# 4. the measured phases (worker in the background, HF comparison, speed, cancel, storm,
#    conformance); gpu_check.py bounds each phase, this bounds the whole
log "running scripts/gpu_check.py"
timeout 310 "$PY" scripts/gpu_check.py --model "$MODEL" --out "$OUT" --budget-s 300 \
    2>&1 | tee -a "$OUT/gpu-check.log"
RC=${PIPESTATUS[0]}
if [ "$RC" -eq 124 ]; then
    log "FAIL: gpu_check.py ran past 310 s"
fi
log "done (exit $RC); report: $OUT/gpu-report.md"
exit "$RC"
