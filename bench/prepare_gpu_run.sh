#!/usr/bin/env bash
# Prepares what bench/gpu_run.sh needs on the device machine (no network there), in the repo root:
#   .whl/     wheels of the packages the device image lacks, for its Python 3.12, at the versions this
#             .venv runs: nflows, jsonargparse and its `signatures` extras (docstring-parser,
#             typeshed-client). The image already has torch, lightning, torchmetrics, einops, numpy,
#             pillow, rich, matplotlib, tensorboard, tqdm, pyyaml, typing-extensions; wandb is not needed
#             (LOGGER=csv) and av only by the video data module.
#   .sheets/  the 25 LPC sheets of data_modules/sprites_sha256.txt, checked, from $SDCD_SPRITES_DIR or
#             ../shared/data/lpc-sprites (../shared does not travel to the device).
# Both folders are ignored through .git/info/exclude and travel with run(carry=[".whl", ".sheets"]).
#
#   bash bench/prepare_gpu_run.sh            # PYTHON=... to take versions from another interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SHEETS_SRC=${SDCD_SPRITES_DIR:-../shared/data/lpc-sprites}
PACKAGES=(nflows jsonargparse docstring-parser typeshed-client)

for dir in .whl .sheets; do
  grep -qxF "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >>.git/info/exclude
done

pins=()
for p in "${PACKAGES[@]}"; do
  pins+=("$p==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p")")
done
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
wheels=("${pins[@]}")
if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${wheels[@]}"; then
  # a package published as an sdist only: build its (pure-Python) wheel here, then fetch the others
  for pin in "${pins[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platforms[@]}" -d .whl "$pin" || "$PY" -m pip wheel -q --no-deps -w .whl "$pin"
  done
fi
for whl in .whl/*.whl; do
  case "$whl" in *-py3-none-any.whl | *-py2.py3-none-any.whl | *cp312*) ;; *) echo "not for the device's Python 3.12: $whl" >&2; exit 1 ;; esac
done

rm -rf .sheets && mkdir -p .sheets/lpc-sprites
(cd "$SHEETS_SRC" && sha256sum --quiet -c "$OLDPWD/data_modules/sprites_sha256.txt")
while read -r _ rel; do
  rel=${rel#\*}
  mkdir -p ".sheets/lpc-sprites/$(dirname "$rel")"
  cp "$SHEETS_SRC/$rel" ".sheets/lpc-sprites/$rel"
done <data_modules/sprites_sha256.txt

ls -1 .whl
du -sh .whl .sheets
echo "carried size: $(du -sc .whl .sheets | tail -1 | cut -f1) KiB (limit 64 MiB with the working tree)"
