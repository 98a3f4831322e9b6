#!/usr/bin/env python3
"""What tells left from right palm in moving-pictures, and what that does to the palm scores.

Why: on both moving-pictures rows every model, the random forest included, gets the palms
right no more often than a coin, and the q2-aam / forest gap on that data set is all in
those palm calls. This script asks whether the hands can be told apart at all, and by what:
on the 17 palm samples alone, with whole person-days held out, it scores a forest, a
logistic regression and a nearest neighbour on composition, the same models after every
sample is subsampled to one depth, and a forest on sequencing depth alone. Then, from the
kept predictions of the stratified row, it counts how often each model gets a palm right
when the other hand of the same person and day was in training, and it lists the palms whose
composition is closest to a sample of another body site.

Usage:
  .venv/bin/python benchmarks/palm_signal.py \\
      [--predictions benchmarks/predictions/moving-pictures.tsv]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import load_dataset, rarefy_counts  # noqa: E402  (the benchmark's own)

SEEDS = range(5)


def palm_rows(ds):
    """Rows of the palm classes and a 0/1 label (1 = left palm)."""
    palms = [i for i, c in enumerate(ds.classes) if c.endswith('palm')]
    if len(palms) != 2:
        raise SystemExit(f'expected two palm classes, found {len(palms)} among {ds.classes}')
    rows = np.flatnonzero(np.isin(ds.y, palms))
    left = ds.classes.index('left palm')
    return rows, (ds.y[rows] == left).astype(int)


def leave_group_out_accuracy(features, y, groups, make_model):
    """Fraction of samples called right when each group is predicted by a model fitted on
    all the other groups."""
    right = 0
    for g in np.unique(groups):
        test = groups == g
        model = make_model().fit(features[~test], y[~test])
        right += int((model.predict(features[test]) == y[test]).sum())
    return right / len(y)


def models(seed):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    return {
        'random forest, counts': (lambda: RandomForestClassifier(100, random_state=seed),
                                  lambda c: c),
        'logistic regression, log relative abundance': (
            lambda: LogisticRegression(max_iter=5000),
            lambda c: np.log(c / c.sum(1, keepdims=True) + 1e-5)),
        'nearest neighbour, shared ASVs (Jaccard)': (
            lambda: KNeighborsClassifier(1, metric='jaccard'), lambda c: c > 0),
    }


def separability(counts, y, groups, seeds=SEEDS):
    """{(features, model): [accuracy per seed]} for composition as sequenced, composition
    subsampled to the smallest sample's depth, and depth alone."""
    from sklearn.ensemble import RandomForestClassifier
    depth = int(counts.sum(1).min())
    out = {}
    for seed in seeds:
        even = rarefy_counts(counts, depth, seed)
        for name, (make, transform) in models(seed).items():
            for label, c in (('as sequenced', counts), (f'subsampled to {depth} reads', even)):
                out.setdefault((label, name), []).append(
                    leave_group_out_accuracy(transform(c), y, groups, make))
        out.setdefault(('depth alone', 'random forest, log total reads'), []).append(
            leave_group_out_accuracy(np.log(counts.sum(1, keepdims=True)), y, groups,
                                     lambda: RandomForestClassifier(100, random_state=seed)))
    return out


def lookalikes(counts, rows, is_palm):
    """For each palm in `rows` whose nearest sample (Bray-Curtis on relative abundance) is
    not a palm: (palm row, nearest row, its distance, the nearest palm's distance)."""
    from scipy.spatial.distance import cdist
    rel = counts / counts.sum(1, keepdims=True)
    dist = cdist(rel[rows], rel, 'braycurtis')
    dist[np.arange(len(rows)), rows] = np.inf                       # not itself
    out = []
    for i, r in enumerate(rows):
        nearest = int(dist[i].argmin())
        if not is_palm[nearest]:
            out.append((r, nearest, float(dist[i, nearest]), float(dist[i, is_palm].min())))
    return out


def other_hand(sample_ids, groups, rows):
    """{palm sample: the other palm of the same person and day}, where both were sampled."""
    twin = {}
    for g in np.unique(groups[rows]):
        pair = [sample_ids[r] for r in rows if groups[r] == g]
        if len(pair) == 2:
            twin[pair[0]], twin[pair[1]] = pair[1], pair[0]
    return twin


def twin_effect(predictions, twin):
    """Palm calls per model, split by whether the sample's other hand was in training (it
    was, unless it is among the same split's test samples)."""
    p = predictions[predictions.sample_id.isin(twin)]
    if p.empty:
        raise SystemExit('no palm with an other-hand twin among these predictions')
    tested = p.groupby(['model', 'split_seed', 'fold']).sample_id.agg(set)
    p = p.assign(twin_in_training=[twin[s] not in tested[(m, s2, f)] for s, m, s2, f in zip(
                     p.sample_id, p.model, p.split_seed, p.fold)],
                 right=p.prediction == p.truth)
    return (p.groupby(['model', 'twin_in_training'])
            .agg(palms=('right', 'size'), right=('right', 'sum')).reset_index())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--predictions', default=str(Path(__file__).parent / 'predictions' /
                                                 'moving-pictures.tsv'),
                    help='accuracy.py --predictions file of the stratified row')
    args = ap.parse_args(argv)
    ds = load_dataset('moving-pictures-by-day')          # groups = person-days
    rows, y = palm_rows(ds)
    every = ds.counts.toarray().astype(np.int64)                  # all samples, dense
    counts = every[rows]
    groups = ds.groups[rows]
    lines = [f'{len(rows)} palms ({y.sum()} left), {len(np.unique(groups))} person-days, '
             f'each person-day held out in turn; a coin gets 0.5, always "right palm" '
             f'{1 - y.mean():.3f}', '',
             '| features | model | palm accuracy, mean (min-max over seeds) |', '|---|---|---|']
    for (features, model), acc in separability(counts, y, groups).items():
        lines.append(f'| {features} | {model} | {np.mean(acc):.3f} '
                     f'({min(acc):.3f}-{max(acc):.3f}) |')
    depth, asvs = counts.sum(1), (counts > 0).sum(1)
    lines += ['', '| sample | palm | person / day | reads | ASVs |', '|---|---|---|---|---|']
    for i in np.lexsort((depth, y)):
        lines.append(f'| {ds.sample_ids[rows[i]]} | {"left" if y[i] else "right"} | '
                     f'{groups[i]} | {depth[i]} | {asvs[i]} |')
    is_palm = np.isin(np.arange(len(ds.y)), rows)
    lines += ['', 'Palms whose nearest sample by composition (Bray-Curtis on relative '
              'abundance) is not a palm:', '',
              '| palm | person / day | nearest sample | its site, person / day | distance | '
              'nearest palm |', '|---|---|---|---|---|---|']
    for r, n, d, d_palm in lookalikes(every, rows, is_palm):
        lines.append(f'| {ds.sample_ids[r]} ({ds.classes[ds.y[r]]}) | {ds.groups[r]} | '
                     f'{ds.sample_ids[n]} | {ds.classes[ds.y[n]]}, {ds.groups[n]} | {d:.2f} | '
                     f'{d_palm:.2f} |')
    if Path(args.predictions).exists():
        pred = pd.read_csv(args.predictions, sep='\t', dtype={'sample_id': str})
        effect = twin_effect(pred, other_hand(ds.sample_ids, ds.groups, rows))
        lines += ['', f'Palm calls in {args.predictions}, by whether the other hand of the '
                  'same person and day was in training:', '',
                  '| model | other hand in training | palms right |', '|---|---|---|']
        for r in effect.itertuples():
            lines.append(f'| {r.model} | {"yes" if r.twin_in_training else "no"} | '
                         f'{r.right}/{r.palms} = {r.right / r.palms:.3f} |')
    else:
        lines += ['', f'(No predictions file at {args.predictions}: the table of palm calls '
                  'by whether the other hand was in training is left out.)']
    text = '\n'.join(lines)
    print(text)
    return text


if __name__ == '__main__':
    main()
