"""UniFrac from a tree, batch by batch: the same distances as a whole matrix, and training
that never builds one."""
import numpy as np
import pytest
import skbio
import torch

pytest.importorskip('unifrac', reason='Striped UniFrac (the unifrac package, which QIIME 2\'s '
                    'q2-diversity-lib brings) is not installed')

from q2_aam.engine.data import AmpliconData
from q2_aam.engine.trainer import TrainSettings, train
from q2_aam.engine.unifrac import TreeDistances

from engine_fixtures import random_sequences, tiny_model, toy_table

NEWICK = ('((((F00:0.1,F01:0.2):0.3,(F02:0.4,F03:0.1):0.2):0.1,((F04:0.3,F05:0.2):0.1,'
          '(F06:0.2,(F07:0.1,F08:0.3):0.2):0.3):0.2):0.1,((F09:0.2,F10:0.1):0.4,'
          '((F11:0.3,F12:0.2):0.1,(F13:0.1,EXTRA:0.5):0.2):0.3):0.2)root;')
FEATURES = [f'F{j:02d}' for j in range(14)]


def _skbio_unweighted(counts, rows, tree):
    """scikit-bio's own unweighted UniFrac: an independent implementation to agree with."""
    from skbio.diversity import beta_diversity
    kwargs = dict(tree=tree)
    try:
        dm = beta_diversity('unweighted_unifrac', counts[rows], ids=[str(r) for r in rows],
                            taxa=FEATURES, **kwargs)
    except (TypeError, ValueError):                    # scikit-bio before 0.6
        dm = beta_diversity('unweighted_unifrac', counts[rows], ids=[str(r) for r in rows],
                            otu_ids=FEATURES, **kwargs)
    return dm.data


@pytest.mark.parametrize('tree_as', ['newick', 'treenode'])
def test_batch_distances_match_scikit_bio(tree_as):
    counts = toy_table(12, 14)
    tree = skbio.TreeNode.read([NEWICK])
    source = TreeDistances(counts, FEATURES, NEWICK if tree_as == 'newick' else tree)
    rows = np.array([7, 2, 11, 0, 5])
    got = source.block(rows)
    assert got.dtype == np.float32 and got.shape == (5, 5)
    np.testing.assert_allclose(got, _skbio_unweighted(counts, rows, tree), atol=1e-6)
    # a block is the same numbers whichever other samples share the batch
    whole = source.block(np.arange(12))
    np.testing.assert_allclose(got, whole[np.ix_(rows, rows)], atol=1e-6)
    assert source.block([3]).shape == (1, 1)


def test_features_missing_from_the_tree_are_named():
    with pytest.raises(ValueError, match=r"2 of 14 features in the table are not tips of the "
                                         r"phylogeny: 'F00', 'F01'\. Give the rooted tree"):
        TreeDistances(toy_table(12, 14), FEATURES, NEWICK.replace('F00', 'X0')
                      .replace('F01', 'X1'))
    with pytest.raises(ValueError, match="UniFrac method 'jaccard'"):
        TreeDistances(toy_table(12, 14), FEATURES, NEWICK, method='jaccard')


class CountingSource(TreeDistances):
    """A TreeDistances that records the size of every block it computes."""
    sizes = []

    def block(self, rows):
        self.sizes.append(len(rows))
        return super().block(rows)


def _data(distances):
    counts = toy_table(24, 14)
    seqs = random_sequences(14, np.random.default_rng(3))
    return AmpliconData(counts, [f'S{i}' for i in range(24)], FEATURES, seqs, max_bp=40,
                        distances=distances)


def test_pretraining_from_the_tree_equals_pretraining_from_the_matrix():
    counts = toy_table(24, 14)
    source = CountingSource(counts, FEATURES, NEWICK)
    CountingSource.sizes.clear()
    matrix = source.block(np.arange(24))
    CountingSource.sizes.clear()
    # SGD, not Adam: Adam moves a weight whose gradient is ~0 by a full step either way, so
    # 1e-7 apart in the distances would show as 1e-3 apart in such weights
    settings = TrainSettings(epochs=2, batch_size=6, learning_rate=0.05, optimizer='sgd',
                             random_seed=0, quiet=True, histogram_frequency=0, threads=1)
    rows = np.arange(18), np.arange(18, 24)
    from_tree = train(tiny_model(dropout=0.0), _data(source), *rows, settings)
    # the whole matrix was never built: every block is one batch or the validation samples
    assert CountingSource.sizes and max(CountingSource.sizes) <= 6
    from_matrix = train(tiny_model(dropout=0.0), _data(matrix), *rows, settings)
    # Striped UniFrac of a batch and of all samples agree to ~1e-7
    for name, value in from_tree.state_dict.items():
        torch.testing.assert_close(value, from_matrix.state_dict[name], atol=1e-5, rtol=1e-4)
    assert from_tree.history['train_unifrac_loss'].notna().all()
