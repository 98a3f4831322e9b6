"""How much each ASV matters to each member of a fitted model, and to the blend.

- the linear member: |coefficient| x the spread of its feature over the samples given
  (a coefficient on standardised log abundance: what one standard deviation of that ASV
  moves the prediction by; for a classifier, over the classes in quadrature);
- the tree member: scikit-learn's impurity importance of the forest (saved with it);
- the k-mer member: the spread over the samples of each ASV's first-order contribution
  (its abundance times the output's slope in its k-mers' frequencies);
- the transformer ensemble: how far each sample's output moves when one of its ASVs is
  taken out (occlusion), averaged over the samples given, for the ensemble's first member
  and each sample's 64 most abundant ASVs (for a classifier, the logit of the class each
  sample is predicted to be, over the mean logit);
- the blend: each member's importances scaled to sum to 1, weighed by the stack's weights.

What they are not: causes, or effects that hold in another study. Each member ranks what it
leans on; ASVs that move together share credit unevenly (a forest may credit one, a linear
model the other). All are keyed by sequence, then reported per feature ID of the table given.
"""
import numpy as np
import scipy.sparse as sp
import torch

from .data import batch_indices
from .linear import log_abundance


def _target(out):
    """The number an attribution follows: a regressor's output; a classifier's predicted
    class's logit over the mean logit (it does not saturate as a probability does)."""
    if out.shape[1] == 1:
        return out[:, 0].float()
    out = out.float()
    return out.gather(1, out.argmax(1, keepdim=True))[:, 0] - out.mean(1)


# occlusion costs one forward pass per ASV slot: it is run for the first member of the
# ensemble (the members differ by seed alone) over each sample's most abundant ASVs
OCCLUDED_SLOTS = 64


@torch.no_grad()
def transformer_importance(models, data, batch_size=64, slots=OCCLUDED_SLOTS):
    """(F,) per feature column of ``data``: how far each sample's output moves when one of
    its ASVs is taken out (occlusion), averaged over the samples given. The first member
    only, and each sample's ``slots`` most abundant ASVs (a rarer one counts 0 there): a
    pass per slot costs about as much as a prediction. Why not gradient x input: on the
    abundance it is the same for every ASV present (the model reads log abundance), and on
    the ASV vectors it ranked ASVs that every sample has beside the planted ones."""
    from .predict import encode_all_asvs
    total = np.zeros(len(data.feature_ids))
    model = models[0]
    model.eval()
    vectors = encode_all_asvs(model, data, torch.device('cpu'))
    for rows in batch_indices(np.arange(len(data)), batch_size):
        batch = data.make_batch(rows, distances=False)
        asv_vectors = vectors[batch.features]
        full = _target(model(batch.tokens, batch.asv_index, batch.abundance,
                             asv_vectors=asv_vectors)['prediction'])         # (B,)
        index = batch.asv_index.numpy()
        for k in range(min(slots, index.shape[1])):
            present = index[:, k] >= 0
            if not present.any():
                continue
            without = batch.asv_index.clone()
            without[:, k] = -1
            abundance = batch.abundance.clone()
            abundance[:, k] = 0
            moved = _target(model(batch.tokens, without, abundance,
                                  asv_vectors=asv_vectors)['prediction'])
            change = (full - moved).abs().numpy()
            np.add.at(total, batch.features[index[present, k]], change[present])
    return total / max(1, len(data))


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


def kmer_importance(model, counts, sequences):
    """(F,) per feature column of ``counts``: how much the ASV moves the k-mer member's
    outputs across the samples. Its first-order contribution to a sample's output is its
    relative abundance times the slope of the output in its k-mers' frequencies; the
    importance is the sd of that contribution over the samples (norm over outputs)."""
    from .kmers import PSEUDO_FREQUENCY, kmer_frequencies
    counts = sp.csr_matrix(counts, dtype=np.float64)
    depth = np.asarray(counts.sum(axis=1)).ravel()
    relative = (sp.diags(1.0 / np.maximum(depth, 1.0)) @ counts).tocsr()   # (n, F)
    shares = kmer_frequencies(sequences, model.k)                            # (F, 4**k)
    frequency = (relative @ shares).toarray()                                # (n, 4**k)
    slope = model.coef / model.scale[:, None]                                # (4**k, O)
    total = np.zeros((len(sequences), model.n_outputs))
    squares = np.zeros_like(total)
    for s in range(relative.shape[0]):
        per_asv = shares @ (slope / (frequency[s] + PSEUDO_FREQUENCY)[:, None])  # (F, O)
        contribution = relative[s].toarray().ravel()[:, None] * per_asv
        total += contribution
        squares += contribution ** 2
    n = max(relative.shape[0], 1)
    variance = np.maximum(squares / n - (total / n) ** 2, 0.0)
    return np.sqrt(variance.sum(axis=1))


def blend_importance(members, weights):
    """``members``: name -> (F,) importances; ``weights``: name -> weight. Each member
    scaled to sum to 1, then weighed."""
    total = 0.0
    for name, values in members.items():
        s = values.sum()
        total = total + weights.get(name, 0.0) * (values / s if s > 0 else values)
    return np.asarray(total, np.float64)
