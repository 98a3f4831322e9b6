"""The stack (engine/stack.py), the tree member (engine/trees.py), the folds
(engine/folds.py), and fit choosing, on planted signals, the member built to read each."""
import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from q2_aam.engine.folds import FoldError, cross_fit_folds
from q2_aam.engine.stack import (Stack, apply_stack, check_stack_config, fit_stack,
                                 simplex_grid)
from q2_aam.engine.trees import check_trees, fit_trees, tree_outputs

from synthetic import views


# -- folds ---------------------------------------------------------------------------

def test_grouped_folds_keep_groups_whole_and_stay_near_equal():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(16), rng.integers(5, 20, 16)).astype(str)
    labels = rng.integers(0, 3, len(groups))
    folds = cross_fit_folds(len(groups), 5, stratify=labels, groups=groups, seed=1)
    held = np.concatenate([h for _, h in folds])
    assert sorted(held) == list(range(len(groups)))          # each sample held out once
    for fit, h in folds:
        assert not set(groups[fit]) & set(groups[h])
        assert len(set(fit) | set(h)) == len(groups)
    sizes = [len(h) for _, h in folds]
    assert max(sizes) - min(sizes) <= 19                      # at most about one group apart


def test_plain_folds_are_stratified_and_seeded():
    labels = np.array([0] * 10 + [1] * 5)
    folds = cross_fit_folds(15, 5, stratify=labels, seed=0)
    assert [int((labels[h] == 1).sum()) for _, h in folds] == [1] * 5
    again = cross_fit_folds(15, 5, stratify=labels, seed=0)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again))
    other = cross_fit_folds(15, 5, stratify=labels, seed=1)
    assert any((a[1] != b[1]).any() for a, b in zip(folds, other))


def test_too_few_groups_for_the_folds_is_refused():
    with pytest.raises(FoldError, match='5 folds need at least 5 groups; there are 4'):
        cross_fit_folds(20, 5, groups=np.repeat(list('abcd'), 5))
    with pytest.raises(FoldError, match='at least 2 folds'):
        cross_fit_folds(20, 1)


# -- the stack ------------------------------------------------------------------------

def test_the_grid_covers_the_simplex():
    grid = simplex_grid(3, 0.5)
    assert sorted(map(tuple, grid)) == sorted([(0, 0, 1), (0, .5, .5), (0, 1, 0), (.5, 0, .5),
                                               (.5, .5, 0), (1, 0, 0)])


@pytest.mark.parametrize('best', ['transformer', 'linear', 'tree'])
def test_the_best_out_of_fold_member_gets_the_largest_weight(best):
    rng = np.random.default_rng(3)
    n = 200
    truth = rng.normal(size=n)
    oof = {m: truth + rng.normal(0, 0.2 if m == best else 1.5, n)
           for m in ('transformer', 'linear', 'tree')}
    stack = fit_stack(oof, truth, 'regression', folds=5)
    assert max(zip(stack.weights, stack.members))[1] == best
    assert all(w >= 0 for w in stack.weights) and sum(stack.weights) == pytest.approx(1)
    assert stack.out_of_fold['shrinkage'] == 0                 # fit's default: no pull
    # pulled toward equal by 25 / (200 + 25): no weight below that share of a third
    pulled = fit_stack(oof, truth, 'regression', folds=5, shrink_samples=25)
    assert min(pulled.weights) >= 25 / 225 / 3 - 1e-12
    assert pulled.out_of_fold['shrinkage'] == pytest.approx(25 / 225)
    np.testing.assert_allclose(pulled.weights, np.array(stack.weights) * 200 / 225 + 25 / 675)


def test_a_confident_but_weak_member_does_not_carry_the_argmax():
    """Calibration first: a member whose probabilities are extreme but often wrong is
    tempered before it is weighed, so the better member decides."""
    rng = np.random.default_rng(0)
    n = 300
    truth = rng.integers(0, 2, n)
    good = np.where(truth[:, None] == np.arange(2), 0.7, 0.3)          # right, modestly
    right = rng.random(n) < 0.6
    loud_class = np.where(right, truth, 1 - truth)
    loud = np.where(loud_class[:, None] == np.arange(2), 0.999, 0.001)  # 60 % right, sure
    stack = fit_stack({'linear': loud, 'tree': good}, truth, 'classification', folds=5)
    blend = apply_stack(stack, {'linear': loud, 'tree': good})
    assert stack.weights[1] > stack.weights[0]
    assert (blend.argmax(1) == truth).mean() == 1.0
    np.testing.assert_allclose(blend.sum(1), 1.0)


def test_a_candidate_member_outside_the_shipped_three_is_weighed_in_the_order_given():
    """Offline scripts (benchmarks/offline) weigh candidates next to the shipped members
    without patching the module's MEMBERS."""
    rng = np.random.default_rng(3)
    truth = rng.normal(size=80)
    oof = {'knn': truth + rng.normal(0, 0.1, 80), 'tree': truth + rng.normal(0, 2.0, 80),
           'linear': rng.normal(size=80)}
    stack = fit_stack(oof, truth, 'regression', folds=5, grid_step=0.1)
    assert stack.members == ['linear', 'tree', 'knn']
    assert stack.weights[2] == max(stack.weights) and stack.weights[2] >= 0.8
    assert all(abs(w * 10 - round(w * 10)) < 1e-9 for w in stack.weights)   # the 0.1 grid
    np.testing.assert_allclose(apply_stack(stack, oof), sum(
        w * oof[m] for m, w in zip(stack.members, stack.weights)))


def _overconfident_models(rng, n, models=5):
    """Binary truth and ``models`` models that each see it through their own noise and
    are sure of themselves: (n,) and (models, n, 2)."""
    truth = rng.integers(0, 2, n)
    signal = np.where(truth == 1, 1.0, -1.0)
    logits = 4.0 * (signal[None] + rng.normal(0, 1.2, (models, n)))
    p1 = 1 / (1 + np.exp(-logits))
    return truth, np.stack([1 - p1, p1], axis=-1)


def test_an_ensemble_member_is_calibrated_model_by_model_as_its_out_of_fold_outputs_were():
    """Out-of-fold outputs each come from one model, so the calibration fitted on them is
    one model's; applied to the ensemble's (softer) average it over-softens it. Calibrating
    each model, then averaging, predicts new samples with a lower log loss."""
    rng = np.random.default_rng(5)
    truth, oof_models = _overconfident_models(rng, 400)
    one_each = oof_models[rng.integers(0, 5, 400), np.arange(400)]   # (n, 2): one model each
    stack = fit_stack({'transformer': one_each}, truth, 'classification', folds=5)
    assert stack.calibrate_each_model and stack.calibration['transformer']['temperature'] > 2
    new_truth, new_models = _overconfident_models(rng, 2000)
    by_model = apply_stack(stack, {'transformer': new_models})
    averaged = dataclasses.replace(stack, calibrate_each_model=False)
    of_average = apply_stack(averaged, {'transformer': new_models})
    np.testing.assert_allclose(of_average, apply_stack(
        averaged, {'transformer': new_models.mean(0)}))   # the old rule: the mean, calibrated

    def log_loss(p):
        return -np.log(p[np.arange(len(new_truth)), new_truth]).mean()
    assert log_loss(by_model) < log_loss(of_average) - 0.02
    # and by hand: each model calibrated, then the average, then the blend's calibration
    from q2_aam.engine.calibration import apply_class_calibration, softmax
    each = np.mean([softmax(apply_class_calibration(
        np.log(np.maximum(p, 1e-4) / np.maximum(p, 1e-4).sum(1, keepdims=True)),
        stack.calibration['transformer'])) for p in new_models], axis=0)
    again = softmax(apply_class_calibration(np.log(np.maximum(each, 1e-4) / np.maximum(
        each, 1e-4).sum(1, keepdims=True)), stack.blend_calibration))
    np.testing.assert_allclose(by_model, again, rtol=1e-9)


def test_calibrating_model_by_model_is_recorded_and_old_stacks_keep_the_old_rule():
    rng = np.random.default_rng(6)
    truth, models = _overconfident_models(rng, 60)
    stack = fit_stack({'transformer': models[0], 'linear': models[1]}, truth,
                      'classification', folds=5)
    config = stack.to_config()
    assert config['calibrate_each_model'] is True
    check_stack_config(config, 'classification', 2)
    assert Stack.from_config(config, 'classification').calibrate_each_model
    old = {k: v for k, v in config.items() if k != 'calibrate_each_model'}
    assert not Stack.from_config(old, 'classification').calibrate_each_model
    with pytest.raises(ValueError, match='calibrate_each_model'):
        check_stack_config({**config, 'calibrate_each_model': 'yes'}, 'classification', 2)
    # uncalibrated and regression stacks have nothing to calibrate model by model
    assert not fit_stack({'linear': models[1]}, truth, 'classification',
                         calibrate=False).calibrate_each_model
    assert 'calibrate_each_model' not in fit_stack(
        {'linear': rng.normal(size=60)}, rng.normal(size=60), 'regression').to_config()


def test_a_stack_round_trips_through_its_config_and_is_checked():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 50)
    oof = {m: rng.dirichlet(np.ones(3), 50) for m in ('transformer', 'tree')}
    stack = fit_stack(oof, truth, 'classification', folds=5, grouped=True)
    config = stack.to_config()
    check_stack_config(config, 'classification', 3)
    again = Stack.from_config(config, 'classification')
    np.testing.assert_array_equal(apply_stack(again, oof), apply_stack(stack, oof))
    for bad, message in [({**config, 'weights': [0.5, 0.6]}, 'summing to 1'),
                         ({**config, 'weights': [1.5, -0.5]}, 'at least 0'),
                         ({**config, 'members': ['transformer', 'forest']}, 'distinct names'),
                         ({**config, 'blend_calibration': {'temperature': -1, 'bias': [0] * 3}},
                          'positive temperature')]:
        with pytest.raises(ValueError, match=message):
            check_stack_config(bad, 'classification', 3)


# -- the tree member ------------------------------------------------------------------

def _toy(n=80, f=40, seed=0):
    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(rng.poisson(3, (n, f)) * (rng.random((n, f)) < 0.5))
    return counts, [f'ACGT{i % (f - 5)}' for i in range(f)], rng   # five shared sequences


@pytest.mark.parametrize('task', ['regression', 'classification'])
def test_the_tree_member_predicts_as_scikit_learn_does(task):
    from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor
    from q2_aam.engine.trees import MIN_SAMPLES_LEAF, _features
    counts, seqs, rng = _toy()
    y = rng.normal(size=80) if task == 'regression' else rng.integers(0, 3, 80)
    model = fit_trees(counts, seqs, y, task, None if task == 'regression' else 4, seed=2,
                      n_trees=30)
    check_trees(model, 1 if task == 'regression' else 4)
    X = _features(counts, seqs, model.sequences)          # sparse, as fit_trees fits it
    Est = ExtraTreesRegressor if task == 'regression' else ExtraTreesClassifier
    forest = Est(n_estimators=30, min_samples_leaf=MIN_SAMPLES_LEAF, random_state=2).fit(X, y)
    got = tree_outputs(model, counts, seqs)
    if task == 'regression':
        np.testing.assert_allclose(got, forest.predict(X), rtol=1e-12)
    else:                   # class 3 is absent from training: share 0
        np.testing.assert_allclose(got[:, :3], forest.predict_proba(X), atol=1e-12)
        assert (got[:, 3] == 0).all()


def test_the_tree_member_reads_sequences_not_feature_ids():
    counts, seqs, rng = _toy()
    model = fit_trees(counts, seqs, rng.normal(size=80), 'regression', n_trees=10)
    order = rng.permutation(len(seqs))           # other columns, other IDs, same sequences
    np.testing.assert_allclose(tree_outputs(model, counts[:, order], [seqs[i] for i in order]),
                               tree_outputs(model, counts, seqs), rtol=1e-12)


def test_damaged_trees_are_refused():
    counts, seqs, rng = _toy()
    model = fit_trees(counts, seqs, rng.normal(size=80), 'regression', n_trees=3)
    inner = np.flatnonzero(model.left >= 0)[0]
    model.left[inner] = inner                   # a loop
    with pytest.raises(ValueError, match="child is not a later node"):
        check_trees(model, 1)
    model = fit_trees(counts, seqs, rng.normal(size=80), 'regression', n_trees=3)
    model.feature[inner] = 10 ** 6
    with pytest.raises(ValueError, match='splits on a feature outside'):
        check_trees(model, 1)
    model = fit_trees(counts, seqs, rng.normal(size=80), 'regression', n_trees=3)
    model.value[0, 0] = np.nan
    with pytest.raises(ValueError, match='not a finite number'):
        check_trees(model, 1)


# -- fit weighs the member built for each planted signal ----------------------------

TINY_FIT = dict(ensemble_size=2, epochs=15, embedding_dim=16, attention_heads=2, max_asvs=32,
                kmer_size=4, threads=1, device='cpu')


@pytest.mark.parametrize('grouped', [False, True], ids=['plain', 'grouped'])
@pytest.mark.parametrize('kind, best', [('linear', 'linear'), ('interaction', 'tree'),
                                        ('sequence', ('transformer', 'kmers'))])
def test_fit_gives_the_member_that_can_read_the_signal_the_largest_weight(kind, best,
                                                                          grouped, capsys):
    from q2_aam.actions.fit import fit
    table, seqs, column, groups = views(kind)
    model, _ = fit(table=table, sequences=seqs, metadata=column,
                   groups=groups if grouped else None, **TINY_FIT)
    stack = model.config['stack']
    weights = dict(zip(stack['members'], stack['weights']))
    assert max(weights, key=weights.get) in ((best,) if isinstance(best, str) else best), stack
    assert all(w >= 0 for w in weights.values()) and sum(weights.values()) == pytest.approx(1)
    assert stack['out_of_fold']['grouped'] is grouped
    scores = stack['out_of_fold']['scores']
    if kind == 'sequence':
        # a short CPU fit learns what only the sequences carry, far from chance (0.5), as
        # the k-mer member does (the motifs' 5-mers), where the members that know ASVs by
        # identity stay at chance; the two that read sequences carry the blend
        assert scores['transformer']['accuracy'] >= 0.9
        assert scores['kmers']['accuracy'] >= 0.9
        assert scores['linear']['accuracy'] <= 0.6 and scores['tree']['accuracy'] <= 0.6
        assert weights['transformer'] + weights['kmers'] >= 0.8, stack
    if grouped:   # every fold holds out whole subjects
        subject = groups.to_series()
        rows = model.validation
        for f in rows['fold'].unique():
            held = set(subject[rows.index[rows['fold'] == f]])
            assert not held & set(subject[rows.index[rows['fold'] != f]])
