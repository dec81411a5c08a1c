#!/usr/bin/env bash
# The paper's comparison at CPU size: SDCD with and without the shuffle, DSVAE and DBSE on Moving
# dSprites cond (static factors cause the dynamics) and simple (independent), the dsprites_small sizes,
# each scored by the judge of its own variant with the swap and paired tests.  make baselines-cpu
#
#   OUT      where everything goes (default runs/baselines_cpu): <OUT>/<variant>-<method>/seed<N>/
#   SEEDS    training seeds (default "0 1");  STEPS  training steps per run (default 2000, what the README table used)
#   VARIANTS default "cond simple";  METHODS default "sdcd_shuffle sdcd_noshuffle dsvae dbse"
#   JOBS     runs at a time (default 2, one thread each);  ARGS  extra overrides for every training run
#   DATA_ARGS  data overrides for the judges *and* the models (they must see the same data), e.g. a
#            smoke run: DATA_ARGS="--data.n_train=64 --data.n_test=32" JUDGE_ARGS="--trainer.max_epochs=1"
# Finished steps are skipped (a run with metrics.json, a judge file that exists), so the script can be
# run again after an interruption. The table (<OUT>/table.md) and the plot (<OUT>/plot.png) are
# written at the end from every metrics.json found.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/baselines_cpu}
SEEDS=${SEEDS:-"0 1"}
STEPS=${STEPS:-2000}
VARIANTS=${VARIANTS:-"cond simple"}
METHODS=${METHODS:-"sdcd_shuffle sdcd_noshuffle dsvae dbse"}
JOBS=${JOBS:-2}
JUDGES=${JUDGES:-judges}  # where the two judge files are (or are written)
read -r -a EXTRA <<< "${ARGS:-}"
read -r -a DATA <<< "${DATA_ARGS:-}"
read -r -a JUDGE_EXTRA <<< "${JUDGE_ARGS:-}"
export LOGGER=csv WANDB_MODE=${WANDB_MODE:-disabled} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
log() { echo "baselines-cpu: $*" | tee -a "$OUT/log.txt"; }

for v in $VARIANTS; do  # one judge per variant, on exactly the data the models see
  judge="$JUDGES/dsprites_small_$v.pt"
  if [ -f "$judge" ]; then log "$judge exists, skipped"; continue; fi
  log "training $judge"
  "$PY" -m sdcd fit --config experiments/judge_dsprites_small.yaml --data.variant="$v" \
    --model.judge_path="$judge" --trainer.enable_progress_bar=false "${DATA[@]}" "${JUDGE_EXTRA[@]}" \
    >> "$OUT/log.txt" 2>&1
done

config_of() {  # method → config and overrides
  case "$1" in
    sdcd_shuffle) echo "experiments/dsprites_small.yaml" ;;
    sdcd_noshuffle) echo "experiments/dsprites_small.yaml --shuffle.every=0" ;;
    dsvae) echo "experiments/dsprites_small_dsvae.yaml" ;;
    dbse) echo "experiments/dsprites_small_dbse.yaml" ;;
    *) echo "baselines-cpu: unknown method '$1' (expected sdcd_shuffle, sdcd_noshuffle, dsvae, dbse)" >&2; exit 2 ;;
  esac
}

run_one() {  # run_one <variant> <method> <seed>
  local v=$1 m=$2 s=$3 dir="$OUT/$1-$2/seed$3"
  if [ -f "$dir/metrics.json" ]; then log "$dir: done, skipped"; return; fi
  rm -rf "$dir"  # an interrupted run starts over (runs are minutes long)
  mkdir -p "$dir"
  local start=$SECONDS
  # shellcheck disable=SC2046
  SDCD_RUN_DIR="$dir" "$PY" -m sdcd fit --config $(config_of "$m") --experiment_name="$v-$m" \
    --seed_everything="$s" --data.variant="$v" --evaluation.judge_path="$JUDGES/dsprites_small_$v.pt" \
    --trainer.max_steps="$STEPS" --test_after_fit=true --trainer.enable_progress_bar=false \
    "${DATA[@]}" "${EXTRA[@]}" > "$dir/train.log" 2>&1 || { log "$dir: FAILED (see $dir/train.log)"; return; }
  log "$dir: $((SECONDS - start)) s"
}

for s in $SEEDS; do
  for v in $VARIANTS; do
    for m in $METHODS; do
      run_one "$v" "$m" "$s" &
      while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 2; done
    done
  done
done
wait

shopt -s nullglob
results=("$OUT"/*/seed*/metrics.json)
if [ ${#results[@]} -eq 0 ]; then log "no metrics.json under $OUT"; exit 1; fi
"$PY" -m sdcd.report --by-experiment "${results[@]}" --out "$OUT/table.md" --plot "$OUT/plot.png" \
  --metrics 'swap/acc/static' 'swap/acc/dynamic' 'paired/acc/static' 'paired/acc/dynamic' \
  'swap/intervention' 'paired/intervention'
log "wrote $OUT/table.md and $OUT/plot.png"
