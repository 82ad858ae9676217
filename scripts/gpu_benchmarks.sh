#!/usr/bin/env bash
# The GPU programme in one command: GPU tests, throughput, paper-size Table 1, a short Omniglot run.
#
#   scripts/gpu_benchmarks.sh --budget-min 9 --out DIR      # on a CUDA machine (torch >= 2.11, Python 3.12)
#   scripts/gpu_benchmarks.sh --smoke --out DIR             # the same stages on the CPU at tiny sizes (< 3 min)
#
# Stages, each under `timeout`; a failing stage is logged and the next one runs; DIR/summary.md is rewritten
# after every stage (so a killed run still leaves one) and lists every stage with its status, time, command and
# figures:
#   setup      install what is missing (tyro, tqdm, numpy, pillow, tensorboard, pytest) from --wheels
#              (scripts/gpu_fetch_wheels.sh fills it) into a private folder; gymnasium/SB3 are not needed
#   pytest     pytest -m gpu tests/test_gpu.py (CUDA against CPU, closed form vs autograd, trainer per precision)
#   bench_binary, bench_conv   scripts/bench_memory.py GPU columns: meta-steps/s, TFLOP/s, % of the card's peak
#              in fp32/tf32/bf16, peak memory, several batch sizes (binary at the paper's size: hidden 1024, N=64)
#   precision  scripts/bench_precision.py: error of one write in autocast-bf16 and all-bf16 against fp32
#   hopfield   Table 1's Hopfield rows over 1000 memories, on the CPU, in the background during training
#   train_binary   the C.1 model at the paper's size for most of the budget, at the largest benchmarked batch
#              that fits and keeps >= --min-steps-per-s, checkpoint + evaluation every minute (best.pt)
#   table1     scripts/eval_binary.py on the best checkpoint, 1000 memories per N
#   train_omniglot, distortion_rate   a short C.3 Omniglot run (paper layer sizes) and its distortion-rate point
#   collect    at most 8 files of at most 16 MiB into DIR: summary.md, bench JSONs, the trained memories
#              (weights only), logs.tar.gz (each log trimmed to its last 3000 lines)
#
# Options: --budget-min M (default 9: the stages' time boxes add up to M minutes), --out DIR (required),
# --smoke, --data-dir D (a folder holding omniglot/images_{background,evaluation}.zip, e.g. gpu_data/ inside the
# checkout; default gpu_data), --wheels W (default gpu_wheels), --precision fp32|tf32|bf16 (training; default
# fp32), --min-steps-per-s R (default 30), --python PY (default python3, else python).
set -u

usage() {
  sed -n '2,27p' "$0"
  exit 0
}
die_usage() {
  echo "gpu_benchmarks.sh: error: $1" >&2
  echo "usage: scripts/gpu_benchmarks.sh --out DIR [--budget-min M] [--smoke] [--data-dir D] [--wheels W] [--precision P]" >&2
  exit 2
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ORIGINAL_ARGS="$*"
budget_min=9
out=""
smoke=0
data_dir=gpu_data
wheels=gpu_wheels
precision=fp32
min_rate=30
PY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --budget-min) [ $# -ge 2 ] || die_usage "--budget-min needs a value"; budget_min="$2"; shift 2 ;;
    --out) [ $# -ge 2 ] || die_usage "--out needs a folder"; out="$2"; shift 2 ;;
    --smoke) smoke=1; shift ;;
    --data-dir) [ $# -ge 2 ] || die_usage "--data-dir needs a folder"; data_dir="$2"; shift 2 ;;
    --wheels) [ $# -ge 2 ] || die_usage "--wheels needs a folder"; wheels="$2"; shift 2 ;;
    --precision) [ $# -ge 2 ] || die_usage "--precision needs fp32, tf32 or bf16"; precision="$2"; shift 2 ;;
    --min-steps-per-s) [ $# -ge 2 ] || die_usage "--min-steps-per-s needs a value"; min_rate="$2"; shift 2 ;;
    --python) [ $# -ge 2 ] || die_usage "--python needs an interpreter"; PY="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done
[ -n "$out" ] || die_usage "--out DIR is required (where summary.md and the results go)"
[[ "$budget_min" =~ ^[0-9]+([.][0-9]+)?$ ]] || die_usage "--budget-min must be a number of minutes, got '$budget_min'"
[[ "$min_rate" =~ ^[0-9]+([.][0-9]+)?$ ]] || die_usage "--min-steps-per-s must be a number, got '$min_rate'"
case "$precision" in fp32|tf32|bf16) ;; *) die_usage "--precision must be fp32, tf32 or bf16, got '$precision'" ;; esac
if [ -z "$PY" ]; then
  PY=$(command -v python3 || command -v python) || die_usage "no python3 or python on PATH; pass --python"
fi

cd "$ROOT" || exit 1
mkdir -p "$out" || exit 1
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/ebmm_gpu.XXXXXX")
logs="$work/logs"
mkdir -p "$logs"
: > "$work/stages"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export EBMM_CACHE_DIR="$work/cache"
export PYTHONUNBUFFERED=1
START=$(date +%s)
TOTAL_S=$(awk -v m="$budget_min" 'BEGIN { printf "%d", m * 60 }')
DEADLINE=$((START + TOTAL_S))
if [ "$smoke" = 1 ]; then
  device=cpu
  export OMP_NUM_THREADS=1 EBMM_GPU_TEST_DEVICE=cpu
else
  device=cuda
fi

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((DEADLINE - $(date +%s))); }
# seconds: the larger of a fraction of the total budget and a floor
share() { awk -v t="$TOTAL_S" -v f="$1" -v lo="$2" 'BEGIN { s = int(t * f); if (s < lo) s = lo; print s }'; }

# ------------------------------------------------------------------------------------------------------ summary
write_summary() {
  local tmp="$out/.summary.md.$BASHPID"
  {
    echo "# GPU programme: scripts/gpu_benchmarks.sh"
    echo
    echo "* mode: $([ "$smoke" = 1 ] && echo "smoke (CPU, tiny sizes: these figures say nothing about a GPU)" || echo "GPU")"
    echo "* command: \`scripts/gpu_benchmarks.sh $ORIGINAL_ARGS\`"
    echo "* started $(date -u -d "@$START" '+%Y-%m-%d %H:%M:%S UTC'), budget $budget_min min, elapsed $(elapsed) s"
    echo "* machine: $(uname -n), $(nproc) CPU cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "* python: $("$PY" --version 2>&1), torch: $TORCH_INFO"
    if command -v nvidia-smi > /dev/null 2>&1; then
      echo "* nvidia-smi: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
    fi
    echo "* training precision: $precision"
    echo
    echo "| stage | status | seconds |"
    echo "|---|---|---|"
    local name
    while read -r name; do
      echo "| $name | $(cat "$logs/$name.status" 2> /dev/null || echo running) | $(cat "$logs/$name.seconds" 2> /dev/null || echo -) |"
    done < "$work/stages"
    while read -r name; do
      echo
      echo "## $name: $(cat "$logs/$name.status" 2> /dev/null || echo running)"
      echo
      echo '```'
      cat "$logs/$name.cmd" 2> /dev/null
      echo '```'
      if [ -s "$logs/$name.note" ]; then
        echo
        cat "$logs/$name.note"
      fi
      if [ -s "$logs/$name.out" ]; then
        echo
        echo "Output (last 60 lines of stdout):"
        echo
        echo '```'
        tail -n 60 "$logs/$name.out" | cut -c1-300
        echo '```'
      fi
      if [ -s "$logs/$name.err" ] && ! grep -qx ok "$logs/$name.status" 2> /dev/null; then
        echo
        echo "stderr (last 15 lines):"
        echo
        echo '```'
        tail -n 15 "$logs/$name.err" | cut -c1-300
        echo '```'
      fi
    done < "$work/stages"
    if [ -s "$work/files.md" ]; then
      echo
      echo "## files in the output folder"
      echo
      cat "$work/files.md"
    fi
  } > "$tmp" 2>&1
  mv -f "$tmp" "$out/summary.md"
}

# run_stage NAME TIMEOUT_S CMD...: run CMD under timeout, stdout/stderr to logs, record status; never fails.
run_stage() {
  local name="$1" limit="$2"
  shift 2
  grep -qx "$name" "$work/stages" || echo "$name" >> "$work/stages"
  local t0 rc
  if [ "${BACKGROUND:-0}" = 0 ] && [ "$limit" -gt $(($(left) - 15)) ]; then
    limit=$(($(left) - 15))  # never past the budget (15 s kept for collecting the outputs)
  fi
  t0=$(date +%s)
  printf '%q ' "$@" > "$logs/$name.cmd"
  echo " # time box ${limit} s" >> "$logs/$name.cmd"
  echo "[$(elapsed) s] stage $name (time box ${limit} s)" >&2
  if [ "$limit" -lt 5 ]; then
    echo "skipped: no time left in the budget" > "$logs/$name.status"
    echo 0 > "$logs/$name.seconds"
    write_summary
    return 0
  fi
  timeout --kill-after=15 "$limit" "$@" > "$logs/$name.out" 2> "$logs/$name.err"
  rc=$?
  echo $(($(date +%s) - t0)) > "$logs/$name.seconds"
  if [ "$rc" = 0 ]; then
    echo ok > "$logs/$name.status"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "timed out after ${limit} s (exit $rc)" > "$logs/$name.status"
  else
    echo "failed (exit $rc)" > "$logs/$name.status"
  fi
  echo "[$(elapsed) s] stage $name: $(cat "$logs/$name.status")" >&2
  write_summary
  return 0
}

skip_stage() {  # skip_stage NAME REASON
  grep -qx "$1" "$work/stages" || echo "$1" >> "$work/stages"
  echo "(not run)" > "$logs/$1.cmd"
  echo "skipped: $2" > "$logs/$1.status"
  echo 0 > "$logs/$1.seconds"
  write_summary
}

TORCH_INFO="(not known yet)"
write_summary

# -------------------------------------------------------------------------------------------------------- setup
setup_env() {
  local site="$work/site" missing=() pair mod dist
  for pair in tyro:tyro tqdm:tqdm numpy:numpy PIL:pillow tensorboard:tensorboard pytest:pytest; do
    mod=${pair%%:*}
    dist=${pair#*:}
    "$PY" -c "import $mod" 2> /dev/null || missing+=("$dist")
  done
  if [ ${#missing[@]} = 0 ]; then
    echo "everything needed is installed"
    return 0
  fi
  echo "missing: ${missing[*]}"
  if [ ! -d "$wheels" ]; then
    echo "no wheel folder $wheels: run scripts/gpu_fetch_wheels.sh (on a machine with a registry) first" >&2
    return 1
  fi
  if "$PY" -m pip install --no-index --find-links "$wheels" --target "$site" "${missing[@]}"; then
    echo "installed into $site"
  else
    echo "pip failed: putting the pure-Python wheels themselves on the path (zip import)" >&2
    local whl
    for whl in "$wheels"/*-py3-none-any.whl; do
      [ -e "$whl" ] && echo "$(cd "$(dirname "$whl")" && pwd)/$(basename "$whl")" >> "$work/pythonpath_wheels"
    done
  fi
  return 0
}
grep -qx setup "$work/stages" || echo setup >> "$work/stages"
t0=$(date +%s)
printf 'setup_env  # %s\n' "imports tyro tqdm numpy PIL tensorboard pytest; installs what is missing from $wheels" > "$logs/setup.cmd"
WHEELS_ABS=$(cd "$wheels" 2> /dev/null && pwd || echo "$wheels")
wheels="$WHEELS_ABS"
(setup_env) > "$logs/setup.out" 2> "$logs/setup.err"
rc=$?
if [ -d "$work/site" ]; then
  export PYTHONPATH="$work/site:$PYTHONPATH"
fi
if [ -s "$work/pythonpath_wheels" ]; then
  export PYTHONPATH="$(paste -sd: "$work/pythonpath_wheels"):$PYTHONPATH"
fi
if "$PY" -c "import tyro, tqdm, numpy, PIL, torch" >> "$logs/setup.out" 2>> "$logs/setup.err" && [ "$rc" = 0 ]; then
  echo ok > "$logs/setup.status"
else
  echo "failed (exit $rc; see stderr)" > "$logs/setup.status"
fi
echo $(($(date +%s) - t0)) > "$logs/setup.seconds"
TORCH_INFO=$("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")' 2>&1 | tail -1)
write_summary

# ------------------------------------------------------------------------------------------------ stage sizes
if [ "$smoke" = 1 ]; then
  BENCH_BINARY=(--batch-sizes 2 4 --binary-hidden 72 --binary-patterns 4 --precisions fp32 bf16 --repeats 1
    --no-peak-memory --threads 1)
  BENCH_CONV=(--batch-sizes 2 --conv-patterns 1 --precisions fp32 --repeats 1 --no-peak-memory --threads 1)
  PRECISION_SIZE=(--hidden-size 72)
  TRAIN_SIZE=(--hidden-size 72 --num-patterns 4 --eval-batches 2 --threads 1)
  HOPFIELD=(--num-batches 5 --patterns 16 64 --threads 1)
  TABLE1=(--num-batches 5 --patterns 16 64 --threads 1)
  OMNI_SIZE=(--channels 2 --hidden-size 4 --head-size 8 --dynamic-size 2 --num-patterns 3 --batch-size 2 --write-steps 1
    --read-steps 2 --eval-batches 2 --threads 1)
  DR=(--num-patterns 3 --num-batches 4 --episodes-per-pass 2 --threads 1)
else
  BENCH_BINARY=(--batch-sizes 16 64 256 1024 --binary-hidden 1024 --binary-patterns 64 --precisions fp32 tf32 bf16
    --repeats 3)
  BENCH_CONV=(--batch-sizes 16 64 256 --conv-patterns 8 --precisions fp32 tf32 bf16 --repeats 3)
  PRECISION_SIZE=(--hidden-size 1024 --threads 1)
  TRAIN_SIZE=(--hidden-size 1024 --num-patterns 64 --eval-batches 10)
  HOPFIELD=(--num-batches 1000 --threads 4)
  TABLE1=(--num-batches 1000 --batches-per-call 250 --threads 1)
  OMNI_SIZE=(--size paper --num-patterns 32 --batch-size 16 --eval-batches 10)
  DR=(--num-patterns 32 --num-batches 1000 --episodes-per-pass 50)
fi

# ----------------------------------------------------------------------------------------------- a: GPU tests
run_stage pytest "$(share 0.07 40)" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py

# ------------------------------------------------------------------------------------------------ b: throughput
run_stage bench_binary "$(share 0.12 60)" "$PY" scripts/bench_memory.py --models binary --device "$device" \
  --modes batched "${BENCH_BINARY[@]}" --json "$work/bench_binary.json"
run_stage bench_conv "$(share 0.08 45)" "$PY" scripts/bench_memory.py --models conv --device "$device" \
  --modes batched "${BENCH_CONV[@]}" --json "$work/bench_conv.json"
run_stage precision "$(share 0.03 20)" "$PY" scripts/bench_precision.py --device "$device" "${PRECISION_SIZE[@]}"

# ---------------------------------------------------------------------------- c: paper-size Table 1 (C.1 model)
# the largest benchmarked batch that fit and ran >= min_rate closed-form steps/s at the training precision
read -r batch rate < <("$PY" - "$work/bench_binary.json" "$precision" "$min_rate" "$smoke" << 'EOF'
import json, sys
path, precision, min_rate, smoke = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
try:
    rows = json.load(open(path))["rows"]
except (OSError, ValueError, KeyError):
    rows = []
ok = [r for r in rows if not r["oom"] and r["path"] == "closed" and r["precision"] == precision]
rate = lambda r: r.get("steps_per_s", 1.0 / r["wall_s"])
fast = [r for r in ok if smoke or rate(r) >= min_rate]
pick = max(fast, key=lambda r: r["batch_size"]) if fast else (min(ok, key=lambda r: r["batch_size"]) if ok else None)
print(*(pick["batch_size"], rate(pick)) if pick else ((4 if smoke else 64), 0.0))
EOF
)
batch=${batch:-64}
rate=${rate:-0}
binary_dir="$work/binary"
if [ "$smoke" = 1 ]; then
  train_s=6
  checkpoint_every=2
  planned_steps=4
else
  reserve=$(($(share 0.09 45) + $(share 0.12 60) + $(share 0.08 40) + 20))  # table1, omniglot, distortion-rate, collect
  train_s=$(($(left) - reserve - 30))  # 30 s: start-up, final evaluation and checkpoint of the training process
  checkpoint_every=$(awk -v r="$rate" 'BEGIN { s = int(r * 60); print (s < 50 ? 1000 : s) }')
  planned_steps=$(awk -v r="$rate" -v t="$train_s" 'BEGIN { s = int(r * t); print (s < 1000 ? 1000000 : s) }')
fi
{
  echo "Batch $batch: the largest benchmarked batch whose closed-form $precision meta-step fit and ran at least"
  echo "$min_rate steps/s (${rate} measured by bench_binary). Planned steps $planned_steps (cosine schedule over them),"
  echo "checkpoint and evaluation every $checkpoint_every steps (about a minute), training time limit ${train_s} s of"
  echo "CPU time (the process waits on the GPU by spinning, so about its wall time; the time box stops it otherwise)."
} > "$logs/train_binary.note"
# Hopfield rows on the CPU while the GPU trains (different random stream from the GPU's, same distribution)
echo hopfield >> "$work/stages"  # listed before train_binary, whichever starts first
BACKGROUND=1 run_stage hopfield "$(($(left) > 60 ? $(left) - 30 : 30))" "$PY" scripts/eval_binary.py --device cpu "${HOPFIELD[@]}" &
hopfield_pid=$!
train_minutes=$(awk -v s="$train_s" 'BEGIN { printf "%.3f", s / 60 }')
run_stage train_binary "$((train_s + 60))" "$PY" scripts/meta_train_binary.py "${TRAIN_SIZE[@]}" \
  --batch-size "$batch" --steps "$planned_steps" --time-limit-min "$train_minutes" --precision "$precision" \
  --device "$device" --no-progress --checkpoint-every "$checkpoint_every" --eval-every "$checkpoint_every" \
  --log-every 10 --status-every-s 30 --run-dir "$binary_dir"
binary_ckpt="$binary_dir/best.pt"
[ -f "$binary_ckpt" ] || binary_ckpt="$binary_dir/checkpoint.pt"
if [ -f "$binary_ckpt" ]; then
  echo "Checkpoint evaluated: $(basename "$binary_ckpt") (best.pt: lowest error bits at the minute evaluations)" \
    > "$logs/table1.note"
  run_stage table1 "$(share 0.09 45)" "$PY" scripts/eval_binary.py --rules --ebmm "$binary_ckpt" --device "$device" \
    "${TABLE1[@]}"
else
  skip_stage table1 "no checkpoint from train_binary"
fi

# ---------------------------------------------------------------------------------------- d: Omniglot C.3 run
if [ "$smoke" = 1 ]; then
  data_dir="$work/tiny_data"
  "$PY" - "$data_dir/omniglot" << 'EOF' > "$logs/tiny_data.log" 2>&1
import io, sys, zipfile
from pathlib import Path
import numpy as np
from PIL import Image
root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
for stem in ("images_background", "images_evaluation"):  # 3 characters x 3 drawers of 105x105 1-bit PNGs
    with zipfile.ZipFile(root / f"{stem}.zip", "w") as archive:
        for c in range(3):
            for d in range(3):
                pixels = np.ones((105, 105), dtype=bool)
                pixels[10 + 20 * c : 43 + 20 * c, 10 + 20 * d : 43 + 20 * d] = False
                buf = io.BytesIO()
                Image.fromarray(pixels).convert("1").save(buf, format="PNG")
                archive.writestr(f"{stem}/Alpha/character{c + 1:02d}/{c + 1:04d}_{d + 1:02d}.png", buf.getvalue())
EOF
fi
omni_dir="$work/omniglot"
if [ -f "$data_dir/omniglot/images_background.zip" ] || [ -d "$data_dir/omniglot/images_background" ]; then
  omni_box=$(share 0.12 60)
  [ "$smoke" = 1 ] && omni_box=120
  omni_minutes=$(awk -v s="$omni_box" -v sm="$smoke" 'BEGIN { t = sm ? 0.05 : (s - 40) / 60; if (t < 0.2 && !sm) t = 0.2; printf "%.3f", t }')
  echo "Omniglot decoding (about 20 s) and the final evaluation are in the time box; training ${omni_minutes} min." \
    > "$logs/train_omniglot.note"
  run_stage train_omniglot "$omni_box" "$PY" scripts/meta_train_images.py --dataset omniglot --arch conv \
    --data-dir "$data_dir" "${OMNI_SIZE[@]}" --steps 1000000 --time-limit-min "$omni_minutes" --precision "$precision" \
    --device "$device" --no-progress --eval-every 0 --checkpoint-every 50 --status-every-s 20 --run-dir "$omni_dir"
  if [ -f "$omni_dir/checkpoint.pt" ]; then
    run_stage distortion_rate "$(share 0.08 40)" "$PY" scripts/eval_distortion_rate.py --checkpoints \
      "$omni_dir/checkpoint.pt" --data-dir "$data_dir" --dataset omniglot "${DR[@]}" --device "$device" \
      --out-dir "$work/distortion_rate"
  else
    skip_stage distortion_rate "no checkpoint from train_omniglot"
  fi
else
  skip_stage train_omniglot "no Omniglot zips in $data_dir/omniglot/ (pass --data-dir, e.g. gpu_data/)"
  skip_stage distortion_rate "no Omniglot run"
fi

# ------------------------------------------------------------------------------------------------ e: collect
wait "$hopfield_pid" 2> /dev/null
write_summary
grep -qx collect "$work/stages" || echo collect >> "$work/stages"
echo "(files copied into $out)" > "$logs/collect.cmd"
t0=$(date +%s)
{
  echo "| file | bytes | what |"
  echo "|---|---|---|"
} > "$work/files.md"
collect() {  # collect SRC NAME WHAT: copy when at most 16 MiB
  local size
  [ -f "$1" ] || return 0
  size=$(stat -c %s "$1")
  if [ "$size" -gt $((16 * 1024 * 1024)) ]; then
    echo "| ($2 not copied: $size bytes > 16 MiB) | | $3 |" >> "$work/files.md"
    return 0
  fi
  cp "$1" "$out/$2" && echo "| $2 | $size | $3 |" >> "$work/files.md"
}
to_memory() {  # weights of the memory only (no optimiser state): loads with ebmm_rl.load_memory
  "$PY" -c "import sys; from ebmm_rl.checkpoint import load_memory, save_memory; save_memory(load_memory(sys.argv[1]), sys.argv[2])" "$1" "$2"
}
collect "$work/bench_binary.json" bench_binary.json "every bench_binary row (scripts/bench_memory.py --json)"
collect "$work/bench_conv.json" bench_conv.json "every bench_conv row"
[ -f "$binary_ckpt" ] && to_memory "$binary_ckpt" "$work/binary_memory.pt" >> "$logs/collect.out" 2>&1
collect "$work/binary_memory.pt" binary_memory.pt "the C.1 memory evaluated in table1 (save_memory file)"
[ -f "$omni_dir/checkpoint.pt" ] && to_memory "$omni_dir/checkpoint.pt" "$work/omniglot_memory.pt" >> "$logs/collect.out" 2>&1
collect "$work/omniglot_memory.pt" omniglot_memory.pt "the C.3 Omniglot memory (save_memory file)"
collect "$work/distortion_rate/distortion_rate.json" distortion_rate.json "every episode's score of distortion_rate"
for f in "$logs"/*.out "$logs"/*.err "$logs"/*.log; do
  [ -s "$f" ] && tail -n 3000 "$f" > "$work/trimmed_$(basename "$f")"
done
(cd "$work" && tar -czf logs.tar.gz trimmed_* 2> /dev/null)
collect "$work/logs.tar.gz" logs.tar.gz "every stage's stdout/stderr (last 3000 lines each)"
echo "| summary.md | | this file |" >> "$work/files.md"
echo ok > "$logs/collect.status"
echo $(($(date +%s) - t0)) > "$logs/collect.seconds"
write_summary
echo "summary: $out/summary.md ($(ls "$out" | wc -l) files in $out; total $(elapsed) s)" >&2
rm -rf "$work"
exit 0
