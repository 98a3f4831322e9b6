"""The k-mer member of a fitted model: a penalised linear model on a sample's k-mer
profile, the 5-mer frequencies of its ASVs weighted by their relative abundance.

Why: the linear and tree members know an ASV only by its exact sequence, so a subject
whose strains differ by a base from every training subject's looks new to them. Two ASVs
that differ by a few bases share most of their 5-mers, so this member reads a new sample
through its relatives' sequences, as the transformers do, at the cost of a linear fit.
Measured on kept folds of all ten rows before it was shipped (benchmarks/results.md, stop 32).

The profile is log(frequency + 1e-6), each column standardised on the training samples;
the penalty is chosen as the linear member's is (engine/linear.py ``penalised_fit``).
"""
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .linear import penalised_fit

KMER_SIZE = 5
# log(frequency + 1e-6): below any 5-mer's share of a sample (one in 4**5 is 1e-3)
PSEUDO_FREQUENCY = 1e-6
BASES = {'A': 0, 'C': 1, 'G': 2, 'T': 3}


@dataclass
class KmerModel:
    """A linear model over the 4**k standardised log k-mer frequencies; a classifier's
    outputs are logits."""
    task: str                   # 'regression' or 'classification'
    k: int
    mean: np.ndarray            # (4**k,) each column's training mean (log frequency)
    scale: np.ndarray           # (4**k,) and its standard deviation (1 where constant)
    coef: np.ndarray            # (4**k, outputs)
    intercept: np.ndarray       # (outputs,)
    penalty: float              # ridge alpha, or logistic C, as cross-validation chose it

    @property
    def n_outputs(self):
        return self.coef.shape[1]


def kmer_frequencies(sequences, k=KMER_SIZE):
    """(ASVs, 4**k) sparse: each sequence's k-mer shares (k-mers holding a base other than
    A, C, G or T are skipped; a sequence with none has an empty row)."""
    rows, cols = [], []
    place = 4 ** np.arange(k - 1, -1, -1)
    for i, sequence in enumerate(sequences):
        digits = np.array([BASES.get(b, -1) for b in str(sequence).upper()], np.int64)
        if len(digits) < k:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(digits, k)   # (L - k + 1, k)
        windows = windows[(windows >= 0).all(axis=1)]
        rows.extend([i] * len(windows))
        cols.extend((windows @ place).tolist())
    table = sp.csr_matrix((np.ones(len(rows)), (rows, cols)),
                          shape=(len(sequences), 4 ** k))
    per_sequence = np.asarray(table.sum(axis=1)).ravel()
    return (sp.diags(1.0 / np.maximum(per_sequence, 1.0)) @ table).tocsr()


def log_profile(counts, sequences, k=KMER_SIZE):
    """(samples, 4**k) dense: log(k-mer frequency + PSEUDO_FREQUENCY), the frequencies
    being the sample's ASVs' k-mer shares weighted by relative abundance."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    depth = np.asarray(counts.sum(axis=1)).ravel()
    relative = sp.diags(1.0 / np.maximum(depth, 1.0)) @ counts
    return np.log((relative @ kmer_frequencies(sequences, k)).toarray() + PSEUDO_FREQUENCY)


def fit_kmers(counts, sequences, targets, task, n_classes=None, groups=None, k=KMER_SIZE):
    """The member on the training samples; deterministic. ``groups``: as fit_linear's."""
    X = log_profile(counts, sequences, k)
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    coef, intercept, penalty = penalised_fit((X - mean) / scale, targets, task, n_classes,
                                             groups)
    return KmerModel(task, k, mean, scale, coef, intercept, penalty)


def kmer_outputs(model, counts, sequences):
    """New samples' predictions: values (n,) of a regressor, class probabilities (n, C)
    of a classifier. Every ASV is read, known to the training samples or not."""
    X = (log_profile(counts, sequences, model.k) - model.mean) / model.scale
    out = X @ model.coef + model.intercept
    if model.task == 'regression':
        return out[:, 0]
    shifted = np.exp(out - out.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def check_kmers(model, outputs):
    """A KmerModel read from a file: shapes that agree, finite numbers, positive scales."""
    width = 4 ** model.k
    shapes = {'mean': (width,), 'scale': (width,), 'coef': (width, outputs),
              'intercept': (outputs,)}
    for name, shape in shapes.items():
        if getattr(model, name).shape != shape:
            raise ValueError(f'{name} has shape {getattr(model, name).shape}, not {shape} '
                             f'(k {model.k}, {outputs} outputs).')
        if not np.isfinite(getattr(model, name)).all():
            raise ValueError(f'{name} holds a value that is not a finite number.')
    if (model.scale <= 0).any():
        raise ValueError('scale must be above 0 in every column.')
