#!/usr/bin/env bash
# Prepare the git-ignored folders that scripts/gpu-check.sh needs on an offline CUDA machine:
#   .whl/  exllamav2 0.3.2 and the project's runtime dependencies, as Python 3.12 x86_64 wheels
#   .gpu/  a copy of a prebuilt exllamav2 extension folder, if PREBUILT names one (skips the ~140 s JIT build)
# Run here (with network to PyPI), then carry `.whl` and `.gpu` to the GPU machine:
#   PREBUILT=/path/to/exllamav2-ext-build bash scripts/prepare-gpu.sh
# Safe to rerun: wheels are downloaded into a fresh folder that replaces .whl only on success, and
# the prebuilt extension folder is replaced, never copied into itself.
# Packages the GPU image already has (torch, numpy, safetensors, tokenizers, transformers, rich, ...)
# are left out so the carried copies never shadow them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PREBUILT="${PREBUILT:-}"
NEW=".whl.new"
rm -rf "$NEW" && mkdir -p "$NEW" .gpu
trap 'rm -rf "$NEW"' EXIT
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
pip_download() {
    python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d "$NEW" "$@"
}
# exllamav2 alone: its declared deps (torch, fastparquet, ...) are on the image or not needed for inference
pip_download --no-deps exllamav2==0.3.2
pip_download "litestar>=2.25,<3" "uvicorn>=0.30" "msgspec>=0.18" "httpx>=0.27,<1" \
    "httpx-sse>=0.4" "pyyaml>=6" "prometheus-client>=0.20" "schemathesis>=4.32,<5" "jsonschema>=4.18"
# the GPU image has these; carrying them would shadow torch's own
for present in torch numpy safetensors tokenizers transformers huggingface_hub rich pygments regex pillow \
    pandas ninja markdown_it_py mdurl typing_extensions fsspec filelock jinja2 markupsafe packaging sympy \
    networkx mpmath tqdm; do
    rm -f "$NEW"/"${present}"-*.whl
done
rm -rf .whl && mv "$NEW" .whl
if [ -n "$PREBUILT" ] && [ -d "$PREBUILT" ]; then
    target=".gpu/$(basename "$PREBUILT")"
    rm -rf "$target" && cp -r "$PREBUILT" "$target"
else
    echo "prepare-gpu: no prebuilt extension${PREBUILT:+ at $PREBUILT} (set PREBUILT); the GPU machine will JIT-build it" >&2
fi
du -sh .whl .gpu
