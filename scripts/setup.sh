#!/usr/bin/env bash
# One set-up step for precise-baa: a project virtual environment (.venv) with torch,
# torchvision, mmcv (built from source with its compiled ops), mmdet, mmengine and this
# package installed editable with its test extras.
#
# Idempotent: a second run with nothing changed returns in about a second. The built mmcv
# wheel is cached outside the repository (PRECISE_BAA_CACHE, default ~/.cache/precise-baa),
# so a fresh clone on a machine that built it once skips the ~20 min compile.
set -euo pipefail

# --browser: also make sure a headless Chromium is present (the HTML report's browser test).
# --pacs: also make sure Orthanc is present (the DICOM node's round trip through a real PACS).
WANT_BROWSER=0
WANT_PACS=0
for arg in "$@"; do
  case "$arg" in
    --browser) WANT_BROWSER=1 ;;
    --pacs) WANT_PACS=1 ;;
    *) echo "usage: scripts/setup.sh [--browser] [--pacs]" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${PRECISE_BAA_VENV:-$ROOT/.venv}"
CACHE="${PRECISE_BAA_CACHE:-$HOME/.cache/precise-baa}"
WHEELS="$CACHE/wheels"
PY="${PYTHON:-python3}"

TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
MMDET_VERSION=3.3.0
MMENGINE_VERSION=0.10.7

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

ensure_browser() {
  command -v chromium >/dev/null 2>&1 && return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian chromium for the HTML report test"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null \
      || log "could not install chromium; the browser test will be skipped"
  else
    log "no chromium and no root apt-get; the browser test will be skipped"
  fi
}
[[ $WANT_BROWSER -eq 1 ]] && ensure_browser

ensure_pacs() {
  command -v Orthanc >/dev/null 2>&1 && return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian orthanc for the DICOM node's PACS test"
    if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc; } >/dev/null; then
      # The tests start their own Orthanc on free loopback ports; leave no system service running.
      if command -v systemctl >/dev/null 2>&1; then systemctl disable --now orthanc >/dev/null 2>&1 || true; fi
    else
      log "could not install orthanc; the PACS test will be skipped"
    fi
  else
    log "no Orthanc and no root apt-get; the PACS test will be skipped"
  fi
}
[[ $WANT_PACS -eq 1 ]] && ensure_pacs

# Everything that decides what gets installed; a stamp of it makes re-runs instant.
stamp_src() {
  cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh"
  echo "$TORCH_VERSION $TORCHVISION_VERSION $MMCV_VERSION $MMDET_VERSION $MMENGINE_VERSION"
}
want_stamp="$(stamp_src | sha256sum | cut -d' ' -f1)"
stamp_file="$VENV/.precise-baa-setup"
if [[ -x "$VENV/bin/python" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$want_stamp" ]]; then
  exit 0
fi

t0=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
# pip, minus this machine's harmless "Location ... is ignored" notes about local indexes.
pip_q() { "$VPY" -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
pip_install() { pip_q install "$@"; }

pip_install --upgrade "pip>=24" wheel ninja
# torchvision from PyPI does not import beside the CPU-only torch 2.13 file here; the
# 2.14.1 / 0.29.1 pair does (CUDA build; runs on CPU too).
pip_install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

pip_install "mmengine==$MMENGINE_VERSION"  # before mmcv, which needs it

# --- mmcv with compiled ops -------------------------------------------------------------
# CUDA ops are compiled when a GPU is visible (or FORCE_CUDA=1); CPU and CUDA builds are
# cached apart, and a CPU build is never taken for a GPU machine.
if [[ "${FORCE_CUDA:-0}" == "1" ]] || "$VPY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  MMCV_FLAVOR=cuda
else
  MMCV_FLAVOR=cpu
fi
mmcv_ok() {
  "$VPY" -c "import importlib.metadata as m; assert m.version('mmcv') == '$MMCV_VERSION'
from mmcv.ops import RoIAlign, nms, SAConv2d, get_compiling_cuda_version
assert ('$MMCV_FLAVOR' == 'cpu') or get_compiling_cuda_version() != 'not available'" 2>/dev/null
}
if ! mmcv_ok; then
  mkdir -p "$WHEELS"
  torch_tag="torch${TORCH_VERSION}"
  whl_dir="$WHEELS/mmcv-$MMCV_VERSION-$torch_tag-$MMCV_FLAVOR-$(uname -m)"
  whl="$(ls "$whl_dir"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
  if [[ -z "$whl" ]]; then
    log "building mmcv $MMCV_VERSION with $MMCV_FLAVOR ops from source (about 10 min on 2 cores; cached after)"
    # mmcv's setup.py imports pkg_resources, gone from setuptools >= 70: downgrade for the build
    # only (torch itself asks for a newer setuptools, restored below).
    log "(pip may warn that torch wants setuptools>=77: it is restored after the build)"
    pip_install "setuptools>=64,<70"
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    pip_q download --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$build"
    tar -xzf "$build"/mmcv-"$MMCV_VERSION".tar.gz -C "$build"
    src="$build/mmcv-$MMCV_VERSION"
    # torch >= 2.12 headers need C++20 (mmcv issue #3341, fix unreleased).
    sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$src/setup.py"
    grep -q 'std=c++20' "$src/setup.py" || { log "mmcv setup.py patch did not apply"; exit 1; }
    # Build into a temp dir, then move: an interrupted build never leaves a broken cached wheel.
    (cd "$src" && if [[ $MMCV_FLAVOR == cuda ]]; then export FORCE_CUDA=1; else unset FORCE_CUDA; fi \
        && export MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        && pip_q wheel --no-build-isolation --no-deps . -w "$build/dist")
    mkdir -p "$whl_dir"
    mv "$build"/dist/mmcv-*.whl "$whl_dir/"
    whl="$(ls "$whl_dir"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)"
    log "cached $whl"
    pip_install "setuptools>=77"
  else
    log "using cached $whl"
  fi
  pip_install --no-deps --force-reinstall "$whl"
  # mmcv's own runtime dependencies (installed --no-deps above so pip never rebuilds it).
  pip_install addict packaging Pillow pyyaml yapf opencv-python numpy
fi

pip_install "mmdet==$MMDET_VERSION"
pip_install -e "$ROOT[dev,dicom-codecs,onnx,ray]"

"$VPY" -c "from mmcv.ops import RoIAlign, nms, SAConv2d; import mmdet, segmentation_models_pytorch" \
  || { log "the installed stack does not import"; exit 1; }
echo "$want_stamp" > "$stamp_file"
log "ready in $(( $(date +%s) - t0 )) s: $VENV"
