#!/usr/bin/env python3
"""Does pretraining pay when labels are scarce? (issue 15, AAM's reason to exist.)

For each fold of a study (the suite's splits), one encoder is pretrained on the UniFrac
distances of *every* sample of the study (UniFrac needs no labels, so a user has them for
all samples, test samples included). Then, with 10, 25, 50 and 100 % of the fold's
labelled training samples (a seeded subset, every class kept), three models are fitted and
scored on the fold's test samples:

  rf          q2-sample-classifier's default forest on raw counts
  aam         q2-aam's fit defaults from scratch
  aam-pre     the same fit started from the pretrained encoder (encoder trainable)

Both q2-aam rows are the shipped `fit` with the transformer ensemble alone (pretraining
concerns the transformers); the encoder is the shipped `pretrain` with fit's architecture
(k-mer-profile ASVs, no nucleotide transformer), so that the two rows differ only by the
pretraining.

Usage:
  .venv/bin/python benchmarks/label_scarce.py --datasets sleep-apnea,gepotidacin-visit
  .venv/bin/python benchmarks/label_scarce.py --quick        # 2 folds, short runs
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as A  # noqa: E402

FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def labelled_subset(ds, train_rows, fraction, seed):
    """A seeded share of the training rows; a classifier keeps at least 2 of every class."""
    rng = np.random.default_rng(seed)
    if fraction >= 1:
        return np.sort(train_rows)
    n = max(4, int(round(fraction * len(train_rows))))
    if ds.task == 'classification':
        keep = []
        for c in np.unique(ds.y[train_rows]):
            members = rng.permutation(train_rows[ds.y[train_rows] == c])
            keep += list(members[:max(2, int(round(fraction * len(members))))])
        return np.sort(np.array(keep))
    return np.sort(rng.permutation(train_rows)[:n])


def pretrain_on_all(ds, fold, epochs, threads):
    """An encoder pretrained by the shipped `pretrain` on every sample's UniFrac (its 20 %
    validation split for early stopping)."""
    encoder = A.pretrain_product(ds, np.arange(len(ds.y)), dict(
        epochs=epochs, nucleotide_layers=0, random_seed=1000 * fold), threads=threads)
    return encoder, encoder.config['best_epoch']


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--datasets', default='sleep-apnea,gepotidacin-visit')
    p.add_argument('--folds', type=int, default=5)
    p.add_argument('--fractions', default=','.join(map(str, FRACTIONS)))
    p.add_argument('--pretrain-epochs', type=int, default=40)
    p.add_argument('--quick', action='store_true', help='2 folds and 1/5 of the epochs')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--predictions', default='', metavar='TSV',
                   help='append every test prediction to this TSV ("{dataset}" allowed)')
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    fractions = [float(f) for f in args.fractions.split(',')]
    base = A.VARIANTS['aam-transformer']   # pretraining concerns the transformers
    pre_epochs = max(2, args.pretrain_epochs // 5) if args.quick else args.pretrain_epochs
    table = []
    for key in args.datasets.split(','):
        ds = A.load_dataset(key)
        splits = A.make_splits(ds, 2 if args.quick else args.folds)
        rows = []
        for fold, (tr, te) in enumerate(splits):
            t0 = time.perf_counter()
            encoder, best = pretrain_on_all(ds, fold, pre_epochs, args.threads)
            print(f'{key} fold {fold}: pretrained on all {len(ds.y)} samples '
                  f'(best epoch {best}/{pre_epochs}, {time.perf_counter() - t0:.0f} s)',
                  flush=True)
            for fraction in fractions:
                sub = labelled_subset(ds, tr, fraction, seed=fold)
                for name in ('rf', 'aam', 'aam-pre'):
                    if name == 'rf':
                        pred, _ = A.run_rf(A.VARIANTS['rf'], ds, sub, te, fold)
                    else:
                        pred, _ = A.run_product(base, ds, sub, te, threads=args.threads,
                                                quick=args.quick,
                                                encoder=encoder if name == 'aam-pre' else None)
                    score = A.score(ds.y[te], pred, ds.classes)
                    label = f'{name} {int(round(fraction * 100))}%'
                    rows.append({'dataset': key, 'model': label, 'fold': fold,
                                 'per_sample': A.prediction_rows(ds, label, fold, te, pred),
                                 **score})
                    print(f'  {label:>13} ({len(sub)} labelled): ' +
                          ' '.join(f'{k}={v:.3f}' for k, v in score.items()), flush=True)
        if args.predictions:
            A.write_predictions(args.predictions.format(dataset=key),
                                [{'per_sample': r['per_sample']} for r in rows], 0)
        table += summarise(key, ds, rows, fractions)
    print('\n'.join(table))
    return table


def summarise(key, ds, rows, fractions):
    """Per labelled share: each model's mean score, and aam-pre minus aam, aam minus rf."""
    metric = 'r2' if ds.task == 'regression' else 'accuracy'
    lines = [f'### {key} ({metric}, {len({r["fold"] for r in rows})} folds)', '',
             '| labelled share | rf | aam | aam-pre | aam-pre − aam (ahead/behind) | '
             'aam − rf (ahead/behind) |', '|---|---|---|---|---|---|']
    for fraction in fractions:
        pct = f'{int(round(fraction * 100))}%'
        got = {m: np.array([r[metric] for r in rows if r['model'] == f'{m} {pct}'])
               for m in ('rf', 'aam', 'aam-pre')}
        pre, own = got['aam-pre'] - got['aam'], got['aam'] - got['rf']
        lines.append(f'| {pct} | {got["rf"].mean():.3f} | {got["aam"].mean():.3f} | '
                     f'{got["aam-pre"].mean():.3f} | {pre.mean():+.3f} ({(pre > 0).sum()}/'
                     f'{(pre < 0).sum()}) | {own.mean():+.3f} ({(own > 0).sum()}/'
                     f'{(own < 0).sum()}) |')
    return lines + ['']


if __name__ == '__main__':
    main()
