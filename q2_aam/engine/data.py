"""A feature table and its sequences -> batches that hold each distinct ASV once.

A sample is its ``max_asvs`` most abundant ASVs (ties broken by feature ID) with
their relative abundances. A batch tokenises the union of its samples' ASVs once
(``tokens [U, L]``) and points into it (``asv_index [B, K]``, -1 = empty slot):
samples share most ASVs, so this is where most of the speed comes from.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch

from .messages import preview
from .tokens import PAD, encode_sequences


@dataclass
class Batch:
    samples: np.ndarray                 # (B,) row numbers into the dataset
    features: np.ndarray                # (U,) feature columns of the tokens' rows
    tokens: torch.Tensor                # (U, L) long
    asv_index: torch.Tensor             # (B, K) long, -1 = empty
    abundance: torch.Tensor             # (B, K) float, relative abundance, 0 = empty
    distances: Optional[torch.Tensor]   # (B, B) float, UniFrac sub-matrix in batch order
    targets: Optional[torch.Tensor]     # (B,) float (standardised) or long (class index)

    def to(self, device):
        move = (lambda t: None if t is None else t.to(device, non_blocking=True))
        return Batch(self.samples, self.features, move(self.tokens), move(self.asv_index),
                     move(self.abundance), move(self.distances), move(self.targets))


class AmpliconData:
    """Samples as ranked ASV lists, plus the tokens of every feature.

    ``counts`` is samples x features (scipy sparse or dense); ``sequences`` are in
    feature order. ``distances`` (n x n, sample order, or a source that computes any
    block of it, such as unifrac.TreeDistances) and ``targets`` (n,) are optional.
    """

    def __init__(self, counts, sample_ids, feature_ids, sequences, max_asvs=1024,
                 max_bp=150, distances=None, targets=None, read_floor=0.0):
        counts = sp.csr_matrix(counts, dtype=np.float64)
        self.sample_ids = np.asarray([str(s) for s in sample_ids], dtype=object)
        self.feature_ids = np.asarray([str(f) for f in feature_ids], dtype=object)
        n, f = counts.shape
        if n != len(self.sample_ids) or f != len(self.feature_ids) or f != len(sequences):
            raise ValueError(f'counts are {n} x {f} but there are {len(self.sample_ids)} '
                             f'sample IDs, {len(self.feature_ids)} feature IDs and '
                             f'{len(sequences)} sequences.')
        if n == 0 or f == 0:
            raise ValueError(f'The table is empty ({n} samples, {f} features). '
                             'Give a table with at least one sample that has reads.')
        if counts.data.size and counts.data.min() < 0:
            raise ValueError('The table has negative counts; give raw read counts.')
        totals = np.asarray(counts.sum(axis=1)).ravel()
        empty = self.sample_ids[totals <= 0]
        if len(empty):
            raise ValueError(
                f'{len(empty)} of {n} samples have no reads: {preview(empty)}. '
                'Remove them first, e.g. with `qiime feature-table filter-samples '
                '--p-min-frequency 1`.')
        self.max_asvs = int(max_asvs)
        self.max_bp = int(max_bp)
        if not 0.0 <= float(read_floor) < 1.0:
            raise ValueError(f'read_floor is a relative abundance in [0, 1), not {read_floor}.')
        self.read_floor = float(read_floor)
        self.tokens = torch.from_numpy(
            encode_sequences(sequences, self.feature_ids, max_bp).astype(np.int64))  # (F, L)
        self.lengths = (self.tokens != PAD).sum(dim=1)                               # (F,)
        # rank of each feature ID in sorted order: the deterministic tie-breaker
        id_rank = np.empty(f, dtype=np.int64)
        id_rank[np.argsort(self.feature_ids.astype(str), kind='stable')] = np.arange(f)
        self.asvs, self.abundances, self.reads = [], [], []
        self.totals = totals
        for row in range(n):
            start, end = counts.indptr[row], counts.indptr[row + 1]
            cols, vals = counts.indices[start:end], counts.data[start:end]
            keep = vals > 0
            cols, vals = cols[keep], vals[keep]
            order = np.lexsort((id_rank[cols], -vals))[:self.max_asvs]
            self.asvs.append(cols[order].astype(np.int64))
            self.abundances.append((vals[order] / totals[row]).astype(np.float32))
            self.reads.append(vals[order])
        if hasattr(distances, 'block'):
            if len(distances) != n:
                raise ValueError(f'the distance source covers {len(distances)} samples, '
                                 f'expected {n}.')
            self.distances = distances
        else:
            self.distances = None if distances is None else np.asarray(distances, np.float32)
            if self.distances is not None and self.distances.shape != (n, n):
                raise ValueError(f'distances are {self.distances.shape}, expected {(n, n)}.')
        self.targets = None if targets is None else np.asarray(targets)
        if self.targets is not None and len(self.targets) != n:
            raise ValueError(f'{len(self.targets)} targets for {n} samples.')

    def __len__(self):
        return len(self.sample_ids)

    def distance_block(self, rows):
        """(B, B) distances between these sample rows (a matrix's block, or computed)."""
        rows = np.asarray(rows, dtype=np.int64)
        if hasattr(self.distances, 'block'):
            return np.asarray(self.distances.block(rows), np.float32)
        return self.distances[np.ix_(rows, rows)]

    def distances_fingerprint(self):
        """Bytes or text that change when the distances do (for resumable runs)."""
        if self.distances is None:
            return None
        if hasattr(self.distances, 'fingerprint'):
            return self.distances.fingerprint().encode()
        return self.distances.tobytes()

    def asvs_per_sample(self):
        return np.array([len(a) for a in self.asvs])

    def read_whole(self, row):
        """One sample's ASVs and relative abundances as a batch that is not rarefied reads
        them: those below ``read_floor`` left out (the most abundant one always kept).

        Why: a model trained on subsamples of about D reads each epoch seldom saw an ASV
        below one read in D, so prediction reads a sample as training showed it (the floor
        is 1 / D, set by fit; 0 reads every ASV). The abundances stay those of the whole
        sample, as a subsample's do on average."""
        asvs, abundances = self.asvs[row], self.abundances[row]
        if self.read_floor > 0:
            kept = max(1, int(np.count_nonzero(abundances >= self.read_floor)))
            asvs, abundances = asvs[:kept], abundances[:kept]     # most abundant first
        return asvs, abundances

    def rarefied(self, row, depth, rng):
        """One sample's ASVs and relative abundances after subsampling its reads to about
        ``depth`` (each read kept with probability depth / reads, binomially).

        Why: an augmentation. Another draw of the same community at a lower depth loses
        and rescales its rare ASVs, which the model should not rely on one by one. A
        sample already at or below ``depth`` is unchanged; one that would lose every
        kept ASV keeps its most abundant one.
        """
        total = self.totals[row]
        keep_p = min(1.0, depth / total)
        if keep_p >= 1.0:
            return self.asvs[row], self.abundances[row]
        reads = self.reads[row]
        drawn = rng.binomial(reads.astype(np.int64), keep_p)
        # reads of ASVs beyond max_asvs still count towards the sample's total
        rest = rng.binomial(int(round(total - reads.sum())), keep_p)
        if not drawn.any():
            drawn = np.zeros_like(drawn)
            drawn[0] = 1
        present = drawn > 0
        new_total = drawn.sum() + rest
        return self.asvs[row][present], (drawn[present] / new_total).astype(np.float32)

    def make_batch(self, samples, dedupe=True, targets=None, rarefy=None, distances=True):
        """Cut a batch for these sample rows. ``dedupe=False`` encodes every slot
        separately (the naive path, kept to check the shared one against). ``rarefy``:
        (depth, numpy Generator) subsamples each sample's reads first (see rarefied).
        ``distances=False`` leaves out the distance block (prediction reads none, and a
        rank of a distributed run uses the global batch's): from a tree it costs a
        UniFrac computation."""
        samples = np.asarray(samples, dtype=np.int64)
        if rarefy is not None:
            drawn = [self.rarefied(i, *rarefy) for i in samples]
            lists, abundances = [d[0] for d in drawn], [d[1] for d in drawn]
        else:
            whole = [self.read_whole(i) for i in samples]
            lists, abundances = [w[0] for w in whole], [w[1] for w in whole]
        k = max(1, max(len(a) for a in lists))
        flat = np.concatenate(lists)
        if dedupe:
            unique, inverse = np.unique(flat, return_inverse=True)
        else:
            unique, inverse = flat, np.arange(len(flat))
        asv_index = np.full((len(samples), k), -1, dtype=np.int64)
        abundance = np.zeros((len(samples), k), dtype=np.float32)
        offset = 0
        for b, (a, values) in enumerate(zip(lists, abundances)):
            asv_index[b, :len(a)] = inverse[offset:offset + len(a)]
            abundance[b, :len(a)] = values
            offset += len(a)
        unique_t = torch.from_numpy(unique)
        length = int(self.lengths[unique_t].max()) if len(unique) else 1
        block = None
        if distances and self.distances is not None:
            block = torch.from_numpy(self.distance_block(samples))
        if targets is None and self.targets is not None:
            targets = self.targets[samples]
        return Batch(samples, unique, self.tokens[unique_t, :length], torch.from_numpy(asv_index),
                     torch.from_numpy(abundance), block,
                     None if targets is None else torch.as_tensor(targets))

    def used_features(self, samples):
        """Distinct feature columns these samples' unrarefied batches read, sorted."""
        return np.unique(np.concatenate([self.read_whole(i)[0] for i in samples]))


def batch_indices(samples, batch_size, shuffle=False, seed=0, epoch=0, rank=0, world_size=1):
    """Split sample rows into batches; shuffled per (seed, epoch), sharded by rank.

    Every rank sees the same permutation and takes every ``world_size``-th sample,
    so a distributed run covers each sample once per epoch. No ``drop_last``: the
    last batch may be smaller (a batch of one has no UniFrac pair and adds no
    UniFrac term).
    """
    samples = np.asarray(samples, dtype=np.int64)
    if shuffle:
        samples = np.random.default_rng([seed, epoch]).permutation(samples)
    samples = samples[rank::world_size]
    return [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]


def split_samples(n, validation_size=0.2, stratify=None, seed=0):
    """Seeded train/validation split of ``range(n)``; stratified by class when given.

    Returns (train, validation) row arrays; validation is empty when
    ``validation_size`` is 0. Each class keeps at least one training sample.
    """
    rows = np.arange(n)
    if not validation_size:
        return rows, rows[:0]
    rng = np.random.default_rng(seed)
    if stratify is None:
        n_val = int(round(validation_size * n))
        n_val = min(max(n_val, 1), n - 1)
        perm = rng.permutation(rows)
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    stratify = np.asarray(stratify)
    train, val = [], []
    for label in np.unique(stratify):
        members = rng.permutation(rows[stratify == label])
        n_val = min(int(round(validation_size * len(members))), len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.array(train, np.int64)), np.sort(np.array(val, np.int64))
