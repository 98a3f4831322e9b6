"""Offline: the linear member refitted on the kept folds of an accuracy.py aam run, as
shipped ('lin-cur') and with its penalty chosen on folds that keep subjects whole
('lin-grp'; '...-ll' chooses it by log loss), for restack_members.py.

Usage (stop 30):
  Q2_AAM_DATA=../shared/data .venv/bin/python benchmarks/offline/linear_variants.py \
      benchmarks/predictions/stack lin-cur,lin-grp /tmp/lin.json \
      sleep-apnea,pd-mice-days,pd-mice-donor,gepotidacin-type,gepotidacin-visit
"""
import sys, json, time, warnings
from pathlib import Path
import numpy as np, pandas as pd, scipy.sparse as sp
ROOT = __import__('pathlib').Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'benchmarks')); sys.path.insert(0, str(ROOT))
from accuracy import DATASETS, load_dataset
from q2_aam.engine import linear as L
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.exceptions import ConvergenceWarning
warnings.simplefilter('ignore', ConvergenceWarning); warnings.simplefilter('ignore', UserWarning)

FOLDER = Path(sys.argv[1]); CANDS = sys.argv[2].split(','); OUT = Path(sys.argv[3])
ROWS = sys.argv[4].split(',') if len(sys.argv) > 4 else None

def fit_pred(counts_tr, seqs, y, counts_te, task, C, groups, grouped, scoring):
    counts_tr = sp.csr_matrix(counts_tr)
    used = np.asarray(counts_tr.sum(0)).ravel() > 0
    known = sorted({s for s, u in zip(seqs, used) if u}); pos = {s: i for i, s in enumerate(known)}
    cols = [pos[s] if u else -1 for s, u in zip(seqs, used)]
    X = L.log_abundance(counts_tr, cols, len(known))
    cols_te = [pos.get(s, -1) for s in seqs]
    Xt = L.log_abundance(sp.csr_matrix(counts_te), cols_te, len(known))
    cv = None
    if grouped and groups is not None and len(np.unique(groups)) >= 3:
        from q2_aam.engine.folds import cross_fit_folds
        k = min(5, len(np.unique(groups)))
        cv = cross_fit_folds(len(y), k, stratify=None if task == 'regression' else y,
                             groups=groups, seed=0)
    if task == 'regression':
        est = RidgeCV(alphas=L.RIDGE_ALPHAS, cv=cv).fit(X, y.astype(float))
        return est.predict(Xt)
    y = y.astype(int); present = np.unique(y)
    smallest = np.bincount(y)[present].min()
    if len(present) < 2:
        P = np.full((Xt.shape[0], C), 1e-9); P[:, present] = 1; return P
    if smallest >= 2:
        if cv is not None:
            # every training split needs every class: drop splits that lack one
            cv = [(a, b) for a, b in cv if len(np.unique(y[a])) == len(present)]
            if len(cv) < 2: cv = None
        est = LogisticRegressionCV(Cs=L.LOGISTIC_CS, cv=cv if cv is not None else int(min(5, smallest)),
                                   max_iter=L.LOGISTIC_MAX_ITER, scoring=scoring).fit(X, y)
    else:
        est = LogisticRegression(C=1.0, max_iter=L.LOGISTIC_MAX_ITER).fit(X, y)
    P = np.zeros((Xt.shape[0], C)); P[:, est.classes_] = est.predict_proba(Xt)
    return P

def member(name, ds, tr, te):
    C = None if ds.task == 'regression' else len(ds.classes)
    grouped = DATASETS[ds.name][3] is not None
    g = None if ds.groups is None else ds.groups[tr]
    scoring = 'neg_log_loss' if name.endswith('ll') else None
    return fit_pred(ds.counts[tr], list(ds.sequences), ds.y[tr], ds.counts[te], ds.task, C, g,
                    name.startswith('lin-grp'), scoring)  # lin-cur: as shipped

recs = []
for path in sorted(FOLDER.glob('*-oof.tsv')):
    row = path.name[:-8]
    if ROWS and row not in ROWS: continue
    ds = load_dataset(row); pos = {s: i for i, s in enumerate(ds.sample_ids)}
    test = pd.read_csv(FOLDER / f'{row}.tsv', sep='\t', dtype={'sample_id': str})
    oof = pd.read_csv(path, sep='\t', dtype={'sample-id': str}); t0 = time.time()
    for fold, held in oof.groupby('fold'):
        held = held.reset_index(drop=True)
        tr = np.array([pos[s] for s in held['sample-id']])
        t = test[(test.fold == fold) & (test.model == 'rf')].sort_values('sample_id')
        te = np.array([pos[s] for s in t['sample_id']]); inner = held['inner_fold'].to_numpy()
        rec = {'row': row, 'fold': int(fold)}
        for c in CANDS:
            full = member(c, ds, tr, te); o = None
            for f in np.unique(inner):
                p = member(c, ds, tr[inner != f], tr[inner == f])
                if o is None: o = np.zeros((len(tr),) + p.shape[1:])
                o[inner == f] = p
            rec[c] = {'oof': o.tolist(), 'test': full.tolist()}
        recs.append(rec)
    print(row, f'{time.time()-t0:.1f}s', flush=True)
    OUT.write_text(json.dumps(recs))
