"""The tree member of a fitted model: an extremely randomised forest (scikit-learn's
ExtraTrees) on log relative abundance.

Why: a forest reads interactions and thresholds that neither the linear half nor a small
transformer picks up, and on some studies it is the best of the three; the stack
(engine/stack.py) decides how much it counts for on each study. It is fitted with
scikit-learn and kept as plain arrays (the nodes of every tree), so that a saved model
never unpickles code and predicts the same with any scikit-learn.

Features are keyed by sequence, like the linear half's (engine/linear.py): trees split on
ranks, so log relative abundance splits as relative abundance does.
"""
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .linear import log_abundance

# chosen leave-one-study-out among forests, extra trees and gradient boosting
N_TREES = 500
MIN_SAMPLES_LEAF = 2
LEAF = -1                # a node's child index when the node is a leaf


@dataclass
class TreeModel:
    """Every tree's nodes, concatenated: node i splits on ``feature[i]`` at
    ``threshold[i]`` (value <= threshold goes to ``left[i]``), or is a leaf with ``value[i]``
    (a regressor's mean, or a classifier's class shares). ``roots`` are the trees' first
    nodes; child indices are global and always after their parent."""
    task: str
    sequences: list           # (F,) the ASVs it knows
    roots: np.ndarray         # (T,) int64
    left: np.ndarray          # (N,) int64, LEAF at leaves
    right: np.ndarray         # (N,) int64
    feature: np.ndarray       # (N,) int64, LEAF at leaves
    threshold: np.ndarray     # (N,) float64
    value: np.ndarray         # (N, outputs) float64
    importance: np.ndarray = None   # (F,) scikit-learn's impurity importance, summing to 1

    @property
    def n_outputs(self):
        return self.value.shape[1]


def _features(counts, sequences, known):
    position = {s: i for i, s in enumerate(known)}
    columns = [position.get(s, -1) for s in sequences]
    # scikit-learn's trees compare float32 features with float64 thresholds
    return log_abundance(counts, columns, len(known)).astype(np.float32)


def fit_trees(counts, sequences, targets, task, n_classes=None, seed=0, n_trees=N_TREES):
    """A scikit-learn ExtraTrees forest on the training samples, kept as arrays."""
    from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor
    counts = sp.csr_matrix(counts)
    used = np.asarray(counts.sum(axis=0)).ravel() > 0
    known = sorted({s for s, u in zip(sequences, used) if u})
    X = _features(counts, sequences, known)
    y = np.asarray(targets)
    if task == 'regression':
        forest = ExtraTreesRegressor(n_estimators=n_trees, min_samples_leaf=MIN_SAMPLES_LEAF,
                                     random_state=seed, n_jobs=1)
        forest.fit(X, y.astype(np.float64))
        classes = None
    else:
        forest = ExtraTreesClassifier(n_estimators=n_trees, min_samples_leaf=MIN_SAMPLES_LEAF,
                                      random_state=seed, n_jobs=1)
        forest.fit(X, y.astype(int))
        classes = forest.classes_.astype(int)
    parts, start = [], 0
    for est in forest.estimators_:
        t = est.tree_
        leaf = t.children_left == -1
        value = t.value[:, 0, :].astype(np.float64)          # (nodes, outputs or classes)
        if classes is not None:   # class shares (older scikit-learn stores weighted counts)
            shares = np.zeros((t.node_count, n_classes))
            shares[:, classes] = value / value.sum(axis=1, keepdims=True)
            value = shares
        parts.append(dict(
            left=np.where(leaf, LEAF, t.children_left + start),
            right=np.where(leaf, LEAF, t.children_right + start),
            feature=np.where(leaf, LEAF, t.feature), threshold=np.where(leaf, 0.0, t.threshold),
            value=value, root=start))
        start += t.node_count
    join = lambda key: np.concatenate([p[key] for p in parts])  # noqa: E731
    return TreeModel(task, known, np.array([p['root'] for p in parts], np.int64),
                     join('left').astype(np.int64), join('right').astype(np.int64),
                     join('feature').astype(np.int64), join('threshold').astype(np.float64),
                     join('value'), np.asarray(forest.feature_importances_, np.float64))


def tree_outputs(model, counts, sequences, chunk=1024):
    """New samples' predictions: values (n,) of a regressor, class shares (n, C) of a
    classifier, averaged over the trees as scikit-learn's forest averages them."""
    counts = sp.csr_matrix(counts)
    X = _features(counts, sequences, model.sequences)
    out = np.empty((X.shape[0], model.n_outputs))
    trees = len(model.roots)
    for start in range(0, X.shape[0], chunk):
        block = X[start:start + chunk].toarray()                     # (n, F)
        n = len(block)
        node = np.tile(model.roots, n)                               # (n * T,) sample-major
        sample = np.repeat(np.arange(n), trees)
        # walk only the (sample, tree) pairs that are not at a leaf yet
        active = np.flatnonzero(model.left[node] != LEAF)
        while len(active):
            at = node[active]
            go_left = block[sample[active], model.feature[at]] <= model.threshold[at]
            node[active] = np.where(go_left, model.left[at], model.right[at])
            active = active[model.left[node[active]] != LEAF]
        out[start:start + n] = model.value[node].reshape(n, trees, -1).mean(axis=1)
    return out[:, 0] if model.task == 'regression' else out


def check_trees(model, n_outputs):
    """Raise ValueError naming the first way the arrays are not a forest: a loader's check,
    so that a damaged file never loops or indexes out of range."""
    n = len(model.left)
    for name in ('right', 'feature', 'threshold'):
        if len(getattr(model, name)) != n:
            raise ValueError(f'its {name} array has {len(getattr(model, name))} nodes, '
                             f'left has {n}.')
    if model.value.shape != (n, n_outputs):
        raise ValueError(f'its values are {model.value.shape}, not ({n}, {n_outputs}).')
    if not (np.isfinite(model.threshold).all() and np.isfinite(model.value).all()):
        raise ValueError('it holds a threshold or value that is not a finite number.')
    if len(model.roots) == 0 or model.roots.min() < 0 or model.roots.max() >= n:
        raise ValueError('its tree roots are not nodes of it.')
    nodes = np.arange(n)
    inner = model.left != LEAF
    if ((model.right != LEAF) != inner).any():
        raise ValueError('a node has one child, not two or none.')
    for child in (model.left[inner], model.right[inner]):
        if (child <= nodes[inner]).any() or (child >= n).any():
            raise ValueError('a node\'s child is not a later node of it.')
    if model.importance is not None and (
            model.importance.shape != (len(model.sequences),) or
            not np.isfinite(model.importance).all() or (model.importance < 0).any()):
        raise ValueError(f'its importances must be {len(model.sequences)} finite numbers of '
                         'at least 0, one per sequence.')
    f = model.feature[inner]
    if len(f) and (f.min() < 0 or f.max() >= len(model.sequences)):
        raise ValueError(f'a node splits on a feature outside its {len(model.sequences)} '
                         'sequences.')
