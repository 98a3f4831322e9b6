"""The linear, tree and k-mer members of a fitted model, with their out-of-fold predictions.

Each is fitted once per fold of the training samples (predicting the fold it did not see)
and once on all of them (the member the model keeps). The transformer ensemble's
out-of-fold predictions come from its own cross-fitted members (q2_aam/actions/fit.py), on the
same folds, so every member is judged on the same samples.
"""
import numpy as np
import scipy.sparse as sp

from .kmers import fit_kmers, kmer_outputs
from .linear import fit_linear, linear_outputs
from .trees import fit_trees, tree_outputs


def _fit(name, counts, sequences, targets, task, n_classes, seed, groups):
    if name == 'linear':
        return fit_linear(counts, sequences, targets, task, n_classes, groups=groups)
    if name == 'kmers':
        return fit_kmers(counts, sequences, targets, task, n_classes, groups=groups)
    return fit_trees(counts, sequences, targets, task, n_classes, seed=seed)


def member_outputs(name, model, counts, sequences):
    """A fitted linear, k-mer or tree member's predictions for new samples."""
    if name == 'linear':
        return linear_outputs(model, counts, sequences)[0]
    if name == 'kmers':
        return kmer_outputs(model, counts, sequences)
    return tree_outputs(model, counts, sequences)


def fit_members(names, counts, sequences, targets, task, n_classes=None, folds=None, seed=0,
                groups=None):
    """{name: fitted member} on every row given, and, with ``folds`` ((fit rows, held-out
    rows) pairs over those rows), {name: out-of-fold predictions} (else None). ``groups``:
    each row's subject, which the linear and k-mer members' penalty folds keep whole."""
    counts = sp.csr_matrix(counts)
    targets = np.asarray(targets)
    groups = None if groups is None else np.asarray(groups, dtype=object)
    fitted = {m: _fit(m, counts, sequences, targets, task, n_classes, seed, groups)
              for m in names}
    if folds is None:
        return fitted, None
    held = {}
    for m in names:
        width = () if task == 'regression' else (n_classes,)
        out = np.zeros((len(targets),) + width)
        for fit_rows, held_rows in folds:
            part = _fit(m, counts[fit_rows], sequences, targets[fit_rows], task, n_classes, seed,
                        None if groups is None else groups[fit_rows])
            out[held_rows] = member_outputs(m, part, counts[held_rows], sequences)
        held[m] = out
    return fitted, held
