#!/usr/bin/env bash
# Make a CPU libtorch 2.11.0 (the version tch 0.24 is built for) at target/libtorch.
#
# Source: the PyPI wheel torch==2.11.0 (the cu130 build, the same binary a GPU host's
# PyTorch 2.11.0+cu130 ships). Its torch/lib/libtorch_cpu.so NEEDs libcudart.so.13 and
# libcupti.so.13, which come from two small NVIDIA wheels. libtorch_cuda.so is NOT
# extracted: on a GPU host qagent loads the host's own copy at run time.
#
# Wheels are cached in ${QSCHED_CACHE:-$HOME/.cache/qsched}/wheels and checked against
# pinned sha256 sums; the extraction is skipped when target/libtorch is already complete.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${QSCHED_CACHE:-$HOME/.cache/qsched}/wheels
dest=${QSCHED_LIBTORCH_DIR:-$repo/target/libtorch}

torch_whl=torch-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl
torch_sha=7aa2f9bbc6d4595ba72138026b2074be1233186150e9292865e04b7a63b8c67a
cudart_whl=nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
cudart_sha=7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
cupti_whl=nvidia_cuda_cupti-13.0.85-py3-none-manylinux_2_25_x86_64.whl
cupti_sha=4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8
stamp_value="torch-2.11.0 $torch_sha $cudart_sha $cupti_sha"

if [ -f "$dest/.qsched-stamp" ] && [ "$(cat "$dest/.qsched-stamp")" = "$stamp_value" ]; then
  echo "libtorch 2.11.0 (CPU) already at $dest" >&2
  exit 0
fi

need() { command -v "$1" >/dev/null 2>&1 || { echo "bootstrap-libtorch: '$1' is required" >&2; exit 1; }; }
need python3; need unzip; need sha256sum

mkdir -p "$cache"
fetch() { # fetch <wheel file> <sha256> <pip requirement> <platform tags...>
  local file=$1 sha=$2 req=$3; shift 3
  if [ ! -f "$cache/$file" ] || ! echo "$sha  $cache/$file" | sha256sum -c --quiet - 2>/dev/null; then
    rm -f "$cache/$file"
    echo "downloading $req from PyPI ..." >&2
    local plats=()
    for p in "$@"; do plats+=(--platform "$p"); done
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
      --implementation cp "${plats[@]}" -d "$cache" "$req"
  fi
  echo "$sha  $cache/$file" | sha256sum -c --quiet - || {
    echo "bootstrap-libtorch: checksum mismatch for $cache/$file" >&2; exit 1; }
}
fetch "$torch_whl" "$torch_sha" "torch==2.11.0" manylinux_2_28_x86_64
fetch "$cudart_whl" "$cudart_sha" "nvidia-cuda-runtime==13.0.96" manylinux_2_17_x86_64 manylinux2014_x86_64
fetch "$cupti_whl" "$cupti_sha" "nvidia-cuda-cupti==13.0.85" manylinux_2_25_x86_64

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qsched-libtorch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "extracting libtorch into $dest ..." >&2
unzip -q "$cache/$torch_whl" 'torch/include/*' 'torch/share/*' \
  torch/lib/libc10.so torch/lib/libtorch_cpu.so torch/lib/libtorch.so torch/lib/libgomp.so.1 \
  torch/lib/libshm.so -d "$tmp"
unzip -q "$cache/$cudart_whl" nvidia/cu13/lib/libcudart.so.13 -d "$tmp"
unzip -q "$cache/$cupti_whl" nvidia/cu13/lib/libcupti.so.13 -d "$tmp"
mv "$tmp"/nvidia/cu13/lib/*.so.13 "$tmp/torch/lib/"
# torch-sys reads the version from this file when it checks compatibility.
printf '2.11.0\n' > "$tmp/torch/build-version"
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tmp/torch" "$dest"
echo "$stamp_value" > "$dest/.qsched-stamp"
echo "libtorch 2.11.0 (CPU) ready at $dest" >&2
