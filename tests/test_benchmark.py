"""The accuracy benchmark's splits (whole groups held out, fresh draws really fresh) and its
per-sample report (which classes a row loses)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'accuracy.py'


@pytest.fixture(scope='module')
def accuracy():
    spec = importlib.util.spec_from_file_location('accuracy_benchmark', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grouped(accuracy, n_groups=16, per_group=4):
    groups = np.repeat([f'mouse {g}' for g in range(n_groups)], per_group)
    y = np.arange(len(groups), dtype=float)
    return accuracy.Dataset('toy', 'age', 'regression', None, None, None, [], None, y,
                            groups=groups)


def stratified(accuracy):
    y = np.repeat([0, 1, 2, 3], 9)
    return accuracy.Dataset('toy', 'site', 'classification', None, None, None, [], None, y,
                            classes=['a', 'b', 'c', 'd'])


@pytest.mark.parametrize('split_seed', [0, 1, 2])
def test_grouped_folds_hold_out_every_group_once_and_whole(accuracy, split_seed):
    ds = grouped(accuracy)
    folds = accuracy.make_splits(ds, 5, split_seed)
    assert len(folds) == 5
    held_out = np.concatenate([te for _, te in folds])
    np.testing.assert_array_equal(np.sort(held_out), np.arange(len(ds.y)))
    for train, test in folds:
        assert not set(ds.groups[train]) & set(ds.groups[test])
        assert len(train) + len(test) == len(ds.y)
        assert len(set(ds.groups[test])) in (3, 4)          # 16 groups into 5 folds


def test_split_seed_zero_is_group_kfold_and_other_seeds_differ(accuracy):
    from sklearn.model_selection import GroupKFold
    ds = grouped(accuracy)
    rows = np.arange(len(ds.y))
    standard = [set(ds.groups[te]) for _, te in accuracy.make_splits(ds, 5, 0)]
    expected = [set(ds.groups[te]) for _, te in GroupKFold(5).split(rows, ds.y, ds.groups)]
    assert standard == expected
    fresh = [set(ds.groups[te]) for _, te in accuracy.make_splits(ds, 5, 1)]
    assert fresh != standard
    assert fresh == [set(ds.groups[te]) for _, te in accuracy.make_splits(ds, 5, 1)]
    assert fresh != [set(ds.groups[te]) for _, te in accuracy.make_splits(ds, 5, 2)]


def test_moving_pictures_by_day_holds_out_whole_person_days(accuracy):
    """The grouped moving-pictures row: no held-out sample shares its person-day with a
    training sample, so no palm's other-hand twin of that day is learned from."""
    if not (accuracy.DATA / 'moving-pictures' / 'table.biom').exists():
        pytest.skip(f'{accuracy.DATA} has no moving-pictures data on this machine')
    ds = accuracy.load_dataset('moving-pictures-by-day')
    stratified_ds = accuracy.load_dataset('moving-pictures')
    np.testing.assert_array_equal(ds.sample_ids, stratified_ds.sample_ids)
    assert stratified_ds.groups is None
    assert len(ds.y) == 34 and len(set(ds.groups)) == 9       # 2 subjects, 4-5 days each
    assert 'subject-2 / 140' in set(ds.groups)          # subject / days-since-experiment-start
    for split_seed in (0, 1):
        folds = accuracy.make_splits(ds, 5, split_seed)
        held_out = np.concatenate([te for _, te in folds])
        np.testing.assert_array_equal(np.sort(held_out), np.arange(34))
        for train, test in folds:
            assert not set(ds.groups[train]) & set(ds.groups[test])

    def palms_with_twin_in_training(splits):
        """Held-out palm samples whose other hand, same person and day, is a training sample."""
        palm = {c: i for i, c in enumerate(ds.classes) if 'palm' in c}
        count = total = 0
        for train, test in splits:
            trained = {(ds.groups[r], ds.y[r]) for r in train}
            for r in test:
                if ds.y[r] in palm.values():
                    other = next(i for i in palm.values() if i != ds.y[r])
                    total += 1
                    count += (ds.groups[r], other) in trained
        return count, total

    assert palms_with_twin_in_training(accuracy.make_splits(ds, 5, 0)) == (0, 17)
    # the stratified row's splits (same samples, same person-day labels): most held-out palms
    # have their twin in training
    count, total = palms_with_twin_in_training(accuracy.make_splits(stratified_ds, 5, 0))
    assert (count, total) == (10, 16)


def test_stratified_splits_keep_class_shares_and_fresh_seeds_draw_new_test_sets(accuracy):
    ds = stratified(accuracy)
    standard = accuracy.make_splits(ds, 5, 0)
    fresh = accuracy.make_splits(ds, 5, 1)
    for train, test in standard + fresh:
        assert not set(train) & set(test)
        np.testing.assert_array_equal(np.bincount(ds.y[test], minlength=4), [2, 2, 2, 2])
    assert {tuple(te) for _, te in standard}.isdisjoint({tuple(te) for _, te in fresh})


def test_prediction_rows_and_confusion_name_each_sample_and_class(accuracy):
    ds = stratified(accuracy)
    ds.sample_ids = np.array([f's{i}' for i in range(len(ds.y))], dtype=object)
    test = np.array([0, 9, 18, 27])                       # one sample of each class
    proba = np.array([[.7, .1, .1, .1],                   # a -> a
                      [.1, .2, .6, .1],                   # b -> c
                      [.1, .5, .3, .1],                   # c -> b
                      [.0, .0, .0, 1.]])                  # d -> d
    rows = accuracy.prediction_rows(ds, 'm', 3, test, proba)
    assert [r['sample_id'] for r in rows] == ['s0', 's9', 's18', 's27']
    assert [(r['truth'], r['prediction']) for r in rows] == [
        ('a', 'a'), ('b', 'c'), ('c', 'b'), ('d', 'd')]
    assert rows[1]['p(c)'] == pytest.approx(.6) and rows[1]['fold'] == 3
    text = accuracy.confusion_text(ds, rows + rows)       # two splits pooled
    lines = text.splitlines()
    assert lines[2].split() == ['a', '2', '0', '0', '0', '2/2', 'right']
    assert lines[3].split() == ['b', '0', '0', '2', '0', '0/2', 'right']
    assert lines[4].split() == ['c', '0', '2', '0', '0', '0/2', 'right']


def test_write_predictions_appends_and_refuses_other_columns(accuracy, tmp_path):
    cls = stratified(accuracy)
    cls.sample_ids = np.array([f's{i}' for i in range(len(cls.y))], dtype=object)
    rows = [{'per_sample': accuracy.prediction_rows(cls, 'rf', 0, np.array([0, 9]),
                                                    np.eye(4)[[0, 2]])}]
    path = tmp_path / 'p.tsv'
    accuracy.write_predictions(path, rows, split_seed=2)
    accuracy.write_predictions(path, rows, split_seed=3)
    lines = path.read_text().splitlines()
    assert lines[0].split('\t')[:7] == ['split_seed', 'dataset', 'model', 'fold', 'sample_id',
                                        'truth', 'prediction']
    assert len(lines) == 5
    assert [l.split('\t')[0] for l in lines[1:]] == ['2', '2', '3', '3']
    assert lines[2].split('\t')[5:7] == ['b', 'c']
    reg = grouped(accuracy)
    reg.sample_ids = np.array([f'r{i}' for i in range(len(reg.y))], dtype=object)
    other = [{'per_sample': accuracy.prediction_rows(reg, 'rf', 0, np.array([1]), [2.5])}]
    accuracy.write_predictions(tmp_path / 'r.tsv', other, 0)
    assert (tmp_path / 'r.tsv').read_text().splitlines()[1].split('\t')[4:] == ['r1', '1.0', '2.5']
    with pytest.raises(SystemExit, match='one file per data set'):
        accuracy.write_predictions(path, other, 0)
    assert len(path.read_text().splitlines()) == 5              # nothing appended


@pytest.fixture(scope='module')
def pooled():
    path = SCRIPT.parent / 'pooled.py'
    spec = importlib.util.spec_from_file_location('pooled_benchmark', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_split(accuracy, path, model, seed, fold, proba, test=(0, 9, 18, 27)):
    ds = stratified(accuracy)
    ds.sample_ids = np.array([f's{i}' for i in range(len(ds.y))], dtype=object)
    rows = [{'per_sample': accuracy.prediction_rows(ds, model, fold, np.array(test),
                                                    np.asarray(proba, dtype=float))}]
    accuracy.write_predictions(path, rows, split_seed=seed)


def test_pooled_scores_pair_models_split_by_split(accuracy, pooled, tmp_path):
    from sklearn.metrics import roc_auc_score
    right, one_wrong = np.eye(4), np.eye(4)[[0, 2, 2, 3]] * .7 + .075   # b called c
    files = [tmp_path / 'rf.tsv', tmp_path / 'aam.tsv']
    for seed in (1, 2):                     # rf: all right on seed 1, one wrong on seed 2
        write_split(accuracy, files[0], 'rf', seed, 0, right if seed == 1 else one_wrong)
        write_split(accuracy, files[1], 'aam', seed, 0, one_wrong)    # aam: one wrong twice
    write_split(accuracy, files[1], 'aam', 3, 0, right)               # a split rf lacks
    df = pooled.load(files)
    scores = pooled.split_scores(df).set_index(['model', 'split_seed'])
    assert scores.loc[('rf', 1), 'accuracy'] == 1.0
    assert scores.loc[('aam', 2), 'accuracy'] == 0.75
    assert scores.loc[('aam', 2), 'auroc'] == pytest.approx(
        roc_auc_score([0, 1, 2, 3], one_wrong, multi_class='ovr', average='macro'))
    log_loss = -np.log([.775, .075, .775, .775]).mean()
    assert scores.loc[('aam', 2), 'log_loss'] == pytest.approx(log_loss)
    assert scores.loc[('rf', 1), 'log_loss'] == 0.0
    table = pooled.paired_table(pooled.split_scores(df), 'rf')
    row = next(l for l in table.splitlines() if l.startswith('| aam'))
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[1] == '2'                  # seed 3 has no rf to pair with
    assert cells[2].startswith('-0.125 (-0.250, +0.000)')
    assert cells[3] == '0 / 1 / 1'
    # a higher log loss is worse: aam is behind on seed 1, level on seed 2
    assert cells[6].startswith(f'+{log_loss / 2:.3f}') and cells[7] == '0 / 1 / 1'
    assert pooled.paired_table(pooled.split_scores(df), 'ridge').startswith(
        '(toy: no ridge predictions in these files, nothing to pair with; models: aam, rf)')
    common = pooled.common_splits(df)
    assert sorted(set(common.split_seed)) == [1, 2] and len(common) == 16
    summary = pooled.summary_table(pooled.split_scores(df), df)
    assert '| aam | 3/3 | 1/3 | 3/3 | 3/3 |' in summary     # class b lost on seeds 1 and 2
    assert '| rf | 2/2 | 1/2 | 2/2 | 2/2 |' in summary
    assert '| rf | 2 | 8 | 0.875 ± 0.177 |' in summary


def test_pooled_log_loss_floors_a_zero_vote(accuracy, pooled, tmp_path):
    path = tmp_path / 'rf.tsv'
    write_split(accuracy, path, 'rf', 1, 0, np.eye(4)[[1, 1, 2, 3]])    # a: no vote at all
    s = pooled.split_scores(pooled.load([path])).iloc[0]
    assert s.log_loss == pytest.approx(-np.log(pooled.LOG_LOSS_FLOOR) / 4)


def test_pooled_regression_and_duplicate_predictions(accuracy, pooled, tmp_path):
    from sklearn.metrics import r2_score
    reg = grouped(accuracy)
    reg.sample_ids = np.array([f'r{i}' for i in range(len(reg.y))], dtype=object)
    test, pred = np.array([0, 5, 10, 15]), np.array([1.0, 4.0, 11.0, 15.5])
    path = tmp_path / 'sa.tsv'
    accuracy.write_predictions(path, [{'per_sample': accuracy.prediction_rows(
        reg, 'aam', 4, test, pred)}], split_seed=3)
    s = pooled.split_scores(pooled.load([path])).iloc[0]
    assert (s.model, s.split_seed, s.fold, s.n) == ('aam', 3, 4, 4)
    assert s.r2 == pytest.approx(r2_score(reg.y[test], pred))
    assert s.mae == pytest.approx(np.abs(reg.y[test] - pred).mean())
    with pytest.raises(SystemExit, match=r"4 test samples are predicted more than once .*'r0'"):
        pooled.load([path, path])


def test_pooled_merge_scores_the_calls_of_merged_classes_as_one(accuracy, pooled, tmp_path):
    from sklearn.metrics import roc_auc_score
    proba = np.array([[.4, .3, .3, 0], [0, .2, .8, 0], [0, .1, .9, 0], [0, 0, 0, 1.]])
    path = tmp_path / 'aam.tsv'
    write_split(accuracy, path, 'aam', 1, 0, proba)       # truths a, b, c, d; b called c
    df = pooled.load([path])
    assert pooled.split_scores(df).iloc[0].accuracy == 0.75
    merged = pooled.merge_classes(df, 'bc = b, c')
    assert list(merged.truth) == ['a', 'bc', 'bc', 'd']
    assert list(merged.prediction) == ['a', 'bc', 'bc', 'd']
    assert [c for c in merged.columns if c.startswith('p(')] == ['p(a)', 'p(d)', 'p(bc)']
    np.testing.assert_allclose(merged['p(bc)'], [.6, 1., 1., 0.])
    s = pooled.split_scores(merged).iloc[0]
    # a is called a although b and c together have 0.6: the call counts, not the summed argmax
    assert s.accuracy == 1.0
    assert s.auroc == pytest.approx(roc_auc_score(
        [0, 2, 2, 1], np.c_[proba[:, 0], proba[:, 3], proba[:, 1] + proba[:, 2]],
        multi_class='ovr', average='macro'))
    assert s.log_loss == pytest.approx(-np.log([.4, 1., 1., 1.]).mean())
    text = pooled.main([str(path), '--merge', 'bc=b,c', '--reference', 'aam'])
    assert '| model | a | bc | d |' in text and '| aam | 1/1 | 2/2 | 1/1 |' in text
    with pytest.raises(SystemExit, match='write the new class, "=", and two or more classes'):
        pooled.merge_classes(df, 'b,c')
    with pytest.raises(SystemExit, match=r"1 of the classes to merge are not a true class in "
                                         r"these predictions: \['x'\]; the classes are "
                                         r"\['a', 'b', 'c', 'd'\]"):
        pooled.merge_classes(df, 'bx=b,x')


def test_rf_relative_sees_composition_only_and_rf_sees_depth(accuracy):
    import scipy.sparse
    composition = np.array([5., 3., 2., 0.])
    depth = np.array([1, 10, 1, 10, 1, 10, 1, 10, 2, 20])             # class = deep or not
    y = (depth >= 10).astype(np.int64)
    ds = accuracy.Dataset('toy', 'site', 'classification',
                          scipy.sparse.csr_matrix(depth[:, None] * composition),
                          None, np.array(['d', 'c', 'b', 'a'], dtype=object), [], None, y,
                          classes=['shallow', 'deep'])
    train, test = np.arange(8), np.array([8, 9])       # depths 2 and 20: never seen
    raw, _ = accuracy.run_rf(accuracy.VARIANTS['rf'], ds, train, test, fold=0)
    rel, _ = accuracy.run_rf(accuracy.VARIANTS['rf-relative'], ds, train, test, fold=0)
    assert raw.argmax(1).tolist() == [0, 1]
    # identical compositions: one answer for both, only the bootstrap's class shares
    np.testing.assert_array_equal(rel[0], rel[1])
    assert rel.max() < 0.7


@pytest.fixture(scope='module')
def palm_signal():
    spec = importlib.util.spec_from_file_location('palm_signal_benchmark',
                                                  SCRIPT.parent / 'palm_signal.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rarefy_counts_to_one_depth_without_inventing_reads(accuracy):
    counts = np.array([[5, 0, 3, 2], [1, 1, 1, 7], [0, 0, 10, 0]])
    even = accuracy.rarefy_counts(counts, 6, seed=0)
    assert (even.sum(1) == 6).all() and (even <= counts).all()
    np.testing.assert_array_equal(even[2], [0, 0, 6, 0])
    np.testing.assert_array_equal(even, accuracy.rarefy_counts(counts, 6, seed=0))
    with pytest.raises(ValueError, match='sample row 0 has 10 reads, fewer than 11'):
        accuracy.rarefy_counts(counts, 11, seed=0)


def test_speed_rarefy_drops_shallower_samples_and_draws_like_accuracy(accuracy):
    spec = importlib.util.spec_from_file_location('speed_benchmark', SCRIPT.parent / 'speed.py')
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    counts = np.array([[5, 0, 3, 2], [1, 1, 1, 2], [0, 0, 10, 0]])
    even, keep = speed.rarefy(counts, 6, seed=0)
    assert keep.tolist() == [True, False, True]                 # 5 reads < 6: left out
    np.testing.assert_array_equal(even, accuracy.rarefy_counts(counts[keep], 6, seed=0))


def test_rarefied_moving_pictures_keeps_every_sample_at_one_depth(accuracy):
    if not (accuracy.DATA / 'moving-pictures' / 'table.biom').exists():
        pytest.skip(f'{accuracy.DATA} has no moving-pictures data on this machine')
    full = accuracy.load_dataset('moving-pictures-by-day')
    even = accuracy.load_dataset('moving-pictures-by-day-rarefied')
    assert even.name == 'moving-pictures-by-day-rarefied'
    np.testing.assert_array_equal(even.sample_ids, full.sample_ids)
    np.testing.assert_array_equal(even.groups, full.groups)
    np.testing.assert_array_equal(even.y, full.y)
    depth = np.asarray(even.counts.sum(1)).ravel()
    assert (depth == np.asarray(full.counts.sum(1)).min()).all()
    assert even.counts.shape[1] == len(even.feature_ids) == len(even.sequences)
    assert even.counts.shape[1] < full.counts.shape[1]
    assert (np.asarray(even.counts.sum(0)).ravel() > 0).all()
    kept = {f: q for f, q in zip(full.feature_ids, full.sequences)}
    assert all(kept[f] == q for f, q in zip(even.feature_ids, even.sequences))


def test_palm_signal_holding_out_groups_can_score_below_a_coin(palm_signal):
    from sklearn.dummy import DummyClassifier
    from sklearn.neighbors import KNeighborsClassifier
    y = np.array([0, 1, 0, 1, 0, 1])
    groups = np.array(['d1', 'd1', 'd2', 'd2', 'd3', 'd3'])
    label = y[:, None].astype(float)
    assert palm_signal.leave_group_out_accuracy(
        label, y, groups, lambda: KNeighborsClassifier(1)) == 1.0
    # each sample alone: the training part always has more of the other label
    assert palm_signal.leave_group_out_accuracy(
        label, y, np.arange(6), lambda: DummyClassifier(strategy='most_frequent')) == 0.0


def test_palm_signal_finds_other_hands_and_whether_they_were_trained_on(palm_signal):
    import pandas as pd
    ids = np.array(['L', 'R', 'G', 'L2'], dtype=object)
    groups = np.array(['p1', 'p1', 'p1', 'p2'], dtype=object)
    twin = palm_signal.other_hand(ids, groups, rows=[0, 1, 3])       # G is not a palm
    assert twin == {'L': 'R', 'R': 'L'}
    pred = pd.DataFrame({'model': ['rf'] * 3, 'split_seed': [0] * 3, 'fold': [0, 0, 1],
                         'sample_id': ['L', 'R', 'L'], 'truth': ['left', 'right', 'left'],
                         'prediction': ['left', 'left', 'right']})
    effect = palm_signal.twin_effect(pred, twin).set_index('twin_in_training')
    assert effect.loc[False, ['palms', 'right']].tolist() == [2, 1]  # fold 0 tests both
    assert effect.loc[True, ['palms', 'right']].tolist() == [1, 0]   # fold 1 trains on R
    with pytest.raises(SystemExit, match='no palm with an other-hand twin'):
        palm_signal.twin_effect(pred, {'X': 'Y'})


def test_palm_signal_lists_palms_that_look_like_another_site(palm_signal):
    counts = np.array([[10, 0, 0, 5], [0, 8, 8, 0], [0, 9, 7, 0], [20, 0, 1, 10.]])
    is_palm = np.array([True, True, True, False])
    found = palm_signal.lookalikes(counts, [0, 1, 2], is_palm)
    assert [(r, n) for r, n, _, _ in found] == [(0, 3)]              # 1 and 2 are palms
    r, n, d, d_palm = found[0]
    assert d < .05 and d_palm == 1.0


def test_palm_signal_on_moving_pictures(palm_signal):
    if not (palm_signal.load_dataset.__globals__['DATA'] / 'moving-pictures').exists():
        pytest.skip('no moving-pictures data on this machine')
    text = palm_signal.main(['--predictions', 'none.tsv'])
    rows = {tuple(c.strip() for c in l.strip('|').split('|')[:2]): float(
        l.split('|')[3].split()[0]) for l in text.splitlines() if l.startswith('| ') and
        ('as sequenced' in l or 'subsampled' in l or 'depth alone' in l)}
    depth = rows[('depth alone', 'random forest, log total reads')]
    assert depth > max(v for k, v in rows.items() if k[0].startswith('subsampled'))
    found = [l.split('|')[1].split()[0] for l in text.splitlines() if '(right palm)' in l or
             '(left palm)' in l]
    assert sorted(found) == ['L2S240', 'L3S242', 'L3S378']
    assert text.endswith('(No predictions file at none.tsv: the table of palm calls by whether '
                         'the other hand was in training is left out.)')


def toy_amplicons(accuracy, n=24, features=30, seed=0):
    """A small classification data set with real-looking inputs, to run q2-aam on."""
    import scipy.sparse
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    counts = rng.poisson(3.0, size=(n, features)) * (rng.random((n, features)) < 0.5)
    counts[:, 0] += 1                                    # no empty sample
    seqs = [''.join(rng.choice(list('ACGT'), 60)) for _ in range(features)]
    return accuracy.Dataset('toy', 'site', 'classification',
                            scipy.sparse.csr_matrix(counts.astype(np.float64)),
                            np.array([f's{i}' for i in range(n)], dtype=object),
                            np.array([f'f{i}' for i in range(features)], dtype=object), seqs,
                            None, y, classes=['a', 'b', 'c', 'd'])


def test_score_binary_and_a_fold_holding_one_class(accuracy):
    from sklearn.metrics import roc_auc_score
    truth = np.array([0, 1, 1, 0])
    proba = np.array([[.9, .1], [.2, .8], [.4, .6], [.3, .7]])
    s = accuracy.score(truth, proba, ['a', 'b'])
    assert s['accuracy'] == 0.75 and s['auroc'] == roc_auc_score(truth, proba[:, 1]) == 0.75
    one = accuracy.score(np.array([0, 0]), proba[:2], ['a', 'b'])   # a grouped fold
    assert one['accuracy'] == 0.5 and np.isnan(one['auroc'])
    three = np.array([[.7, .2, .1], [.1, .8, .1], [.2, .2, .6], [.5, .4, .1]])
    assert accuracy.score(np.array([0, 1, 2, 0]), three, list('abc'))['auroc'] == \
        roc_auc_score([0, 1, 2, 0], three, multi_class='ovr', average='macro')


def test_across_table_per_row_and_pooled_over_rows(pooled):
    import pandas as pd
    rows = []
    # row A: aam +0.1 on each of 4 splits (ahead); row B: aam -0.1, +0.1, 0, 0 (level)
    for ds, deltas in (('A', [.1, .1, .1, .1]), ('B', [-.1, .1, 0, 0])):
        for fold, d in enumerate(deltas):
            rows.append(dict(dataset=ds, model='rf', split_seed=0, fold=fold, accuracy=.5))
            rows.append(dict(dataset=ds, model='aam', split_seed=0, fold=fold,
                             accuracy=.5 + d))
    rows.append(dict(dataset='C', model='rf', split_seed=0, fold=0, r2=.3))
    rows.append(dict(dataset='C', model='aam', split_seed=0, fold=0, r2=.1))
    text = pooled.across_table(pd.DataFrame(rows), 'rf', seen=('A',))
    lines = {l.split('|')[1].strip(): [c.strip() for c in l.strip('|').split('|')]
             for l in text.splitlines() if l.startswith('| ') and not l.startswith('| row')}
    assert lines['A (seen)'][1:3] == ['accuracy', '4'] and lines['A (seen)'][6] == 'ahead'
    assert lines['A (seen)'][5].startswith('+0.100 (+0.100, +0.100)')
    assert lines['B'][6] == 'level' and lines['B'][7] == '1 / 2 / 1'
    assert lines['C'][1] == 'r2' and lines['C'][5].startswith('-0.200')
    pooled_row = lines['**pooled, 3 rows**']
    assert pooled_row[5].startswith(f'**{(0.1 + 0 - 0.2) / 3:+.3f}')
    assert pooled_row[6] == '1 ahead / 1 level / 1 behind' and pooled_row[7] == '5 / 2 / 2'


def test_the_suite_names_every_study_and_says_what_it_skips(accuracy):
    folders = {accuracy.DATASETS[k][0] for k in accuracy.SUITE}
    assert folders == {'sleep-apnea-10422', 'moving-pictures', 'gepotidacin-uuti', 'hiv-bcn0',
                       'keyboard-fierer2010', 'pd-mice'}
    assert len(accuracy.SUITE) == 10
    assert set(accuracy.SEEN) <= set(accuracy.DATASETS)
    assert 'hiv-bcn0 / HIV_serostatus' in accuracy.SKIPPED
    grouped = {k for k in accuracy.SUITE if accuracy.DATASETS[k][3]}
    assert grouped == {'sleep-apnea', 'gepotidacin-type', 'gepotidacin-visit',
                       'pd-mice-donor', 'pd-mice-days'}


def test_label_scarce_subsets_keep_every_class_and_grow(accuracy):
    spec = importlib.util.spec_from_file_location('label_scarce', SCRIPT.parent /
                                                  'label_scarce.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ds = stratified(accuracy)
    rows = np.arange(len(ds.y))
    small = module.labelled_subset(ds, rows, 0.1, seed=0)
    assert set(ds.y[small]) == {0, 1, 2, 3} and np.bincount(ds.y[small]).min() == 2
    assert list(module.labelled_subset(ds, rows, 1.0, seed=0)) == list(rows)
    reg = grouped(accuracy)
    quarter = module.labelled_subset(reg, np.arange(64), 0.25, seed=1)
    assert len(quarter) == 16 and len(set(quarter)) == 16


@pytest.mark.skipif(not (SCRIPT.parents[2] / 'shared' / 'data' / 'hiv-bcn0').exists(),
                    reason='../shared/data is not here')
def test_suite_datasets_load_with_their_groups(accuracy):
    hiv = accuracy.load_dataset('hiv-age')
    assert hiv.task == 'regression' and len(hiv.y) == 155
    assert len(set(hiv.groups)) == 155          # one sample per person: plain folds
    gep = accuracy.load_dataset('gepotidacin-visit')
    assert gep.classes == ['Day 5', 'Follow-up', 'Predose Day'] and len(set(gep.groups)) == 22
    for train, test in accuracy.make_splits(gep, 5):
        assert not set(gep.groups[train]) & set(gep.groups[test])


def test_a_pretrained_variant_fits_from_the_encoder_the_pretrain_action_makes(accuracy):
    """Every q2-aam row is the shipped actions: a variant with `pretrain` runs `pretrain`
    on the fold's training samples and `fit` from that encoder; the transformer-only
    variant is fit with its other members left out."""
    ds = toy_amplicons(accuracy)
    rng = np.random.default_rng(0)
    points = rng.random((len(ds.y), 3))
    distances = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    ds = accuracy.replace(ds, distances=distances)
    tiny = dict(embedding_dim=16, attention_heads=2, max_asvs=16, epochs=2, ensemble_size=2)
    v = accuracy.replace(accuracy.VARIANTS['aam-pretrained'],
                         params={**accuracy.VARIANTS['aam-pretrained'].params, **tiny},
                         pretrain=dict(epochs=2, embedding_dim=16, attention_heads=2,
                                       max_asvs=16))
    train, test = np.arange(18), np.arange(18, 24)
    pretrained, info = accuracy.run_product(v, ds, train, test, threads=1)
    assert info['weights'] == {'transformer': 1.0}
    encoder = accuracy.pretrain_product(ds, train, v.pretrain, threads=1)
    assert encoder.task == 'encoder' and encoder.config['training']['samples'] == 18
    again, _ = accuracy.run_product(accuracy.replace(v, pretrain=None), ds, train, test,
                                    threads=1, encoder=encoder)
    np.testing.assert_allclose(pretrained, again, rtol=1e-6)
    scratch, _ = accuracy.run_product(accuracy.replace(v, pretrain=None), ds, train, test,
                                      threads=1)
    assert not np.allclose(pretrained, scratch)


def test_the_aam_row_is_the_shipped_fit_and_predict(accuracy):
    """accuracy.py's aam variant calls the actions users run: its predictions are
    predict_probabilities' of the model fit returns, and it reports what the members do."""
    from q2_aam.actions.fit import fit
    from q2_aam.actions.predict import predict_probabilities
    ds = toy_amplicons(accuracy)
    v = accuracy.replace(accuracy.VARIANTS['aam'], params=dict(
        embedding_dim=16, attention_heads=2, max_asvs=16, epochs=2, ensemble_size=2,
        random_seed=3))
    train, test = np.arange(18), np.arange(18, 24)
    pred, info = accuracy.run_product(v, ds, train, test, threads=1)
    assert pred.shape == (6, 4)
    np.testing.assert_allclose(pred.sum(1), 1.0, rtol=1e-9)
    table, seqs = accuracy._views(ds, train)
    y = np.asarray(ds.classes, dtype=object)[ds.y[train]]
    model, _ = fit(table=table, sequences=seqs,
                   metadata=accuracy._metadata_column(ds, train, y, ds.target), threads=1,
                   **v.params)
    test_table, test_seqs = accuracy._views(ds, test)
    expected = accuracy._class_matrix(ds, predict_probabilities(model, test_table, test_seqs))
    np.testing.assert_allclose(pred, expected, rtol=1e-9)
    assert set(info['weights']) == {'transformer', 'linear', 'tree', 'kmers'}
    assert set(info['derived']) == {'transformer', 'kmers', 'without-transformer'}
    for other in info['derived'].values():
        assert other.shape == (6, 4)
        np.testing.assert_allclose(other.sum(1), 1.0, rtol=1e-6)
    # each transformer model's probabilities are kept, for restack.py to calibrate one by
    # one as predict does; their average is the ensemble's
    assert len(info['transformer_models']) == 2
    assert all(p.shape == (6, 4) for p in info['transformer_models'])
    np.testing.assert_allclose(np.mean(info['transformer_models'], axis=0),
                               info['derived']['transformer'], rtol=1e-9)


def test_restack_reads_each_transformer_model_where_the_run_kept_them():
    import sys
    import pandas as pd
    sys.path.insert(0, str(SCRIPT.parent))
    import restack
    rows = pd.DataFrame({
        'model': ['aam:transformer-model-1'] * 2 + ['aam:transformer-model-0'] * 2
        + ['aam:transformer'] * 2,
        'sample_id': ['b', 'a'] * 3, 'p(x)': [0.1, 0.2, 0.3, 0.4, 0.5, 0.5],
        'p(y)': [0.9, 0.8, 0.7, 0.6, 0.5, 0.5]})
    each = restack._each_model(rows, 'classification', ['x', 'y'])
    np.testing.assert_allclose(each, [[[0.4, 0.6], [0.3, 0.7]], [[0.2, 0.8], [0.1, 0.9]]])
    assert restack._each_model(rows[rows.model == 'aam:transformer'], 'classification',
                               ['x', 'y']) is None
    assert restack._each_model(rows, 'regression', None) is None


@pytest.fixture(scope='module')
def blend_script():
    import sys
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location('blend_benchmark', SCRIPT.parent / 'blend.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_blend_averages_probabilities_and_calls_their_argmax(accuracy, blend_script, tmp_path):
    import pandas as pd
    path = tmp_path / 'p.tsv'
    a = np.eye(4)[[0, 1, 2, 3]] * 0.6 + 0.1
    b = np.eye(4)[[1, 1, 3, 3]] * 0.9 + 0.025
    write_split(accuracy, path, 'A', 0, 0, a)
    write_split(accuracy, path, 'B', 0, 0, b)
    df = pd.read_csv(path, sep='\t', dtype={'sample_id': str})
    out = blend_script.blend(df, 'AB', 'A', 'B', 0.75)
    probs = out[[c for c in out.columns if c.startswith('p(')]].to_numpy()
    np.testing.assert_allclose(probs, 0.25 * a + 0.75 * b)
    assert list(out.prediction) == ['b', 'b', 'd', 'd'] and set(out.model) == {'AB'}
    with pytest.raises(SystemExit, match="no predictions of 'C' here"):
        blend_script.blend(df, 'AC', 'A', 'C', 0.5)
    # written in place twice: the second run replaces the first's rows
    for _ in range(2):
        blend_script.main([str(path), '--new', 'AB', '--a', 'A', '--b', 'B', '--weight', '0.5',
                           '--in-place'])
    again = pd.read_csv(path, sep='\t')
    assert (again.model == 'AB').sum() == 4 and len(again) == 12


def test_loso_weight_reports_each_study_at_the_weight_the_others_chose(blend_script):
    import pandas as pd
    spec = importlib.util.spec_from_file_location('loso_benchmark',
                                                  SCRIPT.parent / 'loso_weight.py')
    loso = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loso)
    diffs = pd.DataFrame({0.0: [0.3, 0.0, 0.0], 0.5: [0.0, 0.1, 0.1], 1.0: [0.0, 0.2, -0.5]},
                         index=['hiv-age', 'hiv-orientation', 'sleep-apnea'])
    table = loso.leave_one_study_out(diffs).set_index('row')
    # hiv's two rows are one study: both are judged at the weight sleep-apnea favours (0.5)
    assert table.loc['hiv-age', 'weight chosen without it'] == 0.5
    assert table.loc['hiv-age', 'Δ at that weight'] == 0.0
    assert table.loc['hiv-age', 'its own best weight'] == 0.0
    assert table.loc['hiv-orientation', 'weight chosen without it'] == 0.5
    # sleep-apnea at the weight hiv's rows favour on average (0.15 at 0 and 1, 0.05 at 0.5)
    assert table.loc['sleep-apnea', 'weight chosen without it'] == 0.0


def test_groups_reach_fit_and_the_linear_row_only_where_subjects_repeat(accuracy):
    """The rows whose folds hold out whole subjects pass them to fit (and the linear row's
    penalty folds), as the README tells users; other rows and ad hoc data sets pass none."""
    from dataclasses import replace
    ds = grouped(accuracy)
    assert not accuracy.repeats_subjects(ds)                         # not a suite row
    assert accuracy.repeats_subjects(replace(ds, name='sleep-apnea'))
    assert accuracy.repeats_subjects(replace(ds, name='pd-mice-days'))
    assert not accuracy.repeats_subjects(replace(ds, name='hiv-age'))
    assert accuracy.repeats_subjects(replace(ds, name='moving-pictures-by-day-rarefied'))
    assert not accuracy.repeats_subjects(replace(ds, name='moving-pictures-rarefied'))


def test_restack_leaves_out_exactly_the_member_a_rule_names(tmp_path):
    """'without-kmers' is the same stack on the other members: on a row where the k-mer
    member is the only good one it scores far below the shipped rule, which weighs it most."""
    import sys
    import pandas as pd
    sys.path.insert(0, str(SCRIPT.parent))
    import restack
    rng = np.random.default_rng(0)
    names = ('transformer', 'linear', 'tree', 'kmers')
    noise = {'transformer': 2.0, 'linear': 2.0, 'tree': 2.0, 'kmers': 0.1}
    y_train, y_test = rng.normal(size=60), rng.normal(size=20)
    oof = pd.DataFrame({'sample-id': [f't{i}' for i in range(60)], 'truth': y_train,
                        'prediction': 0.0, 'inner_fold': np.arange(60) % 5, 'fold': 0})
    for m in names:
        oof[f'prediction:{m}'] = y_train + rng.normal(0, noise[m], 60)
    rows = []
    for model, m in [('rf', 'tree'), ('aam', 'kmers'), ('linear', 'linear'), ('tree', 'tree'),
                     ('aam:transformer', 'transformer'), ('aam:kmers', 'kmers')]:
        pred = y_test + rng.normal(0, noise[m], 20)
        rows += [{'dataset': 'sleep-apnea', 'model': model, 'fold': 0, 'sample_id': f's{i}',
                  'split_seed': 0, 'truth': y_test[i], 'prediction': pred[i]}
                 for i in range(20)]
    pd.DataFrame(rows).to_csv(tmp_path / 'sleep-apnea.tsv', sep='\t', index=False)
    oof.to_csv(tmp_path / 'sleep-apnea-oof.tsv', sep='\t', index=False)
    restack.WEIGHTS.clear()
    scores = restack.rule_scores(tmp_path)['sleep-apnea']
    weights = restack.WEIGHTS['sleep-apnea'][0]
    assert set(weights) == set(names) and max(weights, key=weights.get) == 'kmers'
    assert scores['shipped'][0] > 0.9
    assert scores['without-kmers'][0] < scores['shipped'][0] - 0.3
    assert scores['without-transformer'][0] > 0.9
