"""Cross-fitted calibration of an ensemble classifier.

Each ensemble member trains on all but one fold of the training samples and predicts the
fold it did not see, so every training sample gets one honest, out-of-fold output. A
temperature and one bias per class are fitted to those outputs and applied to every
member before the ensemble averages them. Why: members fitted on every sample are
confidently right about their own training samples, so nothing in fitting says when a
class call is a coin flip. On moving-pictures the members leaned to 'left palm' though
no training part had more left palms than right (benchmarks/results.md); fitted biases
move such calls back toward what out-of-fold predictions support.
"""
import numpy as np
import torch

# L2 pull of the biases and log-temperature toward 0, per out-of-fold sample: keeps the fit
# finite when a small training set separates perfectly, without mattering on large ones.
PENALTY = 0.01


def cross_fit_folds(n, k, stratify=None, seed=0):
    """``k`` (fit rows, held-out rows) pairs over ``range(n)``; each row is held out once.

    With ``stratify`` each class is dealt round the folds in turn, so every fold holds
    out its share of every class and no class is left out of more than one fold's fitting
    when it has at least ``k`` samples.
    """
    if k < 2:
        raise ValueError(f'Cross-fitting needs at least 2 folds; got {k}.')
    if n < k:
        raise ValueError(f'Cross-fitting {k} folds needs at least {k} samples; got {n}.')
    rng = np.random.default_rng(seed)
    rows = np.arange(n)
    fold_of = np.empty(n, np.int64)
    groups = [rows] if stratify is None else [rows[np.asarray(stratify) == c]
                                               for c in np.unique(stratify)]
    offset = 0
    for group in groups:
        group = rng.permutation(group)
        # continue dealing where the last class stopped, so fold sizes stay within one
        fold_of[group] = (offset + np.arange(len(group))) % k
        offset = (offset + len(group)) % k
    return [(rows[fold_of != f], rows[fold_of == f]) for f in range(k)]


def log_softmax(raw):
    raw = np.asarray(raw, np.float64)
    shifted = raw - raw.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def fit_class_calibration(raw, labels, n_classes=None):
    """Temperature and per-class bias minimising the log loss of out-of-fold outputs.

    ``raw``: (n, C) raw head outputs, one row per out-of-fold sample; ``labels``: (n,)
    class numbers. Returns {'temperature': float, 'bias': [C floats]}, with the biases
    centred (softmax ignores a shared shift).
    """
    raw = np.asarray(raw, np.float64)
    labels = np.asarray(labels, np.int64)
    n_classes = raw.shape[1] if n_classes is None else n_classes
    if raw.ndim != 2 or raw.shape != (len(labels), n_classes):
        raise ValueError(f'Expected ({len(labels)}, {n_classes}) out-of-fold outputs; got '
                         f'{raw.shape}.')
    scores = torch.from_numpy(log_softmax(raw))
    target = torch.from_numpy(labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    search = torch.optim.LBFGS([log_t, bias], lr=0.5, max_iter=200,
                               line_search_fn='strong_wolfe')

    def loss():
        search.zero_grad()
        logits = scores / log_t.exp() + bias
        value = torch.nn.functional.cross_entropy(logits, target) + PENALTY * (
            log_t ** 2 + (bias ** 2).sum())
        value.backward()
        return value
    search.step(loss)
    b = bias.detach().numpy()
    return {'temperature': float(log_t.detach().exp()), 'bias': [float(x) for x in b - b.mean()]}


def apply_class_calibration(raw, calibration):
    """Calibrated raw outputs: softmax of the result gives calibrated probabilities."""
    if not calibration:
        return np.asarray(raw, np.float64)
    return (log_softmax(raw) / calibration['temperature']
            + np.asarray(calibration['bias'], np.float64))


def fit_shrinkage(predicted, truth):
    """A regressor's out-of-fold predictions -> {'slope', 'intercept'} of truth on them,
    the slope held in [0, 1]: shrink toward the mean as far as out-of-fold predictions
    support, never stretch. Why: fitted on every sample for every epoch, members follow
    noise where the signal is weak (hiv-bcn0 age: R² below 0 on every fold; results.md);
    their out-of-fold predictions say how much of the spread is real."""
    x = np.asarray(predicted, np.float64).ravel()
    y = np.asarray(truth, np.float64).ravel()
    variance = x.var()
    slope = float(np.clip(((x - x.mean()) * (y - y.mean())).mean() / variance, 0.0, 1.0)) \
        if variance > 0 else 0.0
    return {'slope': slope, 'intercept': float(y.mean() - slope * x.mean())}


def apply_shrinkage(predicted, shrinkage):
    if not shrinkage:
        return np.asarray(predicted, np.float64)
    return shrinkage['intercept'] + shrinkage['slope'] * np.asarray(predicted, np.float64)
