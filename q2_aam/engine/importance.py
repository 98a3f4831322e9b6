"""How much each ASV matters to each member of a fitted model, and to the blend.

- the linear member: |coefficient| x the spread of its feature over the samples given
  (a coefficient on standardised log abundance: what one standard deviation of that ASV
  moves the prediction by; for a classifier, over the classes in quadrature);
- the tree member: scikit-learn's impurity importance of the forest (saved with it);
- the transformer ensemble: |gradient x abundance| of each sample's output with respect to
  each of its ASVs' abundances, averaged over the samples given and the members (for a
  classifier, the log probability of the class each sample is predicted to be);
- the blend: each member's importances scaled to sum to 1, weighed by the stack's weights.

What they are not: causes, or effects that hold in another study. Each member ranks what it
leans on; ASVs that move together share credit unevenly (a forest may credit one, a linear
model the other). All are keyed by sequence, then reported per feature ID of the table given.
"""
import numpy as np
import torch

from .data import batch_indices
from .linear import log_abundance


def transformer_importance(models, data, batch_size=64):
    """(F,) mean |d output / d abundance x abundance| per feature column of ``data``."""
    total = np.zeros(len(data.feature_ids))
    for model in models:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for rows in batch_indices(np.arange(len(data)), batch_size):
            batch = data.make_batch(rows, distances=False)
            abundance = batch.abundance.clone().requires_grad_(True)            # (B, K)
            out = model(batch.tokens, batch.asv_index, abundance)['prediction']  # (B, C)
            if out.shape[1] == 1:
                target = out[:, 0]
            else:
                logp = torch.log_softmax(out.float(), dim=-1)
                target = logp.gather(1, logp.argmax(1, keepdim=True))[:, 0]
            target.sum().backward()          # samples do not interact: per-sample gradients
            contribution = (abundance.grad * abundance).abs().detach().numpy()   # (B, K)
            index = batch.asv_index.numpy()
            valid = index >= 0
            np.add.at(total, batch.features[index[valid]], contribution[valid])
    return total / max(1, len(models) * len(data))


def linear_importance(model, counts, sequences):
    """(F,) per feature column of ``counts``: |coefficient| x sd of its log abundance."""
    position = {s: i for i, s in enumerate(model.sequences)}
    columns = np.array([position.get(s, -1) for s in sequences], np.int64)
    X = log_abundance(counts, columns, len(model.sequences)).toarray()
    spread = X.std(axis=0)                                            # (known,)
    per_sequence = np.sqrt(((model.coef * spread[:, None]) ** 2).sum(axis=1))
    return np.where(columns >= 0, per_sequence[np.maximum(columns, 0)], 0.0)


def tree_importance(model, sequences):
    """(F,) the forest's impurity importance of each feature column's sequence."""
    position = {s: i for i, s in enumerate(model.sequences)}
    columns = np.array([position.get(s, -1) for s in sequences], np.int64)
    if model.importance is None:
        return np.zeros(len(sequences))
    return np.where(columns >= 0, model.importance[np.maximum(columns, 0)], 0.0)


def blend_importance(members, weights):
    """``members``: name -> (F,) importances; ``weights``: name -> weight. Each member
    scaled to sum to 1, then weighed."""
    total = 0.0
    for name, values in members.items():
        s = values.sum()
        total = total + weights.get(name, 0.0) * (values / s if s > 0 else values)
    return np.asarray(total, np.float64)
