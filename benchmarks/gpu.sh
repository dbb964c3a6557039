#!/usr/bin/env bash
# The GPU path of hneurons, timed: collect + locate of the default recipe's data on SmolLM2-135M-Instruct
# in bfloat16 on one CUDA GPU, batch sizes chosen from free GPU memory. Prints tokens/s and stage times.
# Sized to finish in under 8 minutes on one H100 (about 2,000 questions x (greedy + 5 samples)).
# Not run in CI. Works without internet access: if benchmarks/wheels/ holds wheels, hneurons and its
# dependencies are installed from there only (see benchmarks/README.md for how to fill it).
#
#   bash benchmarks/gpu.sh                       # transformers backend (editor/collect/sampler.py)
#   BACKEND=vllm bash benchmarks/gpu.sh          # vLLM sampler (needs the vllm wheel)
#   OUT=/scratch/hn LIMIT=train=300,validation=100,test=100 bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/hneurons-gpu}
BACKEND=${BACKEND:-hf}
LIMIT=${LIMIT:-train=1200,validation=400,test=400}
SAMPLES=${SAMPLES:-5}

if compgen -G "benchmarks/wheels/*.whl" > /dev/null; then
  echo "installing hneurons and its dependencies from benchmarks/wheels (no index)"
  "$PY" -m pip install -q --no-index --find-links benchmarks/wheels -e .
  if [ "$BACKEND" = vllm ]; then
    "$PY" -m pip install -q --no-index --find-links benchmarks/wheels vllm
  fi
fi

"$PY" - <<'PYCHECK'
import torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA GPU visible to torch: benchmarks/gpu.sh measures the GPU path")
PYCHECK

nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader || true
start=$(date +%s)
"$PY" benchmarks/gpu_run.py --out "$OUT" --backend "$BACKEND" --limit "$LIMIT" --samples "$SAMPLES"
echo "total wall time: $(( $(date +%s) - start )) s (results in $OUT/gpu_results.json)"
