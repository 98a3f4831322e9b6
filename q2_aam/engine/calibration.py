"""A temperature and one bias per class, fitted to a classifier's out-of-fold outputs.

The stack (engine/stack.py) calibrates each member, and its blend, on predictions of
training samples that the member's fit did not see: a member fitted on every sample is
confidently right about its own training samples, so nothing in fitting says when a class
call is a coin flip, and members differ in how confident they are. Models of the release
before stacking kept one such calibration for their transformer members; they still apply
it when they predict.
"""
import numpy as np
import torch

# L2 pull of the biases and log-temperature toward 0, per out-of-fold sample: keeps the fit
# finite when a small training set separates perfectly, without mattering on large ones.
PENALTY = 0.01


def log_softmax(raw):
    raw = np.asarray(raw, np.float64)
    shifted = raw - raw.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(raw):
    """Class probabilities from raw outputs over the last axis (overflow-safe)."""
    return np.exp(log_softmax(raw))


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
