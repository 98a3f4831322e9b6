"""The linear half: the ridge / logistic model on log relative abundance, keyed by sequence,
and its file in a saved model."""
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression, RidgeCV

from q2_aam.engine import savedmodel, linear
from q2_aam.engine.savedmodel import ModelFileError, SavedModel

from engine_fixtures import tiny_config, tiny_model

SEQS = ['AAAC', 'AAAG', 'AACC', 'AAGG', 'ACGT', 'AGGA', 'CCCA', 'GGGT']


def _counts(n=40, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(0.6, 40, size=(n, len(SEQS)))).astype(float)
    counts[counts.sum(1) == 0, 0] = 5
    return counts


def _target(counts):
    rel = counts / counts.sum(1, keepdims=True)
    return 3.0 * np.log(rel[:, 0] + 1e-5) - 2.0 * np.log(rel[:, 3] + 1e-5) + 1.5


def test_regression_is_ridge_on_log_relative_abundance():
    """Absent ASVs are 0 in the sparse matrix (log(a / 1e-5 + 1)); with an unpenalised
    intercept that is the same ridge fit as on log(a + 1e-5) itself."""
    counts = _counts()
    y = _target(counts)
    model = linear.fit_linear(sp.csr_matrix(counts), SEQS, y, 'regression')
    dense = np.log(counts / counts.sum(1, keepdims=True) + linear.PSEUDO_ABUNDANCE)
    ridge = RidgeCV(alphas=linear.RIDGE_ALPHAS).fit(dense, y)
    new = _counts(10, seed=1)
    got, known = linear.linear_outputs(model, sp.csr_matrix(new), SEQS)
    want = ridge.predict(np.log(new / new.sum(1, keepdims=True) + linear.PSEUDO_ABUNDANCE))
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-7)
    assert model.penalty == pytest.approx(ridge.alpha_)
    np.testing.assert_allclose(known, 1.0)
    assert np.corrcoef(got, _target(new))[0, 1] > 0.9     # it learnt the signal


def test_features_are_keyed_by_sequence_not_by_column():
    """Another table: columns shuffled, one ASV under two IDs, one ASV never seen."""
    counts = _counts()
    model = linear.fit_linear(counts, SEQS, _target(counts), 'regression')
    new = _counts(6, seed=2)
    expected, _ = linear.linear_outputs(model, new, SEQS)
    order = np.array([3, 1, 7, 0, 5, 2, 6, 4])
    shuffled = new[:, order]
    # ASV 3's reads split over two feature IDs with the same sequence
    split = np.hstack([shuffled, shuffled[:, :1] * 0])
    split[:, -1] = np.floor(shuffled[:, 0] / 2)
    split[:, 0] -= split[:, -1]
    seqs = [SEQS[i] for i in order] + [SEQS[3]]
    got, _ = linear.linear_outputs(model, split, seqs)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # an unknown ASV dilutes the others' relative abundance and counts as not known
    extra = np.hstack([new, new.sum(1, keepdims=True)])
    diluted, known = linear.linear_outputs(model, extra, SEQS + ['TTTT'])
    np.testing.assert_allclose(known, 0.5)
    assert not np.allclose(diluted, expected)
    # a sample of unknown ASVs only: the intercept, nothing is NaN
    alone, known = linear.linear_outputs(model, np.array([[7.0]]), ['TTTT'])
    assert known[0] == 0 and alone[0] == pytest.approx(model.intercept[0])


def test_classifier_probabilities_match_sklearn_and_cover_every_class():
    counts = _counts(60)
    y = (_target(counts) > np.median(_target(counts))).astype(int)
    two = linear.fit_linear(counts, SEQS, y, 'classification', 2)
    p, _ = linear.linear_outputs(two, counts, SEQS)
    X = linear.log_abundance(counts, np.arange(len(SEQS)), len(SEQS))
    sk = LogisticRegression(C=two.penalty, max_iter=linear.LOGISTIC_MAX_ITER).fit(X, y)
    # scikit-learn promises the penalised fit's optimum at the C it chose, to its solver's
    # tolerance, not the same coefficients from LogisticRegressionCV's refit (1.4+ starts
    # that refit elsewhere): compare the objective, and the probabilities loosely
    def objective(prob, coef):
        return two.penalty * -np.log(prob[np.arange(len(y)), y]).sum() + 0.5 * (coef ** 2).sum()
    ours = objective(p, two.coef[:, 1] - two.coef[:, 0])
    theirs = objective(sk.predict_proba(X), sk.coef_.ravel())
    assert abs(ours - theirs) <= 5e-3 * theirs      # 1.5.2: 0.18 % apart
    np.testing.assert_allclose(p, sk.predict_proba(X), atol=0.02)
    assert p.shape == (60, 2) and (p.argmax(1) == y).mean() > 0.8
    # three classes, one of them absent from the training samples: probability ~0, not NaN
    three = linear.fit_linear(counts, SEQS, np.where(y == 1, 2, 0), 'classification', 3)
    p3, _ = linear.linear_outputs(three, counts, SEQS)
    np.testing.assert_allclose(p3.sum(1), 1.0)
    assert p3[:, 1].max() < 1e-15 and np.isfinite(p3).all()
    np.testing.assert_allclose(p3[:, [0, 2]], p, atol=1e-4)


def test_a_class_of_one_sample_falls_back_to_a_fixed_penalty():
    counts = _counts(20)
    y = np.zeros(20, int)
    y[10:] = 1
    y[0] = 2                                   # one sample: no cross-validation possible
    model = linear.fit_linear(counts, SEQS, y, 'classification', 3)
    assert model.penalty == 1.0
    p, _ = linear.linear_outputs(model, counts, SEQS)
    np.testing.assert_allclose(p.sum(1), 1.0)


def _saved_with_linear(tmp_path, task='regression'):
    counts = _counts()
    y = _target(counts) if task == 'regression' else (_target(counts) > 0).astype(int)
    half = linear.fit_linear(counts, SEQS, y, task, None if task == 'regression' else 2)
    n = 1 if task == 'regression' else 2
    scale = dict(target_mean=1.0, target_std=2.0) if task == 'regression' else {}
    config = savedmodel.make_config(tiny_config(task, n), 64, 40, labels=None if n == 1
                                    else ['no', 'yes'], **scale,
                                    extra={'linear': savedmodel.linear_config(half, 0.75)})
    saved = SavedModel(config, tiny_model(task, n).state_dict(), linear=half)
    savedmodel.save(saved, tmp_path)
    return saved


@pytest.mark.parametrize('task', ['regression', 'classification'])
def test_linear_half_round_trips_exactly(tmp_path, task):
    saved = _saved_with_linear(tmp_path, task)
    table = pd.read_csv(tmp_path / 'linear.tsv', sep='\t', index_col=0)
    assert table.index.name == 'sequence' and list(table.index) == SEQS
    assert list(table.columns) == (['coefficient'] if task == 'regression' else ['no', 'yes'])
    loaded = savedmodel.load(tmp_path)
    assert loaded.linear.sequences == saved.linear.sequences
    np.testing.assert_array_equal(loaded.linear.coef, saved.linear.coef)
    np.testing.assert_array_equal(loaded.linear.intercept, saved.linear.intercept)
    assert loaded.config['linear']['weight'] == 0.75
    assert loaded.config['linear']['features'] == len(SEQS)


def _edit_config(path, **linear_fields):
    config = json.loads((path / 'config.json').read_text())
    config['linear'] = None if linear_fields.get('drop') else {**config['linear'],
                                                               **linear_fields}
    (path / 'config.json').write_text(json.dumps(config))


@pytest.mark.parametrize('damage, message', [
    (lambda p: (p / 'linear.tsv').unlink(), 'describes a linear half, but linear.tsv is missing'),
    (lambda p: _edit_config(p, drop=True), 'linear.tsv is present, but config.json describes '
                                           'no linear half'),
    (lambda p: _edit_config(p, weight=1.5), 'linear weight must be between 0 and 1, not 1.5'),
    (lambda p: _edit_config(p, intercept=['x']), 'linear needs a number "weight"'),
    (lambda p: _edit_config(p, features=3), 'holds 8 sequences and config.json 1 intercepts, '
                                            'but config.json says 3 sequences'),
    (lambda p: (p / 'linear.tsv').write_text('sequence\tcoefficient\nAAAC\tinf\n'),
     'holds 1 sequences'),
    (lambda p: (p / 'linear.tsv').write_text(
        'sequence\tcoefficient\n' + ''.join(f'{s}\t1\n' for s in SEQS[:7]) + 'AAAC\t1\n'),
     'every row needs its own sequence'),
    (lambda p: (p / 'linear.tsv').write_text(
        'sequence\tcoefficient\n' + ''.join(f'{s}\t1\n' for s in SEQS[:7]) + 'TTTT\tnan\n'),
     'every coefficient must be a finite number'),
    (lambda p: (p / 'linear.tsv').write_text(
        'sequence\tweight\n' + ''.join(f'{s}\t1\n' for s in SEQS)),
     'linear.tsv must have the columns sequence, coefficient; found sequence, weight'),
])
def test_a_damaged_linear_half_is_refused_by_name(tmp_path, damage, message):
    _saved_with_linear(tmp_path)
    damage(tmp_path)
    with pytest.raises(ModelFileError) as e:
        savedmodel.load(tmp_path)
    assert message in str(e.value)
    with pytest.raises(ModelFileError):
        savedmodel.validate(tmp_path, check_weights_too=False)


# -- the penalty of repeated subjects: chosen on folds that keep each subject whole --------

def _subjects(n_subjects=12, per=4, seed=0):
    """Each subject carries an ASV of its own and a target of its own that nothing shared
    predicts: a model can only memorise subjects, never predict a new one."""
    rng = np.random.default_rng(seed)
    seqs = SEQS + [f'ACGT{"A" * (i + 1)}' for i in range(n_subjects)]
    counts = np.zeros((n_subjects * per, len(seqs)))
    counts[:, :len(SEQS)] = rng.poisson(30, size=(n_subjects * per, len(SEQS)))
    groups = np.repeat([f'subject-{i}' for i in range(n_subjects)], per)
    for i in range(n_subjects):
        counts[i * per:(i + 1) * per, len(SEQS) + i] = 200
    y = np.repeat(rng.normal(0, 3, n_subjects), per) + rng.normal(0, 0.1, n_subjects * per)
    return counts, seqs, y, groups


def test_penalty_folds_keep_subjects_whole_and_every_class_in_training():
    counts, seqs, y, groups = _subjects()
    folds = linear.penalty_folds(y, 'regression', groups)
    assert len(folds) == linear.PENALTY_FOLDS
    for fit_rows, held in folds:
        assert not set(groups[fit_rows]) & set(groups[held])
    assert linear.penalty_folds(y, 'regression', None) is None
    # a class held by one subject: the fold that holds it out cannot score, and is dropped
    classes = (np.arange(len(y)) >= 4).astype(int)          # class 0: subject-0 alone
    kept = linear.penalty_folds(classes, 'classification', groups)
    assert len(kept) == linear.PENALTY_FOLDS - 1
    assert all(set(classes[a]) == {0, 1} for a, _ in kept)


def test_with_groups_the_penalty_is_not_chosen_to_memorise_subjects():
    """Without groups, folds that split a subject reward the smallest penalty (its own ASV
    gives its target away); with them, held-out subjects show that nothing generalises and
    the penalty is the largest tried (a ridge alpha 10,000 times larger)."""
    counts, seqs, y, groups = _subjects()
    split = linear.fit_linear(sp.csr_matrix(counts), seqs, y, 'regression')
    whole = linear.fit_linear(sp.csr_matrix(counts), seqs, y, 'regression', groups=groups)
    assert split.penalty < 10
    assert whole.penalty == pytest.approx(linear.RIDGE_ALPHAS[-1])
    labels = (y > np.median(y)).astype(int)
    split = linear.fit_linear(sp.csr_matrix(counts), seqs, labels, 'classification', 2)
    whole = linear.fit_linear(sp.csr_matrix(counts), seqs, labels, 'classification', 2,
                              groups=groups)
    assert whole.penalty < split.penalty      # C: smaller is the stronger penalty
