#!/usr/bin/env python3
"""Pool the per-sample predictions of several accuracy.py runs (split draws, folds run as
separate processes) and compare each model with a reference on the splits they share.

Why: on moving-pictures a split has 7 test samples, so one sample moves accuracy by 0.143
and five splits cannot tell two models apart. Pooling split draws, and pairing the models
split by split, says how large a difference is against the noise.

Usage:
  .venv/bin/python benchmarks/accuracy.py --datasets moving-pictures --variants rf \\
      --split-seed 3 --output '' --predictions mp.tsv            # once per seed / fold
  .venv/bin/python benchmarks/pooled.py mp*.tsv --reference rf
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import score  # noqa: E402  (the metrics accuracy.py prints)

SPLIT = ['dataset', 'model', 'split_seed', 'fold']
# probabilities are floored here for the log loss: a forest's vote share can be exactly 0,
# and one such sample would otherwise make its log loss infinite (0.001 is a tenth of one
# tree's vote in the default 100-tree forest)
LOG_LOSS_FLOOR = 1e-3
LOWER_IS_BETTER = ('mae', 'log_loss')


def load(paths):
    """Every prediction file, one row per (split, test sample); a sample predicted twice for
    the same model and split (a file passed twice, or a split rerun) is an error."""
    frames = [pd.read_csv(p, sep='\t', dtype={'sample_id': str}) for p in paths]
    df = pd.concat(frames, ignore_index=True)
    dup = df.duplicated(SPLIT + ['sample_id'], keep=False)
    if dup.any():
        twice = df.loc[dup, SPLIT + ['sample_id']].drop_duplicates()
        raise SystemExit(f'{len(twice)} test samples are predicted more than once by the same '
                         f'model in the same split, e.g. {twice.head(3).to_dict("records")}: '
                         'pass each run\'s file once, and do not append a rerun to its file.')
    return df


def merge_classes(df, spec):
    """Score classes as one, e.g. 'palm=left palm,right palm': truth and each model's call
    are relabelled and the classes' probabilities summed. Why: on moving-pictures no model
    tells the hands apart (benchmarks/palm_signal.py); merged, the score says how well each
    model knows the body sites that can be learnt."""
    name, sep, members = spec.partition('=')
    members = [m.strip() for m in members.split(',') if m.strip()]
    if not sep or not name.strip() or len(members) < 2:
        raise SystemExit(f'--merge {spec!r}: write the new class, "=", and two or more classes '
                         'separated by commas, e.g. --merge "palm=left palm,right palm"')
    known = set(df.truth.astype(str))
    missing = [m for m in members if m not in known]
    if missing:
        raise SystemExit(f'--merge: {len(missing)} of the classes to merge are not a true class '
                         f'in these predictions: {missing}; the classes are {sorted(known)}')
    name = name.strip()
    relabel = {m: name for m in members}
    out = df.assign(truth=df.truth.replace(relabel), prediction=df.prediction.replace(relabel))
    columns = [f'p({m})' for m in members if f'p({m})' in df]
    if columns:
        out = out.drop(columns=columns)
        out[f'p({name})'] = df[columns].sum(axis=1, min_count=len(columns))
    return out


def common_splits(df):
    """Only the splits (per data set) that every model in the files ran, so that the summary
    compares like with like."""
    keys = ['dataset', 'split_seed', 'fold']
    per_split = df.groupby(keys).model.nunique()
    per_dataset = df.groupby('dataset').model.nunique()
    keep = per_split[per_split.to_numpy() == per_dataset.loc[
        per_split.index.get_level_values('dataset')].to_numpy()].index
    return df[pd.MultiIndex.from_frame(df[keys]).isin(keep)]


def split_scores(df):
    """The metrics accuracy.py prints, computed back from the predictions, one row per split."""
    rows = []
    for key, g in df.groupby(SPLIT, sort=True):
        probs = [c for c in g.columns if c.startswith('p(') and g[c].notna().all()]
        rec = dict(zip(SPLIT, key), n=len(g))
        if probs:
            classes = [c[2:-1] for c in probs]
            truth = g['truth'].map({c: i for i, c in enumerate(classes)}).to_numpy()
            rec.update(score(truth, g[probs].to_numpy(), classes))
            # the calls as written, not the argmax of the probabilities: the two agree until
            # --merge sums classes, and then a call of either merged class is that class
            rec['accuracy'] = float((g['prediction'] == g['truth']).mean())
            p_true = g[probs].to_numpy()[np.arange(len(g)), truth]
            rec['log_loss'] = float(-np.log(np.maximum(p_true, LOG_LOSS_FLOOR)).mean())
        else:
            rec.update(score(g['truth'].astype(float), g['prediction'].astype(float)))
        rows.append(rec)
    return pd.DataFrame(rows)


def metrics_of(scores):
    return [m for m in ('r2', 'mae', 'accuracy', 'auroc', 'log_loss') if m in scores and
            scores[m].notna().any()]


def summary_table(scores, df):
    """Mean ± sd over splits per model, and for classes the right calls pooled per class."""
    lines = []
    for ds, s in scores.groupby('dataset'):
        ms = metrics_of(s)
        lines += [f'### {ds}', '', '| model | splits | test predictions | ' +
                  ' | '.join(ms) + ' |', '|---|---|---|' + '---|' * len(ms)]
        for model, g in s.groupby('model'):
            cells = [f'{g[m].mean():.3f} ± {g[m].std(ddof=1) if len(g) > 1 else 0:.3f}'
                     for m in ms]
            lines.append(f'| {model} | {len(g)} | {int(g.n.sum())} | ' + ' | '.join(cells) + ' |')
        if 'accuracy' in ms:
            d = df[df.dataset == ds]
            right = (d.truth == d.prediction).groupby([d.model, d.truth]).agg(['sum', 'count'])
            classes = sorted(d.truth.unique())
            lines += ['', 'Right calls per true class, pooled over splits:', '',
                      '| model | ' + ' | '.join(classes) + ' |', '|---|' + '---|' * len(classes)]
            for model in sorted(d.model.unique()):
                lines.append(f'| {model} | ' + ' | '.join(
                    f'{right.loc[(model, c), "sum"]}/{right.loc[(model, c), "count"]}'
                    if (model, c) in right.index else '-' for c in classes) + ' |')
        lines.append('')
    return '\n'.join(lines)


def paired_table(scores, reference, n_boot=10000, seed=0):
    """Each model minus the reference on the splits both ran: mean difference, a bootstrap
    95 % interval over splits, and the splits ahead / level / behind."""
    lines = []
    rng = np.random.default_rng(seed)
    for ds, s in scores.groupby('dataset'):
        if reference not in set(s.model):
            lines += [f'({ds}: no {reference} predictions in these files, nothing to pair '
                      f'with; models: {", ".join(sorted(set(s.model)))})', '']
            continue
        ms = metrics_of(s)
        ref = s[s.model == reference].set_index(['split_seed', 'fold'])
        lines += [f'### {ds}: each model minus {reference}, split by split', '',
                  '| model | shared splits | ' + ' | '.join(
                      f'Δ {m} (95 % CI) | ahead / level / behind' for m in ms) + ' |',
                  '|---|---|' + '---|---|' * len(ms)]
        for model, g in s[s.model != reference].groupby('model'):
            g = g.set_index(['split_seed', 'fold'])
            shared = g.index.intersection(ref.index)
            if not len(shared):
                continue
            cells = []
            for m in ms:
                d = (g.loc[shared, m] - ref.loc[shared, m]).to_numpy()
                boot = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(1)
                lo, hi = np.percentile(boot, [2.5, 97.5])
                better = d < 0 if m in LOWER_IS_BETTER else d > 0
                worse = d > 0 if m in LOWER_IS_BETTER else d < 0
                cells.append(f'{d.mean():+.3f} ({lo:+.3f}, {hi:+.3f}) | '
                             f'{better.sum()} / {(d == 0).sum()} / {worse.sum()}')
            lines.append(f'| {model} | {len(shared)} | ' + ' | '.join(cells) + ' |')
        lines.append('')
    return '\n'.join(lines)


PRIMARY = {'regression': 'r2', 'classification': 'accuracy'}


def primary_metric(s):
    """A row's headline score: R² for a regression, accuracy for a classification."""
    return 'accuracy' if 'accuracy' in s and s['accuracy'].notna().any() else 'r2'


def across_table(scores, reference, seen=(), n_boot=10000, seed=0):
    """Each model minus the reference over every row (data set) at once.

    Per row: the mean difference of the headline score over the splits both ran, a bootstrap
    95 % interval over those splits, and whether the row is ahead (interval above 0), level
    (interval includes 0) or behind. Pooled: the mean of the rows' mean differences, with an
    interval from resampling splits within each row, so a row with many splits does not
    outweigh the others. R² and accuracy differences are averaged as they are: both are
    fractions of the way from a trivial predictor to a perfect one. ``seen`` rows are marked:
    a q2-aam default was judged on them.
    """
    rng = np.random.default_rng(seed)
    lines = []
    for model in sorted(set(scores.model) - {reference}):
        rows, boots = [], []
        for ds, s in scores.groupby('dataset'):
            m = primary_metric(s)
            ref = s[s.model == reference].set_index(['split_seed', 'fold'])[m]
            own = s[s.model == model].set_index(['split_seed', 'fold'])[m]
            shared = own.index.intersection(ref.index)
            if not len(shared):
                continue
            d = (own.loc[shared] - ref.loc[shared]).to_numpy()
            boot = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(1)
            lo, hi = np.percentile(boot, [2.5, 97.5])
            verdict = 'ahead' if lo > 0 else 'behind' if hi < 0 else 'level'
            rows.append((ds, m, len(d), own.loc[shared].mean(), ref.loc[shared].mean(),
                         d.mean(), lo, hi, verdict, (d > 0).sum(), (d == 0).sum(), (d < 0).sum()))
            boots.append(boot)
        if not rows:
            continue
        lines += [f'### {model} minus {reference}, every row', '',
                  f'| row | metric | splits | {model} | {reference} | Δ (95 % CI) | row | '
                  'splits ahead / level / behind |', '|---|---|---|---|---|---|---|---|']
        for ds, m, n, a, b, d, lo, hi, verdict, w, t, l in rows:
            mark = ' (seen)' if ds in seen else ''
            lines.append(f'| {ds}{mark} | {m} | {n} | {a:.3f} | {b:.3f} | {d:+.3f} '
                         f'({lo:+.3f}, {hi:+.3f}) | {verdict} | {w} / {t} / {l} |')
        pooled = np.mean(boots, axis=0)
        lo, hi = np.percentile(pooled, [2.5, 97.5])
        mean = np.mean([r[5] for r in rows])
        verdicts = [r[8] for r in rows]
        lines.append(f'| **pooled, {len(rows)} rows** | | {sum(r[2] for r in rows)} | '
                     f'{np.mean([r[3] for r in rows]):.3f} | {np.mean([r[4] for r in rows]):.3f} '
                     f'| **{mean:+.3f} ({lo:+.3f}, {hi:+.3f})** | '
                     f'{verdicts.count("ahead")} ahead / {verdicts.count("level")} level / '
                     f'{verdicts.count("behind")} behind | '
                     f'{sum(r[9] for r in rows)} / {sum(r[10] for r in rows)} / '
                     f'{sum(r[11] for r in rows)} |')
        lines.append('')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('predictions', nargs='+', help='TSV files written by accuracy.py '
                   '--predictions')
    p.add_argument('--reference', default='rf', help='the model the others are compared '
                   'with (default: rf, the random forest)')
    p.add_argument('--common-splits', action='store_true', help='keep only the splits that '
                   'every model ran (per data set)')
    p.add_argument('--across', action='store_true', help='also one table per model over '
                   'every row: the headline score (R² or accuracy) minus the reference\'s, '
                   'per row and pooled over rows')
    p.add_argument('--merge', action='append', default=[], metavar='NEW=A,B',
                   help='score classes A and B as one class NEW (repeatable), e.g. '
                   '--merge "palm=left palm,right palm"')
    args = p.parse_args(argv)
    df = load(args.predictions)
    for spec in args.merge:
        df = merge_classes(df, spec)
    if args.common_splits:
        df = common_splits(df)
    scores = split_scores(df)
    text = summary_table(scores, df) + '\n' + paired_table(scores, args.reference)
    if args.across:
        from accuracy import SEEN
        text += '\n' + across_table(scores, args.reference, seen=SEEN)
    print(text)
    return text


if __name__ == '__main__':
    main()
