"""Offline: candidate members refitted on the kept folds of an accuracy.py aam run, for
restack_members.py: k nearest neighbours on Bray-Curtis / Jaccard / Hellinger distance of
relative abundance ('knn-bc-5', ...), and a presence/absence linear model ('pa'). Each fold's
member is fitted on its training samples and predicts its test samples, and each inner fold
(the stack's own) gets out-of-fold predictions, as fit's members do.

Usage (stop 30):
  Q2_AAM_DATA=../shared/data .venv/bin/python benchmarks/offline/neighbour_members.py \
      benchmarks/predictions/stack knn-bc-5,knn-bc-10,knn-jac-5,knn-jac-10,knn-sqbc-5 /tmp/knn.json
"""
import sys, json, time
from pathlib import Path
import numpy as np, pandas as pd, scipy.sparse as sp
ROOT = __import__('pathlib').Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'benchmarks')); sys.path.insert(0, str(ROOT))
from accuracy import DATASETS, score, load_dataset
from q2_aam.engine import stack as S
from q2_aam.engine.linear import fit_linear, linear_outputs, log_abundance

FOLDER = Path(sys.argv[1]); CANDS = sys.argv[2].split(',')
OUT = Path(sys.argv[3])

def rel(counts):
    c = sp.csr_matrix(counts, dtype=float); d = np.asarray(c.sum(1)).ravel()
    return np.asarray((sp.diags(1/np.maximum(d,1)) @ c).todense())

def dist(kind, A, B):
    if kind == 'bc':
        # Bray-Curtis on relative abundance: 1 - sum min
        out = np.empty((len(A), len(B)))
        for i in range(len(A)):
            out[i] = 1 - np.minimum(A[i][None], B).sum(1)
        return out
    if kind == 'jac':
        a = (A > 0).astype(float); b = (B > 0).astype(float)
        inter = a @ b.T; union = a.sum(1)[:, None] + b.sum(1)[None] - inter
        return 1 - inter / np.maximum(union, 1)
    if kind == 'sqbc':   # Hellinger-ish
        a = np.sqrt(A); b = np.sqrt(B)
        return np.sqrt(np.maximum(((a[:, None] - b[None]) ** 2).sum(-1), 0))

def knn(kind, k, Xtr, ytr, Xte, task, C):
    D = dist(kind, Xte, Xtr)
    kk = min(k, Xtr.shape[0])
    idx = np.argsort(D, 1, kind='stable')[:, :kk]
    if task == 'regression':
        return ytr[idx].mean(1)
    P = np.zeros((len(Xte), C))
    for j in range(kk):
        P[np.arange(len(Xte)), ytr[idx[:, j]]] += 1
    return (P + 1.0 / C) / (kk + 1)

def pa_linear(ctr, seqs, ytr, cte, task, C):
    # presence/absence features through fit_linear: binarise counts
    b = sp.csr_matrix(ctr, copy=True); b.data[:] = 1
    m = fit_linear(b, seqs, ytr, task, C)
    bt = sp.csr_matrix(cte, copy=True); bt.data[:] = 1
    return linear_outputs(m, bt, seqs)[0]

def member(name, ds, tr, te):
    task = ds.task; C = None if task == 'regression' else len(ds.classes)
    if name.startswith('knn'):
        _, kind, k = name.split('-')
        R = RELA
        return knn(kind, int(k), R[tr], ds.y[tr], R[te], task, C)
    if name == 'pa':
        return pa_linear(ds.counts[tr], list(ds.sequences), ds.y[tr], ds.counts[te], task, C)
    raise KeyError(name)

rows_out = []
for path in sorted(FOLDER.glob('*-oof.tsv')):
    row = path.name[:-8]
    ds = load_dataset(row); RELA = rel(ds.counts)
    pos = {s: i for i, s in enumerate(ds.sample_ids)}
    test = pd.read_csv(FOLDER / f'{row}.tsv', sep='\t', dtype={'sample_id': str})
    oof = pd.read_csv(path, sep='\t', dtype={'sample-id': str})
    t0 = time.time()
    for fold, held in oof.groupby('fold'):
        held = held.reset_index(drop=True)
        tr = np.array([pos[s] for s in held['sample-id']])
        t = test[(test.fold == fold) & (test.model == 'rf')].sort_values('sample_id')
        te = np.array([pos[s] for s in t['sample_id']])
        inner = held['inner_fold'].to_numpy()
        rec = {'row': row, 'fold': fold, 'tr': tr.tolist(), 'te': te.tolist()}
        for c in CANDS:
            full = member(c, ds, tr, te)
            o = None
            for f in np.unique(inner):
                a, b = tr[inner != f], tr[inner == f]
                p = member(c, ds, a, b)
                if o is None: o = np.zeros((len(tr),) + p.shape[1:])
                o[inner == f] = p
            rec[c] = {'oof': o.tolist(), 'test': full.tolist()}
        rows_out.append(rec)
    print(row, f'{time.time()-t0:.1f}s', flush=True)
OUT.write_text(json.dumps(rows_out))
