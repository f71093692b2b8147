#!/usr/bin/env bash
# Builds `elite` with NVIDIA GPU support (`cargo build --release --features cuda`) on a machine
# without a CUDA installation and without a GPU: the CUDA compiler, headers and runtime come
# from NVIDIA's PyPI wheels, installed into target/cuda-toolkit (a virtual environment), and
# are laid out as the CUDA_PATH that candle's kernel build and cudarc expect.
#
#   ./scripts/build_cuda.sh                 # compute capability 9.0 (H100/H200)
#   CUDA_COMPUTE_CAP=80 ./scripts/build_cuda.sh   # A100
#
# The binary lands in target/cuda/release/elite. It needs the NVIDIA driver's libcuda.so.1 and
# the CUDA 13 runtime libraries (cudart, cublas, curand, nvrtc: target/cuda-toolkit/cuda/lib,
# or a CUDA 13 installation) on the machine that runs it. Not part of CI or of the test command.
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_RELEASE=${CUDA_RELEASE:-13.2.86}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
TOOLKIT=$PWD/target/cuda-toolkit

if [ ! -f "$TOOLKIT/.complete" ]; then
  echo "Installing the CUDA $CUDA_RELEASE compiler, headers and runtime from PyPI into $TOOLKIT"
  [ -x "$TOOLKIT/venv/bin/pip" ] || python3 -m venv "$TOOLKIT/venv"
  # CUDA 13's wheels put one toolkit tree under nvidia/cu13 (bin, include, lib, nvvm);
  # CUDA 12's nvcc wheel has no nvcc driver, only ptxas.
  "$TOOLKIT/venv/bin/pip" install -q \
    "nvidia-cuda-nvcc==$CUDA_RELEASE" "nvidia-nvvm==$CUDA_RELEASE" \
    "nvidia-cuda-crt==$CUDA_RELEASE" "nvidia-cuda-runtime==$CUDA_RELEASE" \
    "nvidia-cuda-cccl==$CUDA_RELEASE" "nvidia-cublas>=13,<14" "nvidia-curand>=10.4,<11"
  site=$("$TOOLKIT/venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
  ln -sfn "$site/nvidia/cu13" "$TOOLKIT/cuda"
  [ -e "$TOOLKIT/cuda/lib64" ] || ln -s lib "$TOOLKIT/cuda/lib64"
  # The wheels ship versioned shared objects only; the linker looks for the plain names.
  for so in "$TOOLKIT"/cuda/lib/lib*.so.*; do
    plain="${so%%.so.*}.so"
    [ -e "$plain" ] || ln -s "$(basename "$so")" "$plain"
  done
  touch "$TOOLKIT/.complete"
fi
ROOT=$TOOLKIT/cuda

# libcuda (the driver API) comes with the NVIDIA driver, not with the toolkit wheels, and a
# machine without a GPU has none to link against. As NVIDIA's own toolkit does, link against
# a stub: a library named libcuda.so.1 that defines every driver function of the headers
# (doing nothing). The binary then loads the real driver's libcuda.so.1 when it runs.
STUBS=$TOOLKIT/stubs
if [ ! -f "$STUBS/libcuda.so" ]; then
  mkdir -p "$STUBS"
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$ROOT"/include/cuda*.h | sort -u |
    sed 's/.*/void &(void) {}/' > "$STUBS/libcuda_stub.c"
  cc -shared -fPIC -o "$STUBS/libcuda.so" -Wl,-soname,libcuda.so.1 "$STUBS/libcuda_stub.c"
fi

export CUDA_PATH=$ROOT CUDA_ROOT=$ROOT CUDA_HOME=$ROOT
export PATH=$ROOT/bin:$PATH
export LIBRARY_PATH=$ROOT/lib64:$STUBS${LIBRARY_PATH:+:$LIBRARY_PATH}
nvcc --version | tail -n 2
echo "Building for compute capability $CUDA_COMPUTE_CAP"
CARGO_TARGET_DIR=target/cuda cargo build --locked --release --features cuda
echo "Built target/cuda/release/elite"
