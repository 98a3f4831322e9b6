#!/usr/bin/env bash
# make demo: pretrain -> fit (from the pretrained encoder) -> predict held-out samples ->
# plot-validation, then the one-command workflow of q2-sample-classifier users
# (classify-samples: split, fit, test, report beside a random forest), through q2cli, on
# the bundled moving-pictures data (body site).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=q2_aam/data/moving-pictures
OUT=demo-output
# The plugin's defaults, with a fixed seed; pretraining is kept short for the demo.
TRAIN="--p-random-seed 42"
rm -rf "$OUT" && mkdir -p "$OUT"
# Run a training step, keep its full log, and show its notes and per-epoch lines as they
# happen (a fit on a busy machine can take many minutes); on failure, the log's end.
train_step() {
  local log=$OUT/$1.log; shift
  if ! "$@" --verbose 2>&1 | tee "$log" | stdbuf -oL tr '\r' '\n' \
      | { grep --line-buffered -E '^(epoch |Early stop|q2-aam:|Saved )' || true; }; then
    tr '\r' '\n' < "$log" | tail -40; echo "demo: step failed; full log in $log"; exit 1
  fi
}
started=$(date +%s)

echo "==> Holding out the 7 samples that q2-sample-classifier's baseline was scored on"
qiime feature-table filter-samples --i-table $DATA/table.qza \
  --m-metadata-file $DATA/test-ids.body-site.txt --p-exclude-ids \
  --o-filtered-table $OUT/train-table.qza
qiime feature-table filter-samples --i-table $DATA/table.qza \
  --m-metadata-file $DATA/test-ids.body-site.txt \
  --o-filtered-table $OUT/test-table.qza

echo "==> 1/5 Pretraining an encoder on the training samples' UniFrac distances"
train_step pretrain qiime aam pretrain --i-table $OUT/train-table.qza \
  --i-sequences $DATA/rep-seqs.qza --i-distance-matrix $DATA/unweighted-unifrac.qza \
  --p-ignore-missing-samples $TRAIN --p-epochs 20 --o-model $OUT/encoder.qza

echo "==> 2/5 Fitting a body-site classifier from the pretrained encoder"
train_step fit qiime aam fit --i-table $OUT/train-table.qza --i-sequences $DATA/rep-seqs.qza \
  --i-pretrained $OUT/encoder.qza --m-metadata-file $DATA/metadata.tsv \
  --m-metadata-column body-site $TRAIN \
  --o-model $OUT/classifier.qza --o-feature-importance $OUT/classifier-importance.qza

echo "==> 3/5 Predicting the held-out samples"
qiime aam predict --i-model $OUT/classifier.qza --i-table $OUT/test-table.qza \
  --i-sequences $DATA/rep-seqs.qza --o-predictions $OUT/test-predictions.qza
qiime aam predict-probabilities --i-model $OUT/classifier.qza --i-table $OUT/test-table.qza \
  --i-sequences $DATA/rep-seqs.qza --o-probabilities $OUT/test-probabilities.qza
qiime sample-classifier confusion-matrix --i-predictions $OUT/test-predictions.qza \
  --i-probabilities $OUT/test-probabilities.qza \
  --m-truth-file $DATA/metadata.tsv --m-truth-column body-site \
  --o-visualization $OUT/test-confusion-matrix.qzv

echo "==> 4/5 Plotting the validation results"
qiime aam plot-validation --i-model $OUT/encoder.qza --o-visualization $OUT/encoder-validation.qzv
qiime aam plot-validation --i-model $OUT/classifier.qza --o-visualization $OUT/classifier-validation.qzv

echo "==> 5/5 The same question as q2-sample-classifier asks it: classify-samples"
train_step classify qiime aam classify-samples --i-table $DATA/table.qza \
  --i-sequences $DATA/rep-seqs.qza --m-metadata-file $DATA/metadata.tsv \
  --m-metadata-column body-site --p-test-size 0.2 --p-random-state 42 \
  --output-dir $OUT/classify-samples

python - "$OUT" "$DATA" "$started" <<'PY'
import sys, time
import pandas as pd
import qiime2
from q2_aam.engine.savedmodel import SavedModel
out, data, started = sys.argv[1], sys.argv[2], float(sys.argv[3])
model = qiime2.Artifact.load(f'{out}/classifier.qza').view(SavedModel)
pred = qiime2.Artifact.load(f'{out}/test-predictions.qza').view(pd.Series)
truth = qiime2.Metadata.load(f'{data}/metadata.tsv').get_column('body-site').to_series()
correct = (pred == truth.reindex(pred.index)).sum()
training = model.config['training']
print()
print('q2-aam demo summary')
print(f"  training samples      {training['samples']} (validation split {training['validation_size']})")
runs, best = model.config['epochs_run'], model.config['best_epoch']
if model.ensemble_size > 1:   # one value per member
    print(f"  models averaged       {model.ensemble_size} (seeds {training['random_seed']} "
          f"to {training['random_seed'] + model.ensemble_size - 1})")
    runs, best = ', '.join(map(str, runs)), ', '.join(map(str, best))
print(f"  epochs run / best     {runs} / {best}")
print(f"  held-out samples      {len(pred)}; body site right for {correct} "
      f"(accuracy {correct / len(pred):.2f}; random forest on the same split: ~0.57)")
print(f'  wall time             {time.time() - started:.0f} s')
print(f'  visualizations        {out}/classifier-validation.qzv, {out}/encoder-validation.qzv,')
print(f'                        {out}/test-confusion-matrix.qzv,')
print(f'                        {out}/classify-samples/accuracy_results.qzv  (q2-aam beside')
print(f'                        the random forest; qiime tools view FILE)')
stack = model.config['stack']
print('  stacked blend weights ' + ', '.join(
    f'{m} {w:.2f}' for m, w in zip(stack['members'], stack['weights'])))
PY
