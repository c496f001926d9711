#!/usr/bin/env bash
# Every GPU check of the project as one prepared command for a lent GPU machine (DEVELOPERS.md, "GPU"): the CUDA
# tests (mixed precision + scaler + resume, NCCL collectives), a short CUDA training run with CPU/CUDA parity of the
# trained model, deitlab vs timm on CUDA, and the issue-10 experiments with parallel runs (--jobs) on its many
# cores and its GPU. The experiments start first (they resume: what finishes here can continue elsewhere with
# identical run specs); the benchmark runs last, alone on the GPU, when time is left.
#   bash benchmarks/gpu_session.sh OUT_DIR [SECONDS]      (QUICK=1: --quick experiments, a smoke test anywhere)
# Results land in OUT_DIR/gpu_session.tgz[.partN] (the device tool returns at most 8 files of 16 MiB).
set -u
out=$(mkdir -p "${1:?output folder}" && cd "$1" && pwd); budget=${2:-450}; start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }
work=$(mktemp -d); export PYTHONUNBUFFERED=1
# The experiments' run specs name absolute paths under /work/main: run from there so they match the CPU's. (Never
# remove /work/main when it is this checkout itself: the device tool may place the working tree there.)
if [ "$(pwd -P)" != /work/main ]; then
  [ -e /work/main ] && { echo "/work/main exists and is not this checkout; move it away first" >&2; exit 2; }
  mkdir -p /work && cp -a . /work/main
fi
cd /work/main && export PYTHONPATH=$PWD/src
if [ -d .data/fashion-mnist ] && [ ! -e /usr/share/datasets/fashion-mnist ]; then
  mkdir -p /usr/share/datasets && cp -r .data/fashion-mnist /usr/share/datasets/
fi
{ date; nvidia-smi -L; lscpu | grep 'Model name'; nproc
  python3 -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__,
              torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")'; } > "$work/machine.txt" 2>&1
cat "$work/machine.txt"
quick=${QUICK:+--quick}
echo "== experiments in the background"
stop=$(( budget - 75 ))
(timeout $stop python3 experiments/exp1_distillation.py --threads 10 --jobs 10 $quick > "$work/exp1.log" 2>&1 \
  && timeout $(( stop - (SECONDS - start) )) python3 experiments/exp2_tokens.py $quick > "$work/exp2.log" 2>&1) &
p1=$!
timeout $stop python3 experiments/exp3_stability.py --threads 3 --jobs 3 $quick > "$work/exp3.log" 2>&1 & p3=$!
timeout $stop python3 experiments/exp4_collapse.py --threads 3 --jobs 3 $quick > "$work/exp4.log" 2>&1 & p4=$!
echo "== CUDA tests"
timeout 240 python3 -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py > "$work/gpu_tests.log" 2>&1
echo "rc $?"; tail -8 "$work/gpu_tests.log"
echo "== a short CUDA training run, then CPU vs CUDA outputs of the trained model"
timeout 150 python3 -m deitlab train -c demo_student --set data.limit_train=5000 --set train.epochs=1 \
  --set distill.type=none --set train.device=cuda --output-dir "$work/cuda_run" --overwrite > "$work/cuda_train.log" 2>&1
echo "rc $?"; tail -6 "$work/cuda_train.log"
timeout 60 python3 - "$work/cuda_run/model" <<'PY' 2>&1 | tee "$work/parity.txt"
import sys, torch
from deitlab import from_pretrained
p = from_pretrained(sys.argv[1]); m = p.model
x = torch.randn(64, *p.preprocessing.input_size, generator=torch.Generator().manual_seed(0))
def logits(out):  # a distilled model returns both heads: compare the fused logits
    return out.fused() if hasattr(out, "fused") else out
with torch.no_grad():
    cpu = logits(m.float()(x)); gpu = logits(m.cuda()(x.cuda())).cpu()
print(f"CPU vs CUDA fp32 logits, 64 images: max abs diff {(cpu - gpu).abs().max().item():.3e}, "
      f"argmax agree {(cpu.argmax(1) == gpu.argmax(1)).float().mean().item():.3f}")
PY
echo "== waiting for the experiments ($(left) s left)"
wait $p1 $p3 $p4
for e in exp1 exp2 exp3 exp4; do echo "-- $e"; tail -2 "$work/$e.log" 2>/dev/null; done
if [ "$(left)" -gt 50 ]; then
  echo "== vs_timm on CUDA, alone on the GPU ($(left) s left)"
  timeout $(( $(left) - 25 )) python3 benchmarks/vs_timm.py --device cuda --models tiny,small --rounds 3 --no-augment \
    --out "$work/vs_timm" > "$work/vs_timm.log" 2>&1; echo "rc $?"; tail -20 "$work/vs_timm.log"
fi
# Results without weights (too large to return), except the teachers' (a CPU continuation of experiment 1 needs them).
(cd experiments && find results \( -name model -o -name model_best -o -name checkpoints \) -prune -o -type f \
   \( ! -name '*.safetensors' -o -path '*teachers/runs/*/model.safetensors' -o -path '*vit_teacher/runs/*/model.safetensors' \) \
   -print > "$work/keep.txt"; tar cf "$work/experiments_results.tar" -T "$work/keep.txt")
tar czf "$out/gpu_session.tgz" -C "$work" --exclude=cuda_run/checkpoints . && cd "$out" && \
  if [ "$(stat -c %s gpu_session.tgz)" -gt 15000000 ]; then split -b 15000000 -d gpu_session.tgz gpu_session.tgz.part && rm gpu_session.tgz; fi
ls -la "$out"
