"""Scores of predictions, in plain numpy so that the trainer, the visualizer and the
accuracy report give the same numbers."""
import numpy as np


def regression_metrics(truth, predicted):
    """R², MAE and RMSE. R² is NaN when the truth has no spread (it is undefined then)."""
    truth = np.asarray(truth, dtype=np.float64).ravel()
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    if truth.shape != predicted.shape:
        raise ValueError(f'{len(truth)} true values but {len(predicted)} predictions.')
    if len(truth) == 0:
        return {'r2': float('nan'), 'mae': float('nan'), 'rmse': float('nan'), 'n': 0}
    residual = truth - predicted
    total = ((truth - truth.mean()) ** 2).sum()
    r2 = 1.0 - (residual ** 2).sum() / total if total > 0 else float('nan')
    return {'r2': float(r2), 'mae': float(np.abs(residual).mean()),
            'rmse': float(np.sqrt((residual ** 2).mean())), 'n': int(len(truth))}


def confusion_matrix(truth, predicted, n_classes):
    """Counts [true class, predicted class] for integer labels 0..n_classes-1."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(truth, int), np.asarray(predicted, int)), 1)
    return matrix


def _binary_auc(positive_scores, negative_scores):
    """Mann-Whitney AUC: the chance that a positive outscores a negative (ties count half)."""
    if len(positive_scores) == 0 or len(negative_scores) == 0:
        return float('nan')
    scores = np.concatenate([positive_scores, negative_scores])
    order = scores.argsort(kind='mergesort')
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        ranks[order[start:start + count]] = start + (count + 1) / 2.0
    n_pos = len(positive_scores)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0)
                 / (n_pos * len(negative_scores)))


def classification_metrics(truth, probabilities, n_classes):
    """Accuracy, macro precision/recall/F1 and macro one-vs-rest AUROC.

    ``truth`` holds class indices, ``probabilities`` is (n, n_classes). Classes absent
    from the truth are left out of the macro averages rather than counted as zero.
    """
    truth = np.asarray(truth, dtype=np.int64).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(truth), n_classes)
    if len(truth) == 0:
        nan = float('nan')
        return {'accuracy': nan, 'precision': nan, 'recall': nan, 'f1': nan, 'auroc': nan,
                'n': 0}
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(truth, predicted, n_classes)
    present = matrix.sum(axis=1) > 0
    tp = np.diag(matrix).astype(np.float64)
    with np.errstate(invalid='ignore', divide='ignore'):
        precision = np.where(matrix.sum(0) > 0, tp / matrix.sum(0), 0.0)
        recall = np.where(matrix.sum(1) > 0, tp / matrix.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    aucs = [_binary_auc(probabilities[truth == c, c], probabilities[truth != c, c])
            for c in range(n_classes) if present[c]]
    aucs = [a for a in aucs if np.isfinite(a)]
    return {'accuracy': float((predicted == truth).mean()),
            'precision': float(precision[present].mean()),
            'recall': float(recall[present].mean()),
            'f1': float(f1[present].mean()),
            'auroc': float(np.mean(aucs)) if aucs else float('nan'),
            'n': int(len(truth))}


def bootstrap_interval(score, n, units=None, draws=2000, seed=0):
    """95 % percentile interval of ``score(rows)`` over resamples of the ``n`` rows (of
    whole units, e.g. subjects, when ``units`` names each row's). ``score`` takes an index
    array; resamples it cannot score (NaN) are skipped."""
    rng = np.random.default_rng(seed)
    if units is None:
        groups = [np.array([i]) for i in range(n)]
    else:
        units = np.asarray(units).astype(str)
        groups = [np.flatnonzero(units == u) for u in np.unique(units)]
    values = []
    for _ in range(draws):
        pick = rng.integers(0, len(groups), len(groups))
        value = score(np.concatenate([groups[g] for g in pick]))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float('nan'), float('nan')
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))
