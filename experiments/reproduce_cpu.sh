#!/usr/bin/env bash
# `make reproduce-cpu`: the Sprites CPU result end to end, in one folder (default runs/reproduce-cpu):
#   1. the CPU judge (experiments/judge_sprites_cpu.yaml → judges/sprites_cpu.pt; kept if present)
#   2. stage 1: the frame autoencoder (experiments/lpc_autoencoder_cpu.yaml)
#   3. stage 2 with the shuffle, one run per seed (experiments/lpc_shuffle_cpu.yaml), then the protocol
#   4. stage 2 without the shuffle (experiments/lpc_noshuffle_cpu.yaml), then the protocol
#   5. the baselines on the same frozen autoencoder, judge and protocol (experiments/lpc_dsvae_cpu.yaml,
#      lpc_dbse_cpu.yaml; BASELINES="dsvae dbse", BASELINE_SEEDS="0 1"; BASELINES="" skips them)
#   6. one Markdown table, mean ± std over seeds: <folder>/table.md, and its plot <folder>/plot.png
# Run dirs: <folder>/autoencoder, <folder>/lpc_shuffle_cpu/seed<N>, <folder>/lpc_noshuffle_cpu/seed<N>,
# <folder>/lpc_dsvae_cpu/seed<N>, <folder>/lpc_dbse_cpu/seed<N>.
# A step whose result exists is skipped, and an interrupted run resumes from the newer of its
# epoch-end last.ckpt and mid-epoch last-v1.ckpt (last_ckpt), so running it again continues where it stopped.
# SEEDS="0 1 2" and OUT=<folder> override the defaults;
# ARGS are passed to every stage-2 training run (e.g. ARGS="--trainer.max_steps=500"), AE_ARGS to stage 1,
# JUDGE_ARGS to the judge's training, EVAL_ARGS to every evaluation (e.g. a smoke run on a few characters:
# AE_ARGS/ARGS/JUDGE_ARGS="--data.n_characters=20 --data.val_characters=2 ...").
# AE_EXP and SHUFFLE_EXP name the configs of steps 2 and 3 (default lpc_autoencoder_cpu, lpc_shuffle_cpu).
# RECIPE=hour (`make sprites-hour`) changes the defaults to the one-hour recipe: lpc_autoencoder_lowpass_n25_cpu,
# then lpc_swap_gamma_n25_cpu (NOT the paper's method), seed 42, no no-shuffle run, no baselines, in
# runs/sprites-hour; any of these set explicitly still wins.
set -euo pipefail
case ${RECIPE:-} in
  "") ;;
  hour) : "${AE_EXP:=lpc_autoencoder_lowpass_n25_cpu}" "${SHUFFLE_EXP:=lpc_swap_gamma_n25_cpu}" "${SEEDS:=42}" \
          "${OUT:=runs/sprites-hour}" "${NOSHUFFLE_SEEDS=}" "${BASELINES=}" ;;
  *) echo "reproduce-cpu: RECIPE='$RECIPE': expected hour (or unset)" >&2; exit 2 ;;
esac
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/reproduce-cpu}
SEEDS=${SEEDS:-0 1 2}
NOSHUFFLE_SEEDS=${NOSHUFFLE_SEEDS-${SEEDS%% *}}
BASELINES=${BASELINES-dsvae dbse}
BASELINE_SEEDS=${BASELINE_SEEDS:-0 1}
JUDGE=${JUDGE:-judges/sprites_cpu.pt}
AE_EXP=${AE_EXP:-lpc_autoencoder_cpu}
SHUFFLE_EXP=${SHUFFLE_EXP:-lpc_shuffle_cpu}
for exp in "$AE_EXP" "$SHUFFLE_EXP"; do
  [ -f "experiments/$exp.yaml" ] || { echo "reproduce-cpu: AE_EXP/SHUFFLE_EXP='$exp': no file experiments/$exp.yaml" >&2; exit 2; }
done
read -r -a EXTRA <<< "${ARGS:-}"
read -r -a EVAL_EXTRA <<< "${EVAL_ARGS:-}"
read -r -a AE_EXTRA <<< "${AE_ARGS:-}"
read -r -a JUDGE_EXTRA <<< "${JUDGE_ARGS:-}"
mkdir -p "$OUT"
log() { echo "reproduce-cpu: $*"; }

last_ckpt() {  # last_ckpt <run dir>: its newest last.ckpt or last-v<N>.ckpt, or nothing (configs with a
  # mid-epoch ModelCheckpoint write last-v1.ckpt every few hundred steps beside the epoch-end last.ckpt)
  local f newest=""
  for f in "$1"/checkpoints/last.ckpt "$1"/checkpoints/last-v*.ckpt; do
    if [ -f "$f" ] && { [ -z "$newest" ] || [ "$f" -nt "$newest" ]; }; then newest=$f; fi
  done
  echo "$newest"
}

fit() {  # fit <run dir> <config> [args...]: train into an exact run dir, resuming if it was interrupted
  local dir=$1 cfg=$2; shift 2
  local resume=() last
  if [ -f "$dir/done" ]; then log "$dir: done, skipped"; return; fi
  last=$(last_ckpt "$dir")
  if [ -n "$last" ]; then log "$dir: resuming from $last"; resume=(--ckpt_path "$last"); fi
  log "training $dir ($cfg)"
  SDCD_RUN_DIR=$dir "$PY" -m sdcd fit --config "$cfg" "$@" "${resume[@]}"
  touch "$dir/done"
}

evaluate() {  # evaluate <run dir>: the full protocol on the test split → <run dir>/metrics.json
  local dir=$1
  if [ -f "$dir/metrics.json" ]; then log "$dir: evaluated, skipped"; return; fi
  # its own run dir (under runs/), so the training run's metrics.csv is kept; the evaluation writes
  # metrics.json/.md into the checkpoint's run dir
  "$PY" -m sdcd test --config "$dir/config.yaml" --ckpt_path "$(last_ckpt "$dir")" \
    --evaluation.judge_path="$JUDGE" "${EVAL_EXTRA[@]}"
}

if [ ! -f "$JUDGE" ]; then
  log "training the CPU judge → $JUDGE"
  "$PY" -m sdcd fit --config experiments/judge_sprites_cpu.yaml --model.judge_path="$JUDGE" "${JUDGE_EXTRA[@]}"
fi
fit "$OUT/autoencoder" "experiments/$AE_EXP.yaml" "${AE_EXTRA[@]}"
AE=$(last_ckpt "$OUT/autoencoder")
for seed in $SEEDS; do
  fit "$OUT/$SHUFFLE_EXP/seed$seed" "experiments/$SHUFFLE_EXP.yaml" --seed_everything="$seed" \
    --model.autoencoder_checkpoint="$AE" --evaluation.judge_path="$JUDGE" "${EXTRA[@]}"
  evaluate "$OUT/$SHUFFLE_EXP/seed$seed"
done
for seed in $NOSHUFFLE_SEEDS; do
  fit "$OUT/lpc_noshuffle_cpu/seed$seed" experiments/lpc_noshuffle_cpu.yaml \
    --seed_everything="$seed" --model.autoencoder_checkpoint="$AE" --evaluation.judge_path="$JUDGE" "${EXTRA[@]}"
  evaluate "$OUT/lpc_noshuffle_cpu/seed$seed"
done
for method in $BASELINES; do
  for seed in $BASELINE_SEEDS; do
    fit "$OUT/lpc_${method}_cpu/seed$seed" "experiments/lpc_${method}_cpu.yaml" --seed_everything="$seed" \
      --model.autoencoder_checkpoint="$AE" --evaluation.judge_path="$JUDGE" "${EXTRA[@]}"
    evaluate "$OUT/lpc_${method}_cpu/seed$seed"
  done
done
# run dirs are <OUT>/<experiment>/seed<N>, so metrics.json names the experiment and the table groups by it
"$PY" -m sdcd.report --by-experiment "$OUT"/lpc_*_cpu/seed*/ --out "$OUT/table.md" --plot "$OUT/plot.png" \
  --metrics 'reconstruction/acc/static' 'swap/acc/*' 'sample_static/acc/*' 'sample_dynamics_mean/acc/static' 'probe/f/*' 'probe/lam/*' \
  'peers/acc/action'
log "wrote $OUT/table.md"
