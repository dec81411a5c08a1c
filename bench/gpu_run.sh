#!/usr/bin/env bash
# Issue 7's GPU runs in one call: install the carried wheels, build the Sprites cache, benchmark the
# training step, train the Sprites judge, train lpc_shuffle to the swap target and evaluate it, time one
# epoch per dataset. Every phase has its own time limit, the whole script a deadline, and results land in
# $OUT as they come (a timeout still returns what was measured).
#
#   here, once:    bash bench/prepare_gpu_run.sh         # wheels -> .whl/, LPC sheets -> .sheets/
#   device call:   run(command="bash bench/gpu_run.sh", carry=[".whl", ".sheets"], timeout_s=600)
#   CPU rehearsal: SDCD_BENCH_TINY=1 OUT=$(mktemp -d) PYTHON=.venv/bin/python bash bench/gpu_run.sh
#
# $OUT gets at most 8 files: summary.md (rewritten after every phase), log.txt, env.txt,
# train_step.json, judge.json, epoch.json, tta.json.
# Phases, in order, with their default limits in seconds (env SDCD_LIMIT_<NAME>): install 60, sprites_cache
# 90, train_step 150, judge 80, time_to_accuracy SDCD_TTA_TRAIN_S (180, the training clock) + 120, epoch 60.
# SDCD_DEADLINE_S (530) bounds the whole script: a phase never runs past it, so a slow phase shortens the
# later ones. Also: SDCD_TTA_EVAL_EVERY (5 epochs), SDCD_JUDGE_CONFIG (experiments/judge_sprites.yaml).
# SDCD_BENCH_TINY=1 shrinks every phase to a CPU-sized smoke run (tiny Moving dSprites data and judge).
set -uo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that receives the results}"
mkdir -p "$OUT"
TINY=${SDCD_BENCH_TINY:-0}
PY=${PYTHON:-python3}
WORK=${SDCD_WORK:-$(mktemp -d /tmp/sdcd-gpu-run.XXXXXX)}
START=$(date +%s)
DEADLINE=$((START + ${SDCD_DEADLINE_S:-530}))
PHASES=$WORK/phases.tsv
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled WANDB_SILENT=true LOGGER=csv
export SDCD_CACHE_DIR=$WORK/cache
[ -d .sheets/lpc-sprites ] && export SDCD_SPRITES_DIR=${SDCD_SPRITES_DIR:-$PWD/.sheets/lpc-sprites}
mkdir -p "$WORK/judges"
: >"$PHASES"
exec > >(tee -a "$OUT/log.txt") 2>&1

summary() {  # $OUT/summary.md from the phase table and the JSON files so far (no torch import: fast)
  "$PY" - "$OUT" "$PHASES" "$TINY" "$START" <<'EOF' || echo "summary: failed (rc $?)"
import json, sys, time
from pathlib import Path
out, phases, tiny, start = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None
step, epoch, tta, judge = (load(f"{n}.json") for n in ("train_step", "epoch", "tta", "judge"))
env = (step or tta or epoch or {}).get("env", {})
lines = [f"# bench/gpu_run.sh{' (SDCD_BENCH_TINY=1: smoke run, not results)' if tiny else ''}", "",
         f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; card: {env.get('card', '?')}; torch {env.get('torch', '?')}; "
         f"{time.time() - start:.0f} s since start", "", "| phase | exit | seconds | limit s |", "| --- | ---: | ---: | ---: |"]
for row in phases.read_text().splitlines():
    name, rc, sec, lim = row.split("\t")
    rc = {"0": "ok", "124": "TIMEOUT", "137": "KILLED"}.get(rc, rc)
    lines.append(f"| {name} | {rc} | {sec} | {lim} |")
if step:
    p = step["peak"]
    lines += ["", f"## Training step (peak {p['matmul_n']}³ matmul: bf16 {p['matmul_tflops_bfloat16']:.4g}, "
              f"fp32 {p['matmul_tflops_float32']:.4g} TFLOP/s)"]
    for name, c in step["configs"].items():
        lines += ["", f"{name}: B={c['batch']}, T={c['n_frames']}, {c['flops_per_step'] / 1e12:.4g} TFLOP/step", "",
                  "| variant | ms/step | seq/s | frames/s | TFLOP/s | % bf16 peak | first step s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for v, r in c["variants"].items():
            if "error" in r:
                lines.append(f"| {v} | failed: {r['error'][:120]} |")
            else:
                lines.append(f"| {v} | {1000 * r['step_s']:.2f} | {r['sequences_per_s']:.0f} | {r['frames_per_s']:.0f} | "
                             f"{r['tflops']:.3g} | {100 * r['fraction_of_bf16_peak']:.1f}% | {r['first_step_s']:.1f} |")
if judge:
    s = judge.get("test_scores", {})
    lines += ["", f"## Judge: test acc static {100 * s.get('acc/static', float('nan')):.2f}%, "
              f"dynamic {100 * s.get('acc/dynamic', float('nan')):.2f}%"]
if epoch:
    lines += ["", "## One epoch, end to end", "", "| data | variant | steps × B | full | epoch s | first step s | setup s |",
              "| --- | --- | --- | --- | ---: | ---: | ---: |"]
    for d, r in epoch["epochs"].items():
        lines.append(f"| {d} | {r['variant']} | {r['steps']} × {r['batch_size']} | {r['full_epoch']} | {r['epoch_s']:.1f} | "
                     f"{r['first_step_s']:.1f} | {r['setup_s']:.1f} |")
if tta:
    r = tta.get("reached")
    lines += ["", f"## Time to accuracy ({tta['config']}, {tta['variant']}, target {100 * tta['target']:.1f}%)", ""]
    lines.append(f"reached after {r['train_s']:.1f} s of training ({r['wall_s']:.1f} s wall, epoch {r['epoch']})" if r
                 else f"not reached: {tta.get('stopped', 'running or max_epochs')}")
    if tta["progress"]:
        last = tta["progress"][-1]
        lines.append(f"last check: epoch {last['epoch']}, train {last['train_s']:.1f} s, swap static "
                     f"{100 * last['swap_static']:.2f}%, dynamic {100 * last['swap_dynamic']:.2f}%")
    for k in ("swap/acc/static", "swap/acc/dynamic", "sample_dynamics/acc/static", "sample_static/acc/dynamic"):
        v = (tta.get("test") or {}).get(k)
        if v:
            lines.append(f"- test {k}: {100 * v['mean']:.2f}% ± {100 * v['std']:.2f} (R={tta.get('test_repeats')})")
(out / "summary.md").write_text("\n".join(lines) + "\n")
EOF
}

phase() {  # phase NAME CAP_S CMD...: run CMD for at most min(CAP_S, time to the deadline); record it
  local name=$1 cap=$2
  shift 2
  local left=$((DEADLINE - $(date +%s)))
  local limit=$((cap < left ? cap : left))
  if ((limit < 5)); then
    echo "== $name: skipped, ${left} s left before the deadline"
    printf '%s\tskipped\t0\t%s\n' "$name" "$cap" >>"$PHASES"
    summary
    return 1
  fi
  echo "== $name: limit ${limit} s, $(date +%T)"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >>"$PHASES"
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  summary
  return $rc
}

if [ "$TINY" = 1 ]; then
  STEP_ARGS=(--config small --variants eager_fp32 --steps 1 --repeats 1 --warmup 0 --matmul-size 256)
  JUDGE_CONFIG=tests/configs/tiny_judge.yaml JUDGE_ARGS=(--trainer.max_epochs=1 --data.n_train=64)
  JUDGE_LIMIT=${SDCD_LIMIT_JUDGE:-100}
  JUDGE=$WORK/judges/tiny.pt
  EPOCH_ARGS=(--data small --limit-train-batches 2)
  TTA_ARGS=(--config small --eval-every 1 --eval-sequences 32 --max-epochs 1 --test-repeats 1)
  TTA_OVERRIDES=(--data.n_train=64)  # the judge's data: load_judge checks the data config
  TTA_TRAIN_S=${SDCD_TTA_TRAIN_S:-5}
else
  STEP_ARGS=(--config sprites dsprites --variants eager_fp32 eager_bf16 compiled_bf16 eager_bf16_cl compiled_bf16_cg
    --steps 20 --repeats 3 --warmup 5)
  JUDGE_CONFIG=${SDCD_JUDGE_CONFIG:-experiments/judge_sprites.yaml}
  JUDGE=$WORK/judges/sprites.pt
  JUDGE_LIMIT=${SDCD_LIMIT_JUDGE:-80}  # Lightning's max_time stops training 25 s before: scoring, saving
  JUDGE_ARGS=("--trainer.max_time=00:00:$(((JUDGE_LIMIT - 25) / 60)):$(((JUDGE_LIMIT - 25) % 60))")
  EPOCH_ARGS=(--data sprites dsprites)
  TTA_ARGS=(--config sprites --eval-every "${SDCD_TTA_EVAL_EVERY:-5}")
  TTA_OVERRIDES=()
  TTA_TRAIN_S=${SDCD_TTA_TRAIN_S:-180}
fi

# 1. the wheels the device lacks (nflows, jsonargparse and its signature extras) and sdcd itself
SITE=$WORK/site
WHEELS=()
[ -d .whl ] && WHEELS=(.whl/*.whl)
phase install "${SDCD_LIMIT_INSTALL:-60}" "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
  --no-cache-dir --upgrade --target "$SITE" "${WHEELS[@]}" . || echo "install failed: later phases may fail to import"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); tiny: $TINY; work: $WORK"
  command -v nvidia-smi >/dev/null && nvidia-smi
  "$PY" -c "import sys, torch, lightning, sdcd, nflows, jsonargparse; print('python', sys.version.split()[0], '| torch', torch.__version__, '| lightning', lightning.__version__, '| jsonargparse', jsonargparse.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0)); print('sdcd from', sdcd.__file__)"
  nproc
  uptime
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 2. Sprites cache from the carried sheets (tiny: a 2-character build, only when sheets are there)
if [ "$TINY" = 1 ]; then
  if [ -n "${SDCD_SPRITES_DIR:-}" ]; then
    phase sprites_cache "${SDCD_LIMIT_CACHE:-60}" "$PY" -c \
      "from sdcd.data_modules.sprites import SpritesDataModule as S; S(n_characters=2, val_characters=1).prepare_data()"
  fi
else
  phase sprites_cache "${SDCD_LIMIT_CACHE:-90}" "$PY" -c \
    "from sdcd.data_modules.sprites import SpritesDataModule as S; S().prepare_data()"
fi

# 3. training-step benchmark (sprites first: the later phases pick their variant from it)
phase train_step "${SDCD_LIMIT_STEP:-150}" "$PY" bench/train_step.py "${STEP_ARGS[@]}" --json "$OUT/train_step.json"

# 4. the judge, then its test scores as JSON
phase judge "$JUDGE_LIMIT" "$PY" -m sdcd fit --config "$JUDGE_CONFIG" "--model.judge_path=$JUDGE" \
  "--trainer.default_root_dir=$WORK/runs" --trainer.enable_progress_bar=false "${JUDGE_ARGS[@]}"
[ -f "$JUDGE" ] && "$PY" -c "import json, sys; from sdcd.judge import read_judge_record as r; d = r(sys.argv[1]); \
print(json.dumps({'path': sys.argv[1], 'test_scores': d['test_scores'], 'data': d['data'], 'created': d['created']}, indent=1))" \
  "$JUDGE" >"$OUT/judge.json"
summary

# 5. lpc_shuffle to the swap target, then the full protocol on the test split. The phase leaves
#    SDCD_RESERVE_EPOCH_S (45) to the epoch phase; training stops at the target, on its own clock
#    (TTA_TRAIN_S), or when the wall clock since fit leaves 75 s of the phase (final protocol, exit).
left=$((DEADLINE - $(date +%s) - ${SDCD_RESERVE_EPOCH_S:-45}))
tta_cap=${SDCD_LIMIT_TTA:-$((TTA_TRAIN_S + 120))}
tta_cap=$((tta_cap < left ? tta_cap : left))
if [ -f "$JUDGE" ] && ((tta_cap > 90)); then
  phase time_to_accuracy "$tta_cap" "$PY" bench/time_to_accuracy.py "${TTA_ARGS[@]}" --judge "$JUDGE" \
    --variant "auto:$OUT/train_step.json" --max-train-s "$TTA_TRAIN_S" --max-wall-s "$((tta_cap - 75))" \
    --json "$OUT/tta.json" -- "${TTA_OVERRIDES[@]}"
else
  echo "== time_to_accuracy: skipped (judge file: $([ -f "$JUDGE" ] && echo yes || echo missing); ${tta_cap} s left)"
  printf 'time_to_accuracy\tskipped\t0\t%s\n' "$tta_cap" >>"$PHASES"
fi

# 6. one epoch per dataset, end to end, in what time is left
phase epoch "${SDCD_LIMIT_EPOCH:-60}" "$PY" bench/epoch.py "${EPOCH_ARGS[@]}" --variant "auto:$OUT/train_step.json" \
  --json "$OUT/epoch.json"

summary
echo "== done after $(($(date +%s) - START)) s"
cat "$OUT/summary.md"
