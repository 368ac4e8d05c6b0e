#!/usr/bin/env bash
# Checks and timings for a machine with a GPU and many cores, run from the repository root of a checkout on a
# Python that has PyTorch (imgclf need not be installed): CUDA training in fp32/bf16/fp16, the one-GPU-per-process
# error of torchrun, and CPU data-parallel scaling with 1-8 processes. IMGCLF_DATA_DIR: the folder holding mnist/.
#     IMGCLF_DATA_DIR=../shared/datasets bash benchmarks/gpu_machine.sh
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi -L; nproc; python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.is_available())"
R=/tmp/r
for p in fp32 bf16 fp16; do
  /usr/bin/time -f "wall %e s" python3 -m imgclf train --config configs/mnist-fast.yaml --device cuda --out $R --name gpu-$p --train.precision $p -q 2>&1 | tail -3
done
python3 -m imgclf train --config configs/paper-cnn.yaml --device cuda --out $R --name gpu-paper --epochs 3 -q 2>&1 | tail -2
timeout 120 python3 -m torch.distributed.run --nproc_per_node=2 -m imgclf train --config configs/mnist-fast.yaml --device cuda --out $R --name two -q 2>&1 | grep -m2 "error:"
for spec in "1 8" "1 1" "2 4" "2 1" "4 2" "4 1" "8 1"; do
  set -- $spec
  if [ $1 = 1 ]; then L="python3 -m"; else L="python3 -m torch.distributed.run --nproc_per_node=$1 -m"; fi
  OMP_NUM_THREADS=$2 timeout 200 $L imgclf train --config configs/mnist-fast.yaml --device cpu --data.subset 30000 --out $R --name cpu-$1x$2 -q > /dev/null 2>&1
  python3 - $R/cpu-$1x$2 <<'PY'
import json, sys
s = json.load(open(sys.argv[1] + "/summary.json"))
print(f"{sys.argv[1].split('/')[-1]}: {s['steps'] * 256 / s['train_seconds']:.0f} samples/s, {s['train_seconds']:.1f} s, test {s.get('test_acc')}")
PY
done
for d in $R/*/; do echo "$(basename $d) $(python3 -c "import json;s=json.load(open('$d/summary.json'));print(s['train_seconds'], s.get('test_acc'), s['device'], s.get('processes'))" 2>/dev/null)"; done
