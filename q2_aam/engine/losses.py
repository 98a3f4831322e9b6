"""The three training signals and their weighted sum.

Each loss returns ``None`` when the batch gives it nothing to measure (one sample
has no UniFrac pair; no base was masked), so callers add only the terms present.
"""
import torch
import torch.nn.functional as F


def pairwise_distances(embedding):
    """Euclidean distances of the strict upper triangle: (B, D) -> (B*(B-1)/2,).

    The small epsilon keeps the gradient finite for identical vectors.
    """
    rows, cols = torch.triu_indices(len(embedding), len(embedding), offset=1,
                                    device=embedding.device)
    diff = embedding[rows] - embedding[cols]                     # (P, D)
    return torch.sqrt(diff.float().pow(2).sum(-1) + 1e-10)      # (P,)


def unifrac_loss(embedding, distances):
    """MSE between sample-vector distances and the batch's UniFrac sub-matrix.

    A NaN distance is unknown and its pair is left out: samples of studies pooled for
    pretraining have UniFrac within their own study only (each study its own tree).
    """
    if embedding.shape[0] < 2:
        return None
    b = embedding.shape[0]
    rows, cols = torch.triu_indices(b, b, offset=1, device=embedding.device)
    target = distances[rows, cols].float()
    known = ~torch.isnan(target)          # an infinite distance stays: a corrupt input
    if not bool(known.all()):
        if not bool(known.any()):
            return None
        return F.mse_loss(pairwise_distances(embedding)[known], target[known])
    return F.mse_loss(pairwise_distances(embedding), target)


def nuc_loss(logits, tokens, mask):
    """Cross-entropy of the masked bases: logits (U, L, V), tokens (U, L), mask (U, L)."""
    if not mask.any():
        return None
    return F.cross_entropy(logits[mask].float(), tokens[mask])


def target_loss(prediction, targets, task, regression_loss='mse'):
    """Regression: MSE or Huber on standardised targets; classification: cross-entropy."""
    if task == 'classification':
        return F.cross_entropy(prediction.float(), targets.long())
    prediction = prediction.float().reshape(targets.shape[0], -1)
    targets = targets.float().reshape(prediction.shape)
    if regression_loss == 'huber':
        return F.huber_loss(prediction, targets)
    return F.mse_loss(prediction, targets)


def total_loss(terms, weights):
    """Weighted sum of the terms present; ``weights`` maps term name -> weight."""
    present = [weights.get(name, 1.0) * value for name, value in terms.items()
               if value is not None]
    if not present:
        return None
    return torch.stack(present).sum()
