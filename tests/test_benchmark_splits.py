"""The accuracy benchmark's splits: whole groups held out, and fresh draws really fresh."""
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


def test_stratified_splits_keep_class_shares_and_fresh_seeds_draw_new_test_sets(accuracy):
    ds = stratified(accuracy)
    standard = accuracy.make_splits(ds, 5, 0)
    fresh = accuracy.make_splits(ds, 5, 1)
    for train, test in standard + fresh:
        assert not set(train) & set(test)
        np.testing.assert_array_equal(np.bincount(ds.y[test], minlength=4), [2, 2, 2, 2])
    assert {tuple(te) for _, te in standard}.isdisjoint({tuple(te) for _, te in fresh})
