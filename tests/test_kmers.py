"""The k-mer member: a penalised linear model on each sample's abundance-weighted 5-mer
profile; it reads ASVs no training sample had, and its file in a saved model."""
import json

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import RidgeCV

from q2_aam.engine import kmers, linear, savedmodel
from q2_aam.engine.importance import kmer_importance
from q2_aam.engine.savedmodel import ModelFileError, SavedModel

from engine_fixtures import tiny_config, tiny_model
from synthetic import study


def test_kmer_frequencies_count_each_window_and_skip_unknown_bases():
    table = kmers.kmer_frequencies(['AACGT', 'ACNGTA', 'AC'], k=2).toarray()
    code = {'AA': 0, 'AC': 1, 'CG': 6, 'GT': 11, 'TA': 12}
    want = np.zeros(16)
    for kmer in ('AA', 'AC', 'CG', 'GT'):
        want[code[kmer]] = 0.25
    np.testing.assert_array_equal(table[0], want)
    want = np.zeros(16)                      # AC, GT, TA: CN and NG are skipped
    want[[code['AC'], code['GT'], code['TA']]] = 1 / 3
    np.testing.assert_allclose(table[1], want)
    np.testing.assert_array_equal(table[2], np.eye(16)[code['AC']])


def test_regression_is_ridge_on_the_standardised_log_profile():
    rng = np.random.default_rng(0)
    seqs = [''.join(rng.choice(list('ACGT'), 40)) for _ in range(12)]
    counts = rng.poisson(rng.gamma(0.8, 30, size=(50, 12))).astype(float)
    counts[counts.sum(1) == 0, 0] = 3
    y = rng.normal(size=50) + np.log1p(counts[:, 0])
    model = kmers.fit_kmers(sp.csr_matrix(counts), seqs, y, 'regression')
    profile = (counts / counts.sum(1, keepdims=True)) @ kmers.kmer_frequencies(seqs).toarray()
    X = np.log(profile + kmers.PSEUDO_FREQUENCY)
    scale = X.std(0)
    scale[scale == 0] = 1
    ridge = RidgeCV(alphas=linear.RIDGE_ALPHAS).fit((X - X.mean(0)) / scale, y)
    new = rng.poisson(20, size=(7, 12)).astype(float)
    Xn = np.log((new / new.sum(1, keepdims=True)) @ kmers.kmer_frequencies(seqs).toarray()
                + kmers.PSEUDO_FREQUENCY)
    np.testing.assert_allclose(kmers.kmer_outputs(model, sp.csr_matrix(new), seqs),
                               ridge.predict((Xn - X.mean(0)) / scale), rtol=1e-7, atol=1e-7)
    assert model.penalty == pytest.approx(ridge.alpha_)


def test_it_reads_asvs_that_no_training_sample_had():
    """Every sample of the 'sequence' study has ASVs of its own; the class is which motif
    they carry. The linear member knows none of the held-out samples' ASVs (it predicts
    the training shares), the k-mer member reads them through their 5-mers."""
    counts, ids, _, seqs, targets, _ = study('sequence', n=60)
    y = (targets == 'motif-a').astype(int)
    train, test = np.arange(40), np.arange(40, 60)
    counts = sp.csr_matrix(counts.astype(float))
    model = kmers.fit_kmers(counts[train], seqs, y[train], 'classification', 2)
    p = kmers.kmer_outputs(model, counts[test], seqs)
    assert p.shape == (20, 2)
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert (p.argmax(1) == y[test]).mean() == 1.0
    lin = linear.fit_linear(counts[train], seqs, y[train], 'classification', 2)
    shares, known = linear.linear_outputs(lin, counts[test], seqs)
    np.testing.assert_array_equal(known, 0.0)
    assert np.ptp(shares[:, 1]) < 1e-9            # the same answer for every new sample


def test_a_class_the_training_samples_lack_gets_no_probability():
    counts, _, _, seqs, targets, _ = study('sequence', n=20)
    y = (targets == 'motif-a').astype(int)
    model = kmers.fit_kmers(sp.csr_matrix(counts.astype(float)), seqs, y, 'classification', 3)
    p = kmers.kmer_outputs(model, sp.csr_matrix(counts.astype(float)), seqs)
    assert p.shape == (20, 3) and p[:, 2].max() < 1e-15


def test_importance_is_the_spread_of_each_asvs_first_order_contribution():
    """Two samples: ASV 0 is in the first only, so its contribution's sd over the two is
    half its contribution there, which a finite difference of the output gives."""
    rng = np.random.default_rng(1)
    seqs = [''.join(rng.choice(list('ACGT'), 30)) for _ in range(6)]
    counts = rng.poisson(40, size=(30, 6)).astype(float)
    model = kmers.fit_kmers(sp.csr_matrix(counts), seqs, counts[:, 0] / counts.sum(1) * 10
                            + rng.normal(0, 0.1, 30), 'regression')
    two = np.array([[30, 10, 20, 0, 5, 0], [0, 10, 20, 15, 5, 0]], float)
    got = kmer_importance(model, sp.csr_matrix(two), seqs)
    assert got.shape == (6,) and got[5] == 0.0         # in no sample
    rel = two[0] / two[0].sum()

    def output(r):
        profile = r @ kmers.kmer_frequencies(seqs).toarray()
        x = (np.log(profile + kmers.PSEUDO_FREQUENCY) - model.mean) / model.scale
        return float(x @ model.coef[:, 0] + model.intercept[0])
    h = 1e-7
    bumped = rel.copy()
    bumped[0] += h
    contribution = rel[0] * (output(bumped) - output(rel)) / h
    assert got[0] == pytest.approx(abs(contribution) / 2, rel=1e-4)


# -- its file in a saved model ---------------------------------------------------------

def _saved_with_kmers(path, task='classification'):
    counts, _, _, seqs, targets, _ = study('sequence', n=30)
    y = (targets == 'motif-a').astype(int)
    n = 1 if task == 'regression' else 2
    member = kmers.fit_kmers(sp.csr_matrix(counts.astype(float)), seqs,
                             y.astype(float) if n == 1 else y, task, None if n == 1 else 2)
    scale = dict(target_mean=1.0, target_std=2.0) if n == 1 else {}
    stack = {'members': ['transformer', 'kmers'], 'weights': [0.5, 0.5]}
    config = savedmodel.make_config(tiny_config(task, n), 64, 40, labels=None if n == 1
                                    else ['no', 'yes'], **scale, extra={'stack': stack})
    saved = SavedModel(config, tiny_model(task, n).state_dict(), kmers=member)
    savedmodel.save(saved, path)
    return saved


@pytest.mark.parametrize('task', ['regression', 'classification'])
def test_the_kmer_member_round_trips_exactly(tmp_path, task):
    saved = _saved_with_kmers(tmp_path, task)
    loaded = savedmodel.load(tmp_path)
    for name in ('mean', 'scale', 'coef', 'intercept'):
        np.testing.assert_array_equal(getattr(loaded.kmers, name), getattr(saved.kmers, name))
    assert loaded.kmers.k == kmers.KMER_SIZE
    assert loaded.kmers.penalty == saved.kmers.penalty
    assert loaded.tree is None and loaded.linear is None


def _rewrite(path, **arrays):
    with np.load(path / 'kmers.npz') as a:
        content = {k: a[k] for k in a.files}
    content.update(arrays)
    for k in [k for k, v in arrays.items() if v is None]:
        del content[k]
    with open(path / 'kmers.npz', 'wb') as fh:
        np.savez(fh, **content)


def _drop_member(path):
    config = json.loads((path / 'config.json').read_text())
    config['stack'] = {'members': ['transformer'], 'weights': [1.0]}
    (path / 'config.json').write_text(json.dumps(config))


@pytest.mark.parametrize('damage, message', [
    (lambda p: (p / 'kmers.npz').unlink(),
     "config.json's stack weighs a k-mer member, but kmers.npz is missing"),
    (_drop_member, "kmers.npz is present, but config.json's stack has no k-mer member"),
    (lambda p: _rewrite(p, coef=None), 'kmers.npz lacks the arrays coef'),
    (lambda p: _rewrite(p, coef=np.zeros((7, 2))), 'coef has shape (7, 2), not (1024, 2)'),
    (lambda p: _rewrite(p, intercept=np.array([np.inf, 0.0])),
     'intercept holds a value that is not a finite number'),
    (lambda p: _rewrite(p, scale=np.zeros(1024)), 'scale must be above 0'),
    (lambda p: _rewrite(p, k=np.int64(12)), 'k must be 1 to 8, not 12'),
    (lambda p: (p / 'kmers.npz').write_bytes(b'PK\x03\x04 not really'),
     'kmers.npz cannot be read as arrays'),
])
def test_a_damaged_kmer_member_is_refused_by_name(tmp_path, damage, message):
    _saved_with_kmers(tmp_path)
    damage(tmp_path)
    with pytest.raises(ModelFileError) as e:
        savedmodel.load(tmp_path)
    assert message in str(e.value)
