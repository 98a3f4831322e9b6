import numpy as np
import pytest
import scipy.sparse as sp
import torch

from q2_aam.engine.data import AmpliconData, batch_indices, split_samples
from q2_aam.engine.tokens import PAD, START, encode_sequences

from engine_fixtures import toy_data

SEQS = ['ACGTACGTAC', 'AC', 'GGGGGGGGGGGGGGGGGGGG', 'TTT', 'CACA']
FEATURES = ['f0', 'f1', 'f2', 'f3', 'f4']


def small(counts, **kwargs):
    counts = counts if sp.issparse(counts) else np.asarray(counts)
    return AmpliconData(counts, [f's{i}' for i in range(counts.shape[0])], FEATURES, SEQS,
                        **kwargs)


def test_sample_keeps_most_abundant_asvs_ties_broken_by_feature_id():
    # sample 0: f3 most abundant, then a three-way tie f1/f2/f4 broken by ID
    data = small([[0, 5, 5, 9, 5]], max_asvs=3)
    np.testing.assert_array_equal(data.asvs[0], [3, 1, 2])
    np.testing.assert_allclose(data.abundances[0], np.array([9, 5, 5]) / 24, rtol=1e-6)


def test_tie_break_uses_feature_ids_not_column_order():
    ids = ['zeta', 'alpha', 'mid']
    data = AmpliconData(np.array([[4, 4, 4]]), ['s'], ids, ['A', 'C', 'G'], max_asvs=2)
    assert [ids[i] for i in data.asvs[0]] == ['alpha', 'mid']


def test_relative_abundance_uses_the_whole_sample():
    data = small([[1, 1, 1, 1, 6]], max_asvs=1)
    np.testing.assert_allclose(data.abundances[0], [0.6])


# -- read subsampling (rarefy augmentation) -----------------------------------------------

def test_rarefied_leaves_a_shallow_sample_unchanged():
    data = small([[0, 30, 10, 0, 60]])
    asvs, abundances = data.rarefied(0, 100, np.random.default_rng(0))
    np.testing.assert_array_equal(asvs, data.asvs[0])
    np.testing.assert_array_equal(abundances, data.abundances[0])


def test_rarefied_keeps_expected_abundances_and_drops_rare_asvs():
    # f4 holds 1 read in 10,001: at depth 100 it is almost always lost
    data = small([[0, 6000, 4000, 0, 1]])
    rng = np.random.default_rng(0)
    draws = [data.rarefied(0, 100, rng) for _ in range(400)]
    assert sum(4 in asvs for asvs, _ in draws) < 20
    mean = {f: np.mean([ab[list(asvs).index(f)] if f in asvs else 0.0 for asvs, ab in draws])
            for f in (1, 2)}
    assert mean[1] == pytest.approx(0.6, abs=0.01) and mean[2] == pytest.approx(0.4, abs=0.01)
    for asvs, abundances in draws:
        assert abundances.sum() == pytest.approx(1.0)     # no reads beyond max_asvs here
        assert (abundances > 0).all()
        assert set(asvs) <= {1, 2, 4}


def test_rarefied_counts_reads_beyond_max_asvs_in_the_total():
    data = small([[0, 5000, 0, 0, 5000]], max_asvs=1)
    asvs, abundances = data.rarefied(0, 1000, np.random.default_rng(1))
    assert list(asvs) == [1]
    assert abundances[0] == pytest.approx(0.5, abs=0.08)   # not 1.0: f4 still counts


def test_rarefied_keeps_the_top_asv_when_all_would_vanish():
    data = small([[0, 1, 1, 0, 1]], max_asvs=2)
    rng = np.random.default_rng(0)
    for _ in range(50):
        asvs, abundances = data.rarefied(0, 0.01, rng)
        assert len(asvs) >= 1 and asvs[0] == data.asvs[0][0] and (abundances > 0).all()


def test_batch_with_rarefy_is_seeded_and_marks_lost_asvs_empty():
    data = small([[0, 9000, 990, 0, 10], [500, 0, 0, 500, 0]])
    first = data.make_batch([0, 1], rarefy=(200, np.random.default_rng(3)))
    again = data.make_batch([0, 1], rarefy=(200, np.random.default_rng(3)))
    assert torch.equal(first.asv_index, again.asv_index)
    assert torch.equal(first.abundance, again.abundance)
    plain = data.make_batch([0, 1])
    assert not torch.equal(first.abundance, plain.abundance)
    valid = first.asv_index >= 0
    assert (first.abundance[valid] > 0).all() and (first.abundance[~valid] == 0).all()
    # every sample's abundances still sum to at most one
    assert (first.abundance.sum(1) <= 1.0 + 1e-6).all()


# -- the read floor: prediction reads a sample as training's subsamples showed it --------

def test_read_floor_leaves_rare_asvs_out_of_unrarefied_batches_only():
    # sample 0: f4 holds 10 reads in 10,000 (1e-3) and f2 990; sample 1 has no rare ASV
    counts = [[0, 9000, 990, 0, 10], [500, 0, 0, 500, 0]]
    floored, whole = small(counts, read_floor=0.002), small(counts)
    asvs, abundances = floored.read_whole(0)
    np.testing.assert_array_equal(asvs, [1, 2])                  # f4 (1e-3) left out
    np.testing.assert_allclose(abundances, [0.9, 0.099], rtol=1e-6)   # of the whole sample
    np.testing.assert_array_equal(floored.read_whole(1)[0], whole.read_whole(1)[0])
    batch, full = floored.make_batch([0, 1]), whole.make_batch([0, 1])
    assert 4 not in batch.features.tolist() and 4 in full.features.tolist()
    assert (batch.asv_index[0] >= 0).sum() == 2 and (full.asv_index[0] >= 0).sum() == 3
    np.testing.assert_array_equal(floored.used_features([0, 1]), [0, 1, 2, 3])
    # training's subsamples draw from every ASV, as before the floor
    a = floored.make_batch([0, 1], rarefy=(5000, np.random.default_rng(3)))
    b = whole.make_batch([0, 1], rarefy=(5000, np.random.default_rng(3)))
    assert torch.equal(a.asv_index, b.asv_index) and torch.equal(a.abundance, b.abundance)
    assert 4 in a.features.tolist()


def test_read_floor_keeps_a_samples_most_abundant_asv():
    data = small([[0, 3, 3, 2, 2]], read_floor=0.5)      # no ASV reaches half the reads
    asvs, abundances = data.read_whole(0)
    np.testing.assert_array_equal(asvs, [1])
    np.testing.assert_allclose(abundances, [0.3], rtol=1e-6)


@pytest.mark.parametrize('floor', [-0.1, 1.0, float('nan')])
def test_read_floor_outside_zero_to_one_is_refused(floor):
    with pytest.raises(ValueError, match='read_floor is a relative abundance in'):
        small([[1, 2, 3, 4, 5]], read_floor=floor)


def test_sparse_and_dense_tables_agree():
    counts = np.array([[0, 3, 1, 0, 2], [4, 0, 0, 1, 0]])
    dense, sparse = small(counts), small(sp.csr_matrix(counts))
    for a, b in zip(dense.asvs, sparse.asvs):
        np.testing.assert_array_equal(a, b)


def test_batch_holds_each_distinct_asv_once_and_points_into_it():
    data = small([[3, 2, 0, 0, 0], [0, 2, 3, 0, 0], [1, 1, 1, 1, 0]])
    batch = data.make_batch([0, 1, 2])
    np.testing.assert_array_equal(batch.features, [0, 1, 2, 3])
    assert batch.tokens.shape[0] == 4                  # U distinct ASVs, not B x K = 12
    assert batch.asv_index.shape == (3, 4)             # K = the batch's largest sample
    for b, sample in enumerate([0, 1, 2]):
        slots = batch.asv_index[b]
        valid = slots[slots >= 0]
        np.testing.assert_array_equal(batch.features[valid.numpy()], data.asvs[sample])
        assert (slots[len(valid):] == -1).all()
        assert (batch.abundance[b, len(valid):] == 0).all()
        np.testing.assert_allclose(batch.abundance[b, :len(valid)], data.abundances[sample])
    # the tokens rows are the features' own tokens
    full = torch.from_numpy(encode_sequences(SEQS).astype(np.int64))
    np.testing.assert_array_equal(batch.tokens, full[batch.features, :batch.tokens.shape[1]])


def test_length_and_slots_are_the_batch_maxima():
    data = small([[1, 1, 0, 0, 0], [0, 0, 0, 1, 1], [1, 1, 1, 1, 1]])
    short = data.make_batch([1])                       # TTT and CACA only
    assert short.tokens.shape == (2, 5)                # START + 4 bases
    assert short.asv_index.shape == (1, 2)
    assert short.tokens.dtype == torch.long and short.asv_index.dtype == torch.long
    assert (short.tokens[:, 0] == START).all()
    full = data.make_batch([0, 1, 2])
    assert full.tokens.shape == (5, 21)                # the 20-base ASV is in it
    assert full.asv_index.shape == (3, 5)


def test_no_dedupe_encodes_every_slot():
    data = small([[3, 2, 0, 0, 0], [0, 2, 3, 0, 0]])
    batch = data.make_batch([0, 1], dedupe=False)
    assert batch.tokens.shape[0] == 4
    np.testing.assert_array_equal(batch.features, [0, 1, 2, 1])
    np.testing.assert_array_equal(batch.asv_index, [[0, 1], [2, 3]])


def test_unifrac_submatrix_in_batch_order():
    rng = np.random.default_rng(3)
    d = rng.random((6, 6)).astype(np.float32)
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    data = AmpliconData(np.ones((6, 5)), list('abcdef'), FEATURES, SEQS, distances=d)
    order = [4, 0, 5, 2]
    batch = data.make_batch(order)
    np.testing.assert_array_equal(batch.samples, order)
    for i, a in enumerate(order):
        for j, b in enumerate(order):
            assert batch.distances[i, j] == d[a, b]


def test_shuffled_batches_cover_every_sample_once_without_drop_last():
    data = toy_data(n_samples=11)
    batches = batch_indices(np.arange(11), 4, shuffle=True, seed=1, epoch=0)
    assert [len(b) for b in batches] == [4, 4, 3]      # no drop_last
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(11))
    for rows in batches:
        batch = data.make_batch(rows)
        np.testing.assert_array_equal(batch.distances, data.distances[np.ix_(rows, rows)])


def test_batch_of_one_sample():
    data = toy_data(n_samples=5, targets='regression')
    batch = data.make_batch([3])
    assert batch.asv_index.shape[0] == 1
    assert batch.distances.shape == (1, 1)
    assert batch.targets.shape == (1,)
    assert batch_indices(np.arange(5), 2)[-1].tolist() == [4]


def test_batch_indices_seeded_per_epoch_and_sharded():
    rows = np.arange(20)
    a = batch_indices(rows, 3, shuffle=True, seed=2, epoch=1)
    b = batch_indices(rows, 3, shuffle=True, seed=2, epoch=1)
    c = batch_indices(rows, 3, shuffle=True, seed=2, epoch=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))
    np.testing.assert_array_equal(np.concatenate(batch_indices(rows, 3)), rows)
    shards = [np.concatenate(batch_indices(rows, 3, shuffle=True, seed=2, rank=r,
                                           world_size=3)) for r in range(3)]
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), rows)


def test_batch_targets():
    data = toy_data(n_samples=6, targets='classification')
    batch = data.make_batch([5, 2])
    np.testing.assert_array_equal(batch.targets, data.targets[[5, 2]])
    assert data.make_batch([1], targets=np.array([7])).targets.tolist() == [7]


def test_split_is_seeded_and_sized():
    train, val = split_samples(20, 0.2, seed=4)
    assert len(val) == 4 and len(train) == 16
    assert not set(train) & set(val)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(20))
    again = split_samples(20, 0.2, seed=4)
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, split_samples(20, 0.2, seed=5)[1])


def test_split_without_validation():
    train, val = split_samples(7, 0)
    np.testing.assert_array_equal(train, np.arange(7))
    assert len(val) == 0


def test_split_is_stratified():
    labels = np.array(['a'] * 10 + ['b'] * 5 + ['c'] * 1)
    train, val = split_samples(len(labels), 0.2, stratify=labels, seed=0)
    assert list(labels[val]).count('a') == 2
    assert list(labels[val]).count('b') == 1
    assert 'c' in labels[train]                        # every class keeps a training sample
    assert set(labels[train]) == {'a', 'b', 'c'}


def test_zero_read_samples_are_named():
    counts = np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"2 of 3 samples have no reads: 's1', 's2'"):
        small(counts)


def test_empty_table():
    with pytest.raises(ValueError, match='The table is empty'):
        AmpliconData(np.zeros((0, 5)), [], FEATURES, SEQS)
    with pytest.raises(ValueError, match='The table is empty'):
        AmpliconData(np.zeros((2, 0)), ['a', 'b'], [], [])


def test_mismatched_shapes():
    with pytest.raises(ValueError, match='5 sequences'):
        AmpliconData(np.ones((2, 4)), ['a', 'b'], FEATURES[:4], SEQS)
    with pytest.raises(ValueError, match='distances'):
        small(np.ones((2, 5)), distances=np.zeros((3, 3)))
    with pytest.raises(ValueError, match='targets'):
        small(np.ones((2, 5)), targets=[1.0])


def test_negative_counts():
    with pytest.raises(ValueError, match='negative'):
        small([[1, -1, 0, 0, 0]])


def test_tokens_of_the_dataset_have_no_all_padding_row():
    data = small(np.ones((1, 5)))
    assert (data.tokens[:, 0] == START).all()
    assert ((data.tokens != PAD).sum(1) == torch.tensor([11, 3, 21, 4, 5])).all()


def test_a_batch_without_distances_computes_none():
    """Prediction and a distributed rank ask for no distance block: from a tree each block
    is a UniFrac computation, so none may be computed for them."""
    calls = []

    class Source:
        def __len__(self):
            return 10

        def block(self, rows):
            calls.append(list(rows))
            return np.zeros((len(rows), len(rows)), np.float32)
    counts = np.tile([[3, 1, 0, 2, 5], [0, 4, 4, 1, 1]], (5, 1))
    data = small(counts, distances=Source())
    assert data.make_batch([0, 3], distances=False).distances is None and calls == []
    assert data.make_batch([0, 3]).distances.shape == (2, 2) and calls == [[0, 3]]
