#!/usr/bin/env python3
"""Add a blended model to prediction files: NEW = (1 - w) x A + w x B, split by split.

Why: q2-aam's fitted model averages its transformer ensemble with its linear half
(linear_weight). accuracy.py's `aam` variant computes exactly this average in run_aam, but
the transformer ensemble takes most of an hour over the suite; the linear half takes a
minute. With the transformer's predictions kept (`aam-transformer`), a new weight is
scored from the files without training anything again. Values are averaged for a
regression; class probabilities for a classification, and the call is their argmax.

Usage (the suite's rows at the default weight 0.75, then the table):
  .venv/bin/python benchmarks/blend.py benchmarks/predictions/suite/*.tsv \\
      --new aam --a aam-transformer --b linear --weight 0.75 --in-place
  .venv/bin/python benchmarks/pooled.py benchmarks/predictions/suite/*.tsv --across
"""
import argparse
import sys

import numpy as np
import pandas as pd

KEYS = ['split_seed', 'dataset', 'fold', 'sample_id']


def blend(df, new, a, b, weight):
    """The rows of model ``new`` made from models ``a`` and ``b`` of one prediction file."""
    left = df[df.model == a].set_index(KEYS)
    right = df[df.model == b].set_index(KEYS)
    if not len(left) or not len(right):
        raise SystemExit(f'no predictions of {a if not len(left) else b!r} here; models: '
                         f'{sorted(set(df.model))}')
    missing = left.index.difference(right.index)
    if len(missing) or len(right.index.difference(left.index)):
        raise SystemExit(f'{a} and {b} predicted different samples (e.g. '
                         f'{list(missing[:3]) or list(right.index.difference(left.index)[:3])}); '
                         'blend only predictions of the same splits.')
    right = right.loc[left.index]
    out = left.copy()
    probs = [c for c in df.columns if c.startswith('p(') and left[c].notna().all()]
    if probs:
        out[probs] = (1 - weight) * left[probs].to_numpy() + weight * right[probs].to_numpy()
        names = np.array([c[2:-1] for c in probs], dtype=object)
        out['prediction'] = names[out[probs].to_numpy().argmax(axis=1)]
    else:
        out['prediction'] = ((1 - weight) * left.prediction.astype(float) +
                             weight * right.prediction.astype(float))
    out['model'] = new
    return out.reset_index()[df.columns]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('predictions', nargs='+', help='TSV files written by accuracy.py')
    p.add_argument('--new', required=True, help='name of the blended model')
    p.add_argument('--a', required=True, help='the model weighted 1 - w')
    p.add_argument('--b', required=True, help='the model weighted w')
    p.add_argument('--weight', type=float, required=True, help='w, in [0, 1]')
    p.add_argument('--in-place', action='store_true', help='rewrite each file with the new '
                   'rows (replacing any earlier rows of that model); else print them')
    args = p.parse_args(argv)
    if not 0 <= args.weight <= 1:
        raise SystemExit(f'--weight must be in [0, 1], not {args.weight}')
    for path in args.predictions:
        df = pd.read_csv(path, sep='\t', dtype={'sample_id': str})
        rows = blend(df, args.new, args.a, args.b, args.weight)
        if args.in_place:
            kept = df[df.model != args.new]
            pd.concat([kept, rows], ignore_index=True).to_csv(path, sep='\t', index=False)
            print(f'{path}: {len(rows)} {args.new} predictions', file=sys.stderr)
        else:
            rows.to_csv(sys.stdout, sep='\t', index=False, header=path == args.predictions[0])


if __name__ == '__main__':
    main()
