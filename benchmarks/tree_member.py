#!/usr/bin/env python3
"""Which tree ensemble should be fit's tree member? Scored on the suite's ten rows and
splits, each candidate on log relative abundance keyed by sequence (the linear half's
features; trees split on ranks, so this is relative abundance) against the forest
q2-sample-classifier users run (100 trees on raw counts).

The choice is made leave-one-study-out: for each study, the candidate with the best mean
(candidate - forest) over the rows of the *other* studies. A candidate that every study's
left-out choice agrees on is the default; the output says which rows each choice saw.

Usage: .venv/bin/python benchmarks/tree_member.py [--rows sleep-apnea,...] [--folds 5]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from accuracy import DATASETS, SUITE, load_dataset, make_splits, score  # noqa: E402


def candidates(task, seed):
    from sklearn import ensemble as e
    reg = task == 'regression'
    return {
        'rf100-counts': None,      # the baseline, on raw counts
        'rf500': (e.RandomForestRegressor if reg else e.RandomForestClassifier)(
            n_estimators=500, random_state=seed, n_jobs=1),
        'et500': (e.ExtraTreesRegressor if reg else e.ExtraTreesClassifier)(
            n_estimators=500, random_state=seed, n_jobs=1),
        'et500-leaf2': (e.ExtraTreesRegressor if reg else e.ExtraTreesClassifier)(
            n_estimators=500, min_samples_leaf=2, random_state=seed, n_jobs=1),
        'hgb': (e.HistGradientBoostingRegressor if reg else e.HistGradientBoostingClassifier)(
            random_state=seed),
    }


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('--rows', default=','.join(SUITE))
    p.add_argument('--folds', type=int, default=5)
    args = p.parse_args(argv)
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from q2_aam.engine.linear import log_abundance
    results = {}          # row -> candidate -> primary metric per fold
    for row in args.rows.split(','):
        ds = load_dataset(row)
        seqs = list(ds.sequences)
        unique = sorted(set(seqs))
        X = log_abundance(ds.counts, [unique.index(s) for s in seqs], len(unique)).toarray()
        raw = ds.counts[:, np.argsort(ds.feature_ids.astype(str))].toarray()
        per = {}
        for fold, (tr, te) in enumerate(make_splits(ds, args.folds)):
            for name, est in candidates(ds.task, fold).items():
                t0 = time.perf_counter()
                features = X
                if est is None:
                    est = (RandomForestRegressor if ds.task == 'regression' else
                           RandomForestClassifier)(n_estimators=100, random_state=fold, n_jobs=1)
                    features = raw
                est.fit(features[tr], ds.y[tr])
                if ds.task == 'regression':
                    s = score(ds.y[te], est.predict(features[te]))['r2']
                else:
                    prob = np.zeros((len(te), len(ds.classes)))
                    prob[:, est.classes_] = est.predict_proba(features[te])
                    s = score(ds.y[te], prob, ds.classes)['accuracy']
                per.setdefault(name, []).append(s)
                print(f'{row} fold {fold} {name}: {s:.3f} ({time.perf_counter() - t0:.1f} s)',
                      flush=True)
        results[row] = {k: float(np.mean(v)) for k, v in per.items()}
    names = list(next(iter(results.values())))
    print('\n| row | ' + ' | '.join(names) + ' |\n|---|' + '---|' * len(names))
    for row, r in results.items():
        print(f'| {row} | ' + ' | '.join(f'{r[n]:.3f}' for n in names) + ' |')
    study = {row: DATASETS[row][0] for row in results}
    print('\nLeave-one-study-out choice (mean candidate - forest over the other studies\' rows):')
    for s in sorted(set(study.values())):
        others = [row for row in results if study[row] != s]
        gain = {n: np.mean([results[r][n] - results[r]['rf100-counts'] for r in others])
                for n in names if n != 'rf100-counts'}
        best = max(gain, key=gain.get)
        print(f'- {s}: {best} (saw {", ".join(others)}; ' +
              ', '.join(f'{n} {g:+.3f}' for n, g in gain.items()) + ')')


if __name__ == '__main__':
    main()
