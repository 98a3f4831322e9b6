"""Folds over the training samples: stratified by class, and whole groups kept together.

Why groups: most microbiome studies sample a subject (a person, a mouse) repeatedly. A
fold that holds out some of a subject's samples but trains on the others scores how well a
model recognises the subject, not how well it predicts a new one, and a stack weighed on
such folds favours the members that memorise.
"""
import numpy as np

from .data import split_samples


class FoldError(ValueError):
    """Samples that cannot be dealt into the folds asked for; the message says why."""


def cross_fit_folds(n, k, stratify=None, groups=None, seed=0):
    """``k`` (fit rows, held-out rows) pairs over ``range(n)``; each row is held out once.

    With ``stratify`` each class is dealt round the folds in turn, so every fold holds out
    its share of every class. With ``groups`` whole groups are dealt instead (a group's
    class is its most common one), largest first, each to the fold that holds the fewest
    samples of that class so far, so folds stay near equal in size.
    """
    if k < 2:
        raise FoldError(f'Cross-fitting needs at least 2 folds; got {k}.')
    if groups is None:               # every sample its own unit
        names, unit_of = np.arange(n), np.arange(n)
    else:
        names, unit_of = np.unique(np.asarray(groups, dtype=object).astype(str),
                                   return_inverse=True)
    if len(names) < k:
        what = 'samples' if groups is None else 'groups'
        raise FoldError(f'{k} folds need at least {k} {what}; there are {len(names)}.')
    rng = np.random.default_rng(seed)
    sizes = np.bincount(unit_of, minlength=len(names))
    labels = np.zeros(n, np.int64) if stratify is None else \
        np.unique(np.asarray(stratify).astype(str), return_inverse=True)[1]
    unit_label = np.array([np.bincount(labels[unit_of == u]).argmax()
                           for u in range(len(names))])
    fold_of_unit = np.empty(len(names), np.int64)
    total = np.zeros(k)                  # samples per fold, over every class so far
    offset = 0
    for label in np.unique(unit_label):
        members = rng.permutation(np.flatnonzero(unit_label == label))
        if groups is None:       # one sample each: deal in turn, where the last class stopped
            fold_of_unit[members] = (offset + np.arange(len(members))) % k
            offset = (offset + len(members)) % k
            continue
        load = np.zeros(k)                # this class's samples per fold
        for u in members[np.argsort(-sizes[members], kind='stable')]:
            f = np.lexsort(((np.arange(k) - offset) % k, total, load))[0]
            fold_of_unit[u] = f
            load[f] += sizes[u]
            total[f] += sizes[u]
            offset += 1
    fold_of = fold_of_unit[unit_of]
    rows = np.arange(n)
    return [(rows[fold_of != f], rows[fold_of == f]) for f in range(k)]


def train_test_rows(n, test_size, stratify=None, groups=None, seed=0):
    """(train rows, test rows): stratified by class as far as the units allow (without
    groups, data.split_samples: each class keeps a training sample), and with groups whole
    groups on one side. With groups the test side is one of round(1 /
    test_size) grouped folds, so its share is near ``test_size``, not exact."""
    if not 0 < test_size < 1:
        raise FoldError(f'test_size must lie between 0 and 1, not {test_size}.')
    if groups is None:
        return split_samples(n, test_size, stratify=stratify, seed=seed)
    k = max(2, int(round(1 / test_size)))
    return cross_fit_folds(n, k, stratify=stratify, groups=groups, seed=seed)[0]
