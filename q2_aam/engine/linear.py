"""The linear half of a fitted model: a penalised linear model on log relative abundance.

Why it exists: the transformer ensemble alone can fall behind a random forest where a
study's signal is which ASVs are there; the linear model reads exactly that, the
transformer reads what they are, and the two err differently.

Features are keyed by sequence, like the transformer's input, so that a table whose
feature IDs differ (hashes against sequences) predicts the same. scikit-learn chooses the
penalty by cross-validation inside the training samples only.
"""
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

# log(abundance + 1e-5): 1e-5 is below one read in 100,000, a floor for absent ASVs
PSEUDO_ABUNDANCE = 1e-5
RIDGE_ALPHAS = np.logspace(-3, 5, 30)
LOGISTIC_CS = 10
LOGISTIC_MAX_ITER = 5000
PENALTY_FOLDS = 5
# a class the training samples lack gets this logit: its probability is ~e^-50, not NaN
ABSENT_CLASS_LOGIT = -50.0


@dataclass
class LinearModel:
    """Coefficients per (unique) sequence and output; a classifier's outputs are logits."""
    task: str                   # 'regression' or 'classification'
    sequences: list             # (F,) the ASVs it knows
    coef: np.ndarray            # (F, outputs)
    intercept: np.ndarray       # (outputs,)
    penalty: float              # ridge alpha, or logistic C, as cross-validation chose it

    @property
    def n_outputs(self):
        return self.coef.shape[1]


def log_abundance(counts, columns, n_columns):
    """Samples x features counts -> samples x ``n_columns`` log relative abundance.

    ``columns`` maps each count column to its output column (or -1: not a known ASV), so
    ASVs that share a sequence add up. Relative abundance is taken over all of a sample's
    reads, known or not. The value is log(abundance / 1e-5 + 1) = log(abundance + 1e-5)
    minus a constant that the intercept absorbs: absent ASVs are 0 and the matrix stays
    sparse.
    """
    counts = sp.csr_matrix(counts, dtype=np.float64)
    depth = np.asarray(counts.sum(axis=1)).ravel()
    scale = sp.diags(1.0 / np.maximum(depth, 1.0))
    relative = (scale @ counts).tocsc()
    columns = np.asarray(columns)
    keep = np.flatnonzero(columns >= 0)
    gather = sp.csr_matrix((np.ones(len(keep)), (keep, columns[keep])),
                           shape=(counts.shape[1], n_columns))
    summed = (relative @ gather).tocsr()
    summed.data = np.log1p(summed.data / PSEUDO_ABUNDANCE)
    return summed


def penalty_folds(targets, task, groups):
    """The folds the penalty is chosen on when samples repeat a subject: whole groups per
    fold (stratified by class), so the penalty is judged on subjects it did not see. None
    (scikit-learn's own folds) without groups, or with too few groups to deal."""
    if groups is None:
        return None
    from .folds import FoldError, cross_fit_folds
    k = min(PENALTY_FOLDS, len(np.unique(np.asarray(groups, dtype=object).astype(str))))
    try:
        folds = cross_fit_folds(len(targets), k, groups=groups,
                                stratify=targets if task == 'classification' else None)
    except FoldError:
        return None
    if task == 'classification':    # a fold whose training side lacks a class cannot score
        every = len(np.unique(targets))
        folds = [(a, b) for a, b in folds if len(np.unique(targets[a])) == every]
    return folds if len(folds) >= 2 else None


def fit_linear(counts, sequences, targets, task, n_classes=None, groups=None):
    """RidgeCV (regression) or LogisticRegressionCV (classes 0..n_classes-1) on the
    training samples' log relative abundance; deterministic. With ``groups`` (each
    sample's subject) the penalty is chosen on folds that keep subjects whole: folds that
    split a subject reward the penalty that memorises it."""
    counts = sp.csr_matrix(counts)
    used = np.asarray(counts.sum(axis=0)).ravel() > 0
    known = sorted({s for s, u in zip(sequences, used) if u})
    position = {s: i for i, s in enumerate(known)}
    columns = [position[s] if u else -1 for s, u in zip(sequences, used)]
    X = log_abundance(counts, columns, len(known))
    coef, intercept, penalty = penalised_fit(X, targets, task, n_classes, groups)
    return LinearModel(task, known, coef, intercept, penalty)


def penalised_fit(X, targets, task, n_classes=None, groups=None):
    """(coef (features, outputs), intercept (outputs,), penalty) of RidgeCV or
    LogisticRegressionCV on the features ``X``, the penalty chosen by cross-validation
    (on whole subjects with ``groups``). A classifier's outputs are logits, one per class
    0..n_classes-1; a class the samples lack gets ABSENT_CLASS_LOGIT."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
    y = np.asarray(targets)
    features = X.shape[1]
    with warnings.catch_warnings():
        # lbfgs may stop at max_iter on separable classes: the coefficients are still the
        # penalised fit's, within tolerance; not a reason to alarm a user
        warnings.simplefilter('ignore', category=UserWarning)
        from sklearn.exceptions import ConvergenceWarning
        warnings.simplefilter('ignore', category=ConvergenceWarning)
        if task == 'regression':
            folds = penalty_folds(y, task, groups)
            est = RidgeCV(alphas=RIDGE_ALPHAS, cv=folds).fit(X, y.astype(np.float64))
            return (est.coef_.reshape(-1, 1), np.array([float(est.intercept_)]),
                    float(est.alpha_))
        y = y.astype(int)
        present = np.unique(y)
        smallest = np.bincount(y)[present].min()
        if len(present) < 2:        # one class: it is the only answer the data gives
            intercept = np.full(n_classes, ABSENT_CLASS_LOGIT)
            intercept[present] = 0.0
            return np.zeros((features, n_classes)), intercept, float('nan')
        if smallest >= 2:
            folds = penalty_folds(y, task, groups)
            est = LogisticRegressionCV(Cs=LOGISTIC_CS, cv=folds or int(min(5, smallest)),
                                       max_iter=LOGISTIC_MAX_ITER).fit(X, y)
            penalty = float(np.ravel(est.C_)[0])
        else:                       # a class of one sample cannot be cross-validated
            est = LogisticRegression(C=1.0, max_iter=LOGISTIC_MAX_ITER).fit(X, y)
            penalty = 1.0
    logits = est.coef_.T                      # (F, 1) for two classes, else (F, classes)
    bias = np.asarray(est.intercept_, np.float64)
    if len(est.classes_) == 2:                # sklearn's binary model: logit of class 1
        logits = np.hstack([np.zeros_like(logits), logits])
        bias = np.array([0.0, bias[0]])
    coef = np.zeros((features, n_classes))
    intercept = np.full(n_classes, ABSENT_CLASS_LOGIT)
    coef[:, est.classes_] = logits
    intercept[est.classes_] = bias
    return coef, intercept, penalty


def linear_outputs(model, counts, sequences):
    """New samples' predictions: values (n,) of a regressor, class probabilities (n, C)
    of a classifier; and the fraction of each sample's reads in ASVs the model knows."""
    position = {s: i for i, s in enumerate(model.sequences)}
    columns = np.array([position.get(s, -1) for s in sequences], dtype=np.int64)
    counts = sp.csr_matrix(counts)
    X = log_abundance(counts, columns, len(model.sequences))
    depth = np.asarray(counts.sum(axis=1)).ravel()
    known_reads = np.asarray(counts[:, columns >= 0].sum(axis=1)).ravel()
    known = known_reads / np.maximum(depth, 1)
    out = X @ model.coef + model.intercept
    if model.task == 'regression':
        return np.asarray(out)[:, 0], known
    out = np.asarray(out)
    shifted = np.exp(out - out.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True), known
