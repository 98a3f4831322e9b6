"""Offline: restack the kept transformer / linear / tree predictions of an accuracy.py aam
run with candidate members (the JSON of candidate_members.py), for
each configuration of members ('+'-joined names), scored against the forest on the same
folds; the configuration for each study is chosen leave-one-study-out.

Usage (stop 30):
  .venv/bin/python benchmarks/offline/restack_members.py benchmarks/predictions/stack \
      /tmp/lin.json transformer+linear+tree,transformer+lin+tree,transformer+lin-grp+tree
  (4 or more members: a weight grid of 0.05, the last argument)
"""
import sys, json
from pathlib import Path
import numpy as np, pandas as pd
ROOT = __import__('pathlib').Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'benchmarks')); sys.path.insert(0, str(ROOT))
from accuracy import DATASETS, score
from restack import _each_model, _member_matrix
from q2_aam.engine import stack as S

FOLDER = Path(sys.argv[1]); EXTRA = {}
for f in sys.argv[2].split(','):
    for rec in json.loads(Path(f).read_text()):
        EXTRA.setdefault((rec['row'], rec['fold']), {}).update(
            {k: v for k, v in rec.items() if k not in ('row', 'fold', 'tr', 'te')})
CONFIGS = [c.split('+') for c in sys.argv[3].split(',')]
STEP = float(sys.argv[4]) if len(sys.argv) > 4 else 0.05
BASE = ('transformer', 'linear', 'tree')

def mat(rows, task, classes):
    return _member_matrix(rows, task, classes)[1]

res = {}
for path in sorted(FOLDER.glob('*-oof.tsv')):
    row = path.name[:-8]
    if (row, 0) not in EXTRA: continue
    test = pd.read_csv(FOLDER / f'{row}.tsv', sep='\t', dtype={'sample_id': str})
    oof = pd.read_csv(path, sep='\t', dtype={'sample-id': str})
    task = 'regression' if 'prediction:linear' in oof else 'classification'
    classes = [c[2:-1] for c in test.columns if c.startswith('p(')] if task != 'regression' else None
    per = {}
    for fold, held in oof.groupby('fold'):
        held = held.reset_index(drop=True)
        t = test[test.fold == fold]
        tr_ = t[t.model == 'rf'].sort_values('sample_id')
        truth = tr_['truth'].to_numpy()
        ex = EXTRA[(row, fold)]
        if task == 'classification':
            truth = np.array([classes.index(x) for x in truth])
            labels = [c[len('prob:linear:'):] for c in held.columns if c.startswith('prob:linear:')]
            col = [classes.index(c) for c in labels]
            y = held['truth'].map({c: i for i, c in enumerate(labels)}).to_numpy(int)
            oofm = {m: held[[f'prob:{m}:{c}' for c in labels]].to_numpy(float) for m in BASE}
            testm = {m: mat(t[t.model == {'transformer': 'aam:transformer'}.get(m, m)], task, classes)[:, col] for m in BASE}
            each = _each_model(t, task, classes)   # calibrated model by model, as predict does
            if each is not None: testm['transformer'] = each[..., col]
            for k, v in ex.items():
                oofm[k] = np.array(v['oof'])[:, col]; testm[k] = np.array(v['test'])[:, col]
                # renormalise after dropping classes absent from training
                oofm[k] /= oofm[k].sum(1, keepdims=True); testm[k] /= testm[k].sum(1, keepdims=True)
        else:
            y = held['truth'].to_numpy(float)
            oofm = {m: held[f'prediction:{m}'].to_numpy(float) for m in BASE}
            testm = {m: mat(t[t.model == {'transformer': 'aam:transformer'}.get(m, m)], task, classes) for m in BASE}
            for k, v in ex.items():
                oofm[k] = np.array(v['oof']); testm[k] = np.array(v['test'])
        def sc(pred):
            if task == 'classification':
                full = np.zeros((len(pred), len(classes))); full[:, col] = pred
                return score(truth, full, classes)['accuracy']
            return score(truth, pred)['r2']
        per.setdefault('rf', []).append(sc(mat(t[t.model == 'rf'], task, classes)[:, col] if task == 'classification' else mat(t[t.model == 'rf'], task, classes)))
        for m in list(BASE) + list(ex):
            per.setdefault(m, []).append(sc(testm[m].mean(0) if testm[m].ndim == 3 else testm[m]))
        for cfg in CONFIGS:
            st = S.fit_stack({m: oofm[m] for m in cfg}, y, task,
                             grid_step=STEP if len(cfg) > 3 else S.GRID_STEP)
            per.setdefault('+'.join(cfg), []).append(sc(S.apply_stack(st, {m: testm[m] for m in cfg})))
            per.setdefault('W:' + '+'.join(cfg), []).append(st.weights)
    res[row] = per

names = [k for k in next(iter(res.values())) if not k.startswith('W:') and k != 'rf']
print('| row | rf | ' + ' | '.join(names) + ' |')
for row, per in res.items():
    rf = np.mean(per['rf'])
    print(f'| {row} | {rf:.3f} | ' + ' | '.join(f'{np.mean(per[n]) - rf:+.3f}' for n in names) + ' |')
pooled = {n: np.mean([np.mean(p[n]) - np.mean(p['rf']) for p in res.values()]) for n in names}
print('| pooled | | ' + ' | '.join(f'{pooled[n]:+.3f}' for n in names) + ' |')
cfgn = ['+'.join(c) for c in CONFIGS]
study = {r: DATASETS[r][0] for r in res}
chosen = []
for s in sorted(set(study.values())):
    others = [r for r in res if study[r] != s]
    g = {n: np.mean([np.mean(res[r][n]) - np.mean(res[r]['rf']) for r in others]) for n in cfgn}
    b = max(g, key=g.get)
    for r in res:
        if study[r] == s: chosen.append(np.mean(res[r][b]) - np.mean(res[r]['rf']))
    print(f'- {s}: {b}')
print(f'LOSO pooled: {np.mean(chosen):+.3f}')
for c in cfgn:
    if c.count('+') >= 3:
        print(c, {r: np.round(np.mean(res[r]['W:' + c], 0), 2).tolist() for r in res})
