#!/usr/bin/env python3
"""Choose fit's linear_weight leave-one-study-out, from kept predictions.

For each weight on a grid, each row's blend of the transformer ensemble and the linear half
(benchmarks/blend.py) is scored against the default random forest. A study's rows are then
reported at the weight that the *other* studies favour (the mean of their rows' differences),
so no row is judged at a weight chosen on its own study. The default is the weight all
studies favour together; the table shows how far each row's own best is from it.

Usage:
  .venv/bin/python benchmarks/loso_weight.py benchmarks/predictions/suite/*.tsv
"""
import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import DATASETS  # noqa: E402
from blend import blend  # noqa: E402
from pooled import primary_metric, split_scores  # noqa: E402

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def row_differences(paths, a, b, reference, grid=GRID):
    """rows x weights: the mean over splits of (blend - reference) in the row's headline
    score (R² or accuracy)."""
    table = {}
    for path in paths:
        df = pd.read_csv(path, sep='\t', dtype={'sample_id': str})
        frames = [df[df.model == reference]] + [blend(df, f'w={w}', a, b, w) for w in grid]
        scores = split_scores(pd.concat(frames, ignore_index=True))
        for row, s in scores.groupby('dataset'):
            m = primary_metric(s)
            ref = s[s.model == reference].set_index(['split_seed', 'fold'])[m]
            table[row] = {w: float((s[s.model == f'w={w}'].set_index(['split_seed', 'fold'])[m]
                                    - ref).mean()) for w in grid}
    return pd.DataFrame(table).T.sort_index()


def study_of(row):
    return DATASETS[row][0] if row in DATASETS else row


def leave_one_study_out(diffs):
    """Per row: the weight the other studies' rows favour, and the row's difference there."""
    out = []
    for row in diffs.index:
        others = diffs[[study_of(r) != study_of(row) for r in diffs.index]]
        chosen = float(others.mean().idxmax())
        out.append((row, study_of(row), chosen, diffs.loc[row, chosen],
                    float(diffs.loc[row].idxmax())))
    return pd.DataFrame(out, columns=['row', 'study', 'weight chosen without it',
                                      'Δ at that weight', 'its own best weight'])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('predictions', nargs='+')
    p.add_argument('--a', default='aam-transformer', help='the model weighted 1 - w')
    p.add_argument('--b', default='linear', help='the model weighted w (linear_weight)')
    p.add_argument('--reference', default='rf')
    args = p.parse_args(argv)
    diffs = row_differences(args.predictions, args.a, args.b, args.reference)
    print(f'Each row: blend minus {args.reference} at linear_weight w (mean over splits)\n')
    print('| row | ' + ' | '.join(f'w={w:g}' for w in diffs.columns) + ' |')
    print('|---|' + '---|' * len(diffs.columns))
    for row, values in diffs.iterrows():
        print(f'| {row} | ' + ' | '.join(f'{v:+.3f}' for v in values) + ' |')
    print('| **mean** | ' + ' | '.join(f'**{v:+.3f}**' for v in diffs.mean()) + ' |\n')
    loso = leave_one_study_out(diffs)
    print('| row | study | w chosen on the other studies | Δ at that w | its own best w |')
    print('|---|---|---|---|---|')
    for r in loso.itertuples(index=False):
        print(f'| {r[0]} | {r[1]} | {r[2]:g} | {r[3]:+.3f} | {r[4]:g} |')
    print(f'\nmean Δ, each row at the weight chosen without its study: '
          f'{loso["Δ at that weight"].mean():+.3f}; chosen on every study: '
          f'w={float(diffs.mean().idxmax()):g}')


if __name__ == '__main__':
    main()
