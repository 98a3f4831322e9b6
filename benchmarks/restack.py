#!/usr/bin/env python3
"""Compare stacking rules on kept predictions, without training anything again.

accuracy.py's aam row keeps, per test fold, the shipped model's out-of-fold table (every
training sample, each member's prediction from a fit that did not see it: TSV ...-oof.tsv)
and every member's test predictions (the rows aam:transformer, linear and tree). A rule
turns the first into weights (engine/stack.py), applied here to the second; each row is
scored against the forest on the same folds, and the rule for each study is chosen
leave-one-study-out (the rule the other studies favour), so no row is reported at a rule
its own study chose.

Usage: .venv/bin/python benchmarks/restack.py benchmarks/predictions/stack
       .venv/bin/python benchmarks/restack.py benchmarks/predictions/stack \
           --transformer-from benchmarks/predictions/stack-refit   # another run's transformers
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from accuracy import DATASETS, score  # noqa: E402
from q2_aam.engine import stack as stack_module  # noqa: E402

# each member's test predictions: the product's rows for the transformers and the k-mer
# member, the stand-alone variants' for the linear and tree members (the same fits)
MEMBERS = {'transformer': 'aam:transformer', 'linear': 'linear', 'tree': 'tree',
           'kmers': 'aam:kmers'}
RULES = {
    'shipped': dict(),
    'no-calibration': dict(calibrate=False),
    'shrink-100': dict(shrink_samples=100),
    'shrink-0': dict(shrink_samples=0),
    'no-calibration-shrink-0': dict(calibrate=False, shrink_samples=0),
    'equal': None,
    'without-transformer': dict(without='transformer'),
    'without-kmers': dict(without='kmers'),      # the blend before 2026-12-07 (stop 32)
    # the rule before 2026-12-07: the transformers' calibration applied to their average
    # (needs the run's per-model rows; without them every rule calibrates the average)
    'calibrate-average': dict(calibrate_each_model=False),
}


def _member_matrix(rows, task, classes):
    rows = rows.sort_values('sample_id')
    if task == 'regression':
        return rows['sample_id'].to_numpy(), rows['prediction'].to_numpy(float)
    return rows['sample_id'].to_numpy(), rows[[f'p({c})' for c in classes]].to_numpy(float)


def _records(row, fold, ids, truth_names, pred, task, classes, model):
    """Per-sample rows in accuracy.py's prediction format (pooled.py reads them)."""
    out = []
    for k, sample in enumerate(ids):
        rec = {'dataset': row, 'model': model, 'fold': fold, 'sample_id': sample,
               'split_seed': 0}
        if task == 'regression':
            rec.update(truth=float(truth_names[k]), prediction=float(pred[k]))
        else:
            rec.update(truth=truth_names[k], prediction=classes[int(np.argmax(pred[k]))])
            rec.update({f'p({c})': float(q) for c, q in zip(classes, pred[k])})
        out.append(rec)
    return out


def _each_model(rows, task, classes):
    """A classifier's transformer models' test probabilities one by one, (models, n, C),
    where the run kept them (accuracy.py since 2026-12-07); else None."""
    names = sorted(m for m in rows['model'].unique() if ':transformer-model-' in m)
    if task != 'classification' or not names:
        return None
    return np.stack([_member_matrix(rows[rows['model'] == m], task, classes)[1]
                     for m in names])


RECORDS = []     # every rule's per-sample predictions, for --write
WEIGHTS = {}     # row -> the shipped rule's weights per fold


def rule_scores(folder, transformer_from=None):
    """{row: {rule or model: [primary metric per fold]}}. ``transformer_from``: a folder of
    another aam run on the same folds whose transformer test predictions replace this one's
    (its out-of-fold rows are the same when only the deployed members differ)."""
    out = {}
    for path in sorted(Path(folder).glob('*-oof.tsv')):
        row = path.name[:-len('-oof.tsv')]
        test = pd.read_csv(Path(folder) / f'{row}.tsv', sep='\t', dtype={'sample_id': str})
        if transformer_from is not None:
            other = Path(transformer_from) / f'{row}.tsv'
            if not other.exists():
                continue
            theirs = pd.read_csv(other, sep='\t', dtype={'sample_id': str})
            theirs = theirs[theirs['model'].str.endswith(':transformer')].assign(
                model='aam:transformer')
            test = pd.concat([test[test['model'] != 'aam:transformer'], theirs])
        oof = pd.read_csv(path, sep='\t', dtype={'sample-id': str})
        task = 'regression' if 'prediction:linear' in oof else 'classification'
        classes = None
        if task == 'classification':
            classes = [c[2:-1] for c in test.columns if c.startswith('p(')]
        per = {}
        # the members this run's model had (runs before the k-mer member lack it)
        here = [m for m in MEMBERS if f'prediction:{m}' in oof or
                any(c.startswith(f'prob:{m}:') for c in oof.columns)]
        for fold, held in oof.groupby('fold'):
            t = test[test['fold'] == fold]
            members, ids = {}, None
            for m, model in ((m, MEMBERS[m]) for m in here):
                ids, members[m] = _member_matrix(t[t['model'] == model], task, classes)
            each = _each_model(t, task, classes)
            if each is not None:          # a classifier's transformers, model by model
                members['transformer'] = each
            truth_rows = t[t['model'] == 'rf'].sort_values('sample_id')
            truth = truth_rows['truth'].to_numpy()
            if task == 'classification':
                truth = np.array([classes.index(x) for x in truth])
            labels = None
            if task == 'classification':    # the training part's classes, as fit saw them
                labels = [c[len('prob:linear:'):] for c in held.columns
                          if c.startswith('prob:linear:')]
                col = [classes.index(c) for c in labels]
                y = held['truth'].map({c: i for i, c in enumerate(labels)}).to_numpy(int)
                oof_m = {m: held[[f'prob:{m}:{c}' for c in labels]].to_numpy(float)
                         for m in here}
                test_m = {m: members[m][..., col] for m in here}
            else:
                y = held['truth'].to_numpy(float)
                oof_m = {m: held[f'prediction:{m}'].to_numpy(float) for m in here}
                test_m = members

            truth_names = truth_rows['truth'].to_numpy()

            def scored(pred, name=None):
                if task == 'classification':
                    full = np.zeros((len(pred), len(classes)))
                    full[:, col] = pred
                    pred = full
                if name is not None:
                    RECORDS.extend(_records(row, fold, ids, truth_names, pred, task, classes,
                                            name))
                if task == 'classification':
                    return score(truth, pred, classes)['accuracy']
                return score(truth, pred)['r2']
            for name, rule in RULES.items():
                if rule is None:
                    stack = stack_module.equal_stack(here, task, 'rule')
                else:
                    rule = dict(rule)
                    if rule.get('without') is not None and rule['without'] not in here:
                        continue              # a rule about a member this run lacks
                    left_out = rule.pop('without', None)
                    names = [m for m in here if m != left_out]
                    each_model = rule.pop('calibrate_each_model', None)
                    stack = stack_module.fit_stack({m: oof_m[m] for m in names}, y, task,
                                                   **rule)
                    if each_model is not None:
                        stack.calibrate_each_model = each_model
                if name == 'shipped':
                    WEIGHTS.setdefault(row, []).append(dict(zip(stack.members, stack.weights)))
                per.setdefault(name, []).append(scored(
                    stack_module.apply_stack(stack, {m: test_m[m] for m in stack.members}),
                    name=f'stack:{name}'))
            for model in ('rf', 'aam', 'linear', 'tree', 'aam:transformer', 'aam:kmers'):
                rows = t[t['model'] == model]
                if not len(rows):
                    continue
                _, pred = _member_matrix(rows, task, classes)
                if task == 'classification':
                    per.setdefault(model, []).append(score(truth, pred, classes)['accuracy'])
                else:
                    per.setdefault(model, []).append(score(truth, pred)['r2'])
        out[row] = per
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('folder')
    p.add_argument('--transformer-from', default=None)
    p.add_argument('--write', default='', metavar='TSV',
                   help='write every rule\'s per-sample predictions, the forest\'s and the '
                   'leave-one-study-out choice\'s ("stack:loso"), for pooled.py --across')
    args = p.parse_args(argv)
    scores = rule_scores(args.folder, args.transformer_from)
    names = [n for n in list(RULES) + ['aam', 'linear', 'tree', 'aam:transformer', 'aam:kmers']
             if all(n in per for per in scores.values())]
    print('| row | forest | ' + ' | '.join(names) + ' |\n|---|---|' + '---|' * len(names))
    for row, per in scores.items():
        rf = np.mean(per['rf'])
        print(f'| {row} | {rf:.3f} | ' + ' | '.join(
            f'{np.mean(per[n]) - rf:+.3f}' for n in names) + ' |')
    pooled = {n: np.mean([np.mean(per[n]) - np.mean(per['rf']) for per in scores.values()])
              for n in names}
    print('| **pooled − forest** | | ' + ' | '.join(f'{pooled[n]:+.3f}' for n in names) + ' |')
    print('\nThe shipped rule\'s weights, mean over folds (' + ' / '.join(MEMBERS) + '):')
    for row, folds in WEIGHTS.items():
        mean = {m: np.mean([f.get(m, 0.0) for f in folds]) for m in MEMBERS}
        print(f'- {row}: ' + ' / '.join(f'{mean[m]:.2f}' for m in MEMBERS))
    study = {row: DATASETS[row][0] for row in scores}
    print('\nLeave-one-study-out choice of rule (mean rule − forest over the other studies):')
    chosen, loso = [], {}
    for s in sorted(set(study.values())):
        others = [r for r in scores if study[r] != s]
        if not others:
            continue
        gain = {n: np.mean([np.mean(scores[r][n]) - np.mean(scores[r]['rf']) for r in others])
                for n in RULES
                if not n.startswith('without-') and all(n in scores[r] for r in others)}
        best = max(gain, key=gain.get)
        for r in scores:
            if study[r] == s:
                chosen.append(np.mean(scores[r][best]) - np.mean(scores[r]['rf']))
                loso[r] = best
        print(f'- {s}: {best} ({", ".join(f"{n} {g:+.3f}" for n, g in gain.items())})')
    if chosen:
        print(f'\nPooled at the left-out choices: {np.mean(chosen):+.3f}')
    overall = max((n for n in RULES if not n.startswith('without-') and n in pooled),
                  key=lambda n: pooled[n])
    print(f'The rule all studies favour together: {overall} ({pooled[overall]:+.3f})')
    if args.write:
        frame = pd.DataFrame(RECORDS)
        picked = pd.concat([frame[(frame.dataset == r) & (frame.model == f'stack:{rule}')]
                            for r, rule in loso.items()]).assign(model='stack:loso')
        forest = []
        for row in scores:
            test = pd.read_csv(Path(args.folder) / f'{row}.tsv', sep='\t',
                               dtype={'sample_id': str})
            forest.append(test[test.model.isin(['rf', 'linear', 'tree', 'aam:transformer'])])
        pd.concat([frame, picked] + forest, ignore_index=True).to_csv(args.write, sep='\t',
                                                                     index=False)
        print(f'wrote {args.write}')


if __name__ == '__main__':
    main()
