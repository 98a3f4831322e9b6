"""Synthetic studies with a planted signal that one member of the stack is built to read.

- ``linear``: the target is a sum of log abundances of five ASVs (every sample has them all);
- ``interaction``: the class is whether exactly one of two ASVs is abundant (an exclusive
  or: no weighted sum of abundances tells it, a tree's two splits do);
- ``planted``: the class is which of two pairs of ASVs a sample has (every member can read
  it, and each should rank those four first);
- ``sequence``: every sample has ASVs of its own, never seen in another sample, and the class
  is which of two motifs their sequences carry: a model that knows ASVs by identity (the
  linear and tree members) learns nothing, one that reads sequences does.
"""
import numpy as np
import pandas as pd

BASES = np.array(list('ACGT'))


def _random_sequence(rng, length=60):
    return ''.join(rng.choice(BASES, length))


def study(kind, n=60, seed=0):
    """(counts: samples x features int array, sample IDs, feature IDs, sequences, targets
    (floats, or class names), groups: a subject per two samples)."""
    rng = np.random.default_rng(seed)
    ids = [f's{i}' for i in range(n)]
    groups = np.array([f'subject-{i // 2}' for i in range(n)], dtype=object)
    if kind == 'sequence':
        y = np.arange(n) % 2
        per, seqs, counts = 4, [], np.zeros((n, 4 * n), np.int64)
        for i in range(n):
            motif = 'AAAATTTTAAAA' if y[i] else 'GGGGCCCCGGGG'
            for j in range(per):
                s = list(_random_sequence(rng))
                for at in (5, 25, 45):
                    s[at:at + len(motif)] = motif
                seqs.append(''.join(s)[:60])
                counts[i, i * per + j] = rng.integers(50, 200)
        targets = np.where(y == 1, 'motif-a', 'motif-b').astype(object)
        return counts, ids, [f'f{k}' for k in range(len(seqs))], seqs, targets, groups
    f = 30
    seqs = [_random_sequence(rng) for _ in range(f)]
    abundance = rng.lognormal(0, 1, (n, f))
    if kind == 'linear':
        logs = np.log(abundance[:, :5])
        targets = (logs @ np.array([2.0, -1.5, 1.0, 2.5, -2.0])) + rng.normal(0, 0.3, n)
    elif kind == 'interaction':          # two ASVs each present in half the samples
        a, b = np.arange(n) % 2 == 1, (np.arange(n) // 2) % 2 == 1
        abundance[:, 0] = np.where(a, 5.0, 0.0)
        abundance[:, 1] = np.where(b, 5.0, 0.0)
        targets = np.where(a ^ b, 'one', 'both-or-none').astype(object)
    elif kind == 'planted':      # class b has ASVs 0 and 1, class a ASVs 2 and 3 instead,
        y = np.arange(n) % 2 == 1          # as abundant, so the others' shares do not differ
        abundance[:, 0] = np.where(y, 8.0, 0.0)
        abundance[:, 1] = np.where(y, 6.0, 0.0)
        abundance[:, 2] = np.where(y, 0.0, 8.0)
        abundance[:, 3] = np.where(y, 0.0, 6.0)
        targets = np.where(y, 'b', 'a').astype(object)
    else:
        raise ValueError(kind)
    counts = np.round(abundance / abundance.sum(1, keepdims=True) * 5000).astype(np.int64)
    counts[:, 4:] += 1                   # every sample has reads in the other ASVs
    return counts, ids, [f'f{k}' for k in range(f)], seqs, targets, groups


def views(kind, n=60, seed=0):
    """The same study as the views the actions take: biom.Table, sequences, the target
    column and the groups column."""
    import biom
    import qiime2
    counts, ids, features, seqs, targets, groups = study(kind, n, seed)
    table = biom.Table(counts.T, features, ids)
    index = pd.Index(ids, name='sample-id')
    if targets.dtype.kind == 'f':
        column = qiime2.NumericMetadataColumn(pd.Series(targets, index=index, name='target'))
    else:
        column = qiime2.CategoricalMetadataColumn(pd.Series(targets, index=index,
                                                            name='target'))
    group_column = qiime2.CategoricalMetadataColumn(pd.Series(groups, index=index,
                                                              name='subject'))
    return table, pd.Series(seqs, index=features), column, group_column
