"""Tiny synthetic data and models shared by the engine tests (no QIIME 2 here)."""
import numpy as np
import torch

from q2_aam.engine.data import AmpliconData
from q2_aam.engine.model import AAM, AAMConfig

# The test models are tiny, and the 2 CPU cores are shared: one thread avoids contention.
torch.set_num_threads(1)

BASES = np.array(list('ACGT'))


def random_sequences(n, rng, low=12, high=30):
    return [''.join(rng.choice(BASES, rng.integers(low, high + 1))) for _ in range(n)]


def toy_table(n_samples=10, n_features=14, seed=0):
    """Counts (samples x features) where every sample has at least two ASVs."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 30, size=(n_samples, n_features)) * \
        (rng.random((n_samples, n_features)) < 0.5)
    counts[:, 0] += 5               # every sample has reads
    counts[:, 1] += 1
    return counts


def toy_distances(counts):
    """Jaccard distances of presence/absence: a symmetric matrix with zero diagonal."""
    present = counts > 0
    inter = present.astype(int) @ present.T.astype(int)
    union = present.sum(1)[:, None] + present.sum(1)[None, :] - inter
    return (1.0 - inter / union).astype(np.float32)


def toy_data(n_samples=10, n_features=14, seed=0, max_asvs=1024, max_bp=40,
             distances=True, targets=None):
    counts = toy_table(n_samples, n_features, seed)
    rng = np.random.default_rng(seed + 1)
    sequences = random_sequences(n_features, rng)
    if targets == 'regression':
        targets = (counts[:, 0] / counts.sum(1) * 10 + rng.normal(0, 0.1, n_samples))
    elif targets == 'classification':
        targets = np.arange(n_samples) % 2
    return AmpliconData(counts, [f'S{i}' for i in range(n_samples)],
                        [f'F{j:02d}' for j in range(n_features)], sequences,
                        max_asvs=max_asvs, max_bp=max_bp,
                        distances=toy_distances(counts) if distances else None,
                        targets=targets)


def tiny_config(task='encoder', n_outputs=0, dim=16, max_bp=40, dropout=0.1,
                nucleotide_layers=None):
    return AAMConfig(task=task, n_outputs=n_outputs, max_bp=max_bp, embedding_dim=dim,
                     attention_heads=2, attention_layers=1, feedforward_mult=2,
                     dropout=dropout, nucleotide_layers=nucleotide_layers)


def tiny_model(task='encoder', n_outputs=0, seed=0, **kwargs):
    torch.manual_seed(seed)
    return AAM(tiny_config(task, n_outputs, **kwargs))
