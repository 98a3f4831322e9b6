"""Offline: candidate members refitted on the kept folds of an accuracy.py aam run, for
restack_members.py. Each fold's member is fitted on its training samples and predicts its
test samples, and each of the stack's inner folds gets out-of-fold predictions, as fit's
members do.

Candidates:
  lin            the linear member as shipped, penalty on scikit-learn's own folds
  lin-grp        the linear member as shipped given fit's groups (on the rows whose subjects
                 repeat): penalty on folds that keep subjects whole
  pa             the linear member on presence / absence
  knn-<d>-<k>    k nearest neighbours on relative abundance; d: bc (Bray-Curtis), jac
                 (Jaccard), sqbc (Hellinger)
  kmer-lin-<k>   (stop 32) the linear model on a sample's k-mer profile: each ASV's k-mer
                 frequencies weighted by its relative abundance, log, standardised; penalty
                 on whole-subject folds where subjects repeat. ASVs that differ by a few
                 bases share most k-mers, so a subject the fit never saw is read through
                 its relatives' sequences
  kmer-tree-<k>  ExtraTrees (the tree member's settings) on the same profile

Usage (stop 30):
  Q2_AAM_DATA=../shared/data .venv/bin/python benchmarks/offline/candidate_members.py \\
      benchmarks/predictions/stack knn-bc-5,knn-bc-10,knn-jac-5,knn-jac-10,knn-sqbc-5 /tmp/knn.json
  Q2_AAM_DATA=../shared/data .venv/bin/python benchmarks/offline/candidate_members.py \\
      benchmarks/predictions/stack lin,lin-grp /tmp/lin.json \\
      sleep-apnea,pd-mice-days,pd-mice-donor,gepotidacin-type,gepotidacin-visit
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'benchmarks'))
sys.path.insert(0, str(ROOT))
from accuracy import load_dataset, repeats_subjects  # noqa: E402
from q2_aam.engine.kmers import fit_kmers, kmer_frequencies, kmer_outputs  # noqa: E402
from q2_aam.engine.linear import fit_linear, linear_outputs  # noqa: E402


def relative(counts):
    c = sp.csr_matrix(counts, dtype=float)
    depth = np.asarray(c.sum(1)).ravel()
    return np.asarray((sp.diags(1 / np.maximum(depth, 1)) @ c).todense())


def distances(kind, A, B):
    """(len(A), len(B)) distances between rows of relative abundance."""
    if kind == 'bc':                      # Bray-Curtis: 1 - the shared abundance
        return np.stack([1 - np.minimum(a[None], B).sum(1) for a in A])
    if kind == 'jac':
        a, b = (A > 0).astype(float), (B > 0).astype(float)
        inter = a @ b.T
        union = a.sum(1)[:, None] + b.sum(1)[None] - inter
        return 1 - inter / np.maximum(union, 1)
    if kind == 'sqbc':                    # Hellinger
        a, b = np.sqrt(A), np.sqrt(B)
        return np.sqrt(np.maximum(((a[:, None] - b[None]) ** 2).sum(-1), 0))
    raise KeyError(kind)


def neighbours(kind, k, Xtr, ytr, Xte, task, n_classes):
    nearest = np.argsort(distances(kind, Xte, Xtr), 1, kind='stable')[:, :min(k, len(Xtr))]
    if task == 'regression':
        return ytr[nearest].mean(1)
    votes = np.zeros((len(Xte), n_classes))
    for j in range(nearest.shape[1]):
        votes[np.arange(len(Xte)), ytr[nearest[:, j]]] += 1
    return (votes + 1.0 / n_classes) / (nearest.shape[1] + 1)


def kmer_profile(sequences, rel, k):
    """(samples, 4**k): each ASV's k-mer shares weighted by its relative abundance (the
    shipped member's profile before its log, q2_aam/engine/kmers.py)."""
    return (sp.csr_matrix(rel) @ kmer_frequencies(sequences, k)).toarray()


_PROFILES = {}


def _kmer_trees(P, y, task, n_classes, Pte):
    from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor
    from q2_aam.engine.trees import MIN_SAMPLES_LEAF, N_TREES
    if task == 'regression':
        return ExtraTreesRegressor(n_estimators=N_TREES, min_samples_leaf=MIN_SAMPLES_LEAF,
                                   random_state=0, n_jobs=1).fit(P, y).predict(Pte)
    est = ExtraTreesClassifier(n_estimators=N_TREES, min_samples_leaf=MIN_SAMPLES_LEAF,
                               random_state=0, n_jobs=1).fit(P, y)
    out = np.zeros((len(Pte), n_classes))
    out[:, est.classes_] = est.predict_proba(Pte)
    return out


def binarised(counts):
    out = sp.csr_matrix(counts, copy=True)
    out.data[:] = 1
    return out


def member(name, ds, rel, tr, te):
    """The candidate fitted on rows ``tr``: its predictions for rows ``te``."""
    n_classes = None if ds.task == 'regression' else len(ds.classes)
    seqs = list(ds.sequences)
    if name.startswith('knn-'):
        _, kind, k = name.split('-')
        return neighbours(kind, int(k), rel[tr], ds.y[tr], rel[te], ds.task, n_classes)
    if name.startswith('kmer-'):
        _, kind, k = name.split('-')
        if kind == 'lin':           # the shipped member (kmer-lin-5 is it, as fit makes it)
            groups = ds.groups[tr] if repeats_subjects(ds) else None
            model = fit_kmers(ds.counts[tr], seqs, ds.y[tr], ds.task, n_classes, groups,
                              k=int(k))
            return kmer_outputs(model, ds.counts[te], seqs)
        key = (ds.name, int(k))
        if key not in _PROFILES:
            _PROFILES[key] = kmer_profile(seqs, rel, int(k))
        P = _PROFILES[key]
        return _kmer_trees(P[tr], ds.y[tr], ds.task, n_classes, P[te])
    if name in ('lin', 'lin-grp', 'pa'):
        counts = binarised(ds.counts) if name == 'pa' else ds.counts
        groups = ds.groups[tr] if name == 'lin-grp' and repeats_subjects(ds) else None
        model = fit_linear(counts[tr], seqs, ds.y[tr], ds.task, n_classes, groups=groups)
        return linear_outputs(model, counts[te], seqs)[0]
    raise KeyError(name)


def main(folder, candidates, out, rows=None):
    folder, records = Path(folder), []
    for path in sorted(folder.glob('*-oof.tsv')):
        row = path.name[:-len('-oof.tsv')]
        if rows and row not in rows:
            continue
        ds = load_dataset(row)
        rel, position = relative(ds.counts), {s: i for i, s in enumerate(ds.sample_ids)}
        test = pd.read_csv(folder / f'{row}.tsv', sep='\t', dtype={'sample_id': str})
        oof = pd.read_csv(path, sep='\t', dtype={'sample-id': str})
        t0 = time.time()
        for fold, held in oof.groupby('fold'):
            held = held.reset_index(drop=True)
            tr = np.array([position[s] for s in held['sample-id']])
            t = test[(test.fold == fold) & (test.model == 'rf')].sort_values('sample_id')
            te = np.array([position[s] for s in t['sample_id']])
            inner = held['inner_fold'].to_numpy()
            record = {'row': row, 'fold': int(fold)}
            for c in candidates:
                full, held_out = member(c, ds, rel, tr, te), None
                for f in np.unique(inner):
                    p = member(c, ds, rel, tr[inner != f], tr[inner == f])
                    if held_out is None:
                        held_out = np.zeros((len(tr),) + p.shape[1:])
                    held_out[inner == f] = p
                record[c] = {'oof': held_out.tolist(), 'test': full.tolist()}
            records.append(record)
        print(row, f'{time.time() - t0:.1f}s', flush=True)
        Path(out).write_text(json.dumps(records))


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2].split(','), sys.argv[3],
         sys.argv[4].split(',') if len(sys.argv) > 4 else None)
