#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one short run (sized for a few minutes on an H100):
#   1. the CUDA tests (nvJPEG decoding, extraction on the GPU, the engine on CUDA tensors);
#   2. bench_extract.py on the GPU: the sample and 2,048 large JPEGs, nvJPEG against Pillow
#      in the workers, nvJPEG's decode alone; with the Oxford VGG16 weights when
#      $PHOTOCLUST_CACHE holds vgg16_oxford_features.pt (the file `extract --weights oxford`
#      converts into ~/.cache/photoclust: copy it there), else random weights (the same
#      speed; only the agreement figures need the real ones);
#   3. the whole test suite with the GPU visible, for what is left of the time limit.
# Usage, from the repository root, with a Python whose torch and torchvision see the GPU:
#   [PY=python3] bash benchmarks/gpu_check.sh [FOLDER]   (FOLDER gets the logs and the JSON)
# DRY_RUN=1 runs the same steps on a machine without a GPU, small, to check the script itself.
set -uo pipefail
PY=${PY:-python3}
out=${1:-outputs/bench}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PHOTOCLUST_OFFLINE=1
dry=${DRY_RUN:-}
weights=random
[ -f "${PHOTOCLUST_CACHE:-$HOME/.cache/photoclust}/vgg16_oxford_features.pt" ] && weights=oxford
bench_args=(--models vgg16 --weights "$weights")
[ -n "$dry" ] && bench_args+=(--large 8 --device cpu)

"$PY" - <<'EOF' 2>&1 | tee "$out/gpu_machine.txt"
import os, torch, torchvision
if not torch.cuda.is_available():
    assert os.environ.get("DRY_RUN"), "no CUDA GPU visible to torch"
    print(f"dry run without a GPU: torch {torch.__version__}, torchvision {torchvision.__version__}")
    raise SystemExit(0)
free, total = torch.cuda.mem_get_info()
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.cuda.get_device_name(0)}, "
      f"{total / 2**30:.0f} GiB ({free / 2**30:.0f} free), bf16 {torch.cuda.is_bf16_supported()}, "
      f"{os.cpu_count()} CPU cores")
EOF
[ "${PIPESTATUS[0]}" = 0 ] || exit 1

echo "== CUDA tests"
"$PY" -m pytest -q -rs -p no:cacheprovider tests/test_jpeg_device.py tests/test_estimator.py tests/test_bench_extract.py 2>&1 \
    | tee "$out/gpu_tests.log"

echo "== bench_extract on the GPU"
timeout 300 "$PY" benchmarks/bench_extract.py "${bench_args[@]}" 2>&1 | tee "$out/gpu_bench.log"
cp outputs/bench/extract.json "$out/extract_gpu.json" 2>/dev/null

echo "== the whole suite with the GPU visible (stops at the first failure)"
timeout "${SUITE_SECONDS:-$([ -n "$dry" ] && echo 20 || echo 150)}" "$PY" -m pytest -x -q -p no:cacheprovider tests 2>&1 | tail -40 \
    | tee "$out/gpu_suite.log"
