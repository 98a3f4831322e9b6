"""Cross-fitted calibration (engine): folds that hold every sample out once, and a
temperature and class biases fitted to out-of-fold outputs."""
import numpy as np
import pytest

from q2_aam.engine.calibration import apply_class_calibration, fit_class_calibration, log_softmax
from q2_aam.engine.folds import FoldError, cross_fit_folds


def test_each_row_is_held_out_by_exactly_one_fold():
    folds = cross_fit_folds(23, 5, seed=3)
    assert len(folds) == 5
    held = np.concatenate([h for _, h in folds])
    assert sorted(held) == list(range(23))
    for fit, h in folds:
        assert set(fit).isdisjoint(h) and len(fit) + len(h) == 23
    assert sorted(len(h) for _, h in folds) == [4, 4, 5, 5, 5]


def test_stratified_folds_share_out_every_class():
    labels = np.repeat([0, 1, 2, 3], [7, 7, 6, 7])        # moving-pictures' training sizes
    folds = cross_fit_folds(len(labels), 5, stratify=labels, seed=0)
    for c, size in enumerate([7, 7, 6, 7]):
        per_fold = [int((labels[h] == c).sum()) for _, h in folds]
        assert sum(per_fold) == size and max(per_fold) - min(per_fold) <= 1, (c, per_fold)
        # so every member still fits all but one or two of the class's samples
        assert min(int((labels[f] == c).sum()) for f, _ in folds) >= size - 2
    assert max(len(h) for _, h in folds) - min(len(h) for _, h in folds) <= 1


def test_folds_follow_the_seed():
    a = cross_fit_folds(20, 4, seed=1)
    b = cross_fit_folds(20, 4, seed=1)
    c = cross_fit_folds(20, 4, seed=2)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))


@pytest.mark.parametrize('n, k, message', [
    (10, 1, 'at least 2 folds; got 1'), (3, 5, '5 folds need at least 5 samples; there are 3')])
def test_impossible_folds_are_refused(n, k, message):
    with pytest.raises(FoldError, match=message):
        cross_fit_folds(n, k)


def _draw(n, temperature, bias, seed=0):
    """Raw outputs and labels drawn from softmax(log_softmax(raw) / T + bias)."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(0, 2, size=(n, len(bias)))
    logits = log_softmax(raw) / temperature + np.asarray(bias)
    p = np.exp(log_softmax(logits))
    labels = np.array([rng.choice(len(bias), p=row) for row in p])
    return raw, labels


def test_recovers_the_temperature_and_biases_that_made_the_labels():
    bias = np.array([0.8, -0.3, -0.5])
    raw, labels = _draw(6000, 2.5, bias)
    fitted = fit_class_calibration(raw, labels)
    assert fitted['temperature'] == pytest.approx(2.5, rel=0.1)
    np.testing.assert_allclose(fitted['bias'], bias - bias.mean(), atol=0.1)
    assert sum(fitted['bias']) == pytest.approx(0, abs=1e-9)


def test_calibrated_outputs_are_left_nearly_alone():
    raw, labels = _draw(6000, 1.0, [0.0, 0.0, 0.0], seed=1)
    fitted = fit_class_calibration(raw, labels)
    assert fitted['temperature'] == pytest.approx(1.0, rel=0.08)
    assert max(abs(b) for b in fitted['bias']) < 0.08


def test_a_lean_the_labels_do_not_support_is_taken_back():
    """Outputs that favour class 0 on coin-flip samples: the fitted bias moves calls back."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 400)
    raw = np.stack([1.0 + rng.normal(0, 1, 400), rng.normal(0, 1, 400)], axis=1)
    assert (raw.argmax(1) == 0).mean() > 0.7
    fitted = fit_class_calibration(raw, labels)
    calls = apply_class_calibration(raw, fitted).argmax(1)
    assert abs((calls == 0).mean() - 0.5) < 0.25
    assert fitted['bias'][0] < 0 < fitted['bias'][1]


def test_separable_outputs_keep_finite_settings():
    raw = np.array([[5.0, -5.0], [4.0, -4.0], [-3.0, 3.0], [-6.0, 6.0]])
    fitted = fit_class_calibration(raw, [0, 0, 1, 1])
    assert np.isfinite(fitted['temperature']) and 0 < fitted['temperature'] < 1
    assert all(np.isfinite(fitted['bias']))


def test_apply_is_a_temperature_and_shift_of_the_log_probabilities():
    raw = np.array([[2.0, 0.0, -1.0], [0.0, 0.5, 0.1]])
    cal = {'temperature': 2.0, 'bias': [0.1, 0.0, -0.1]}
    np.testing.assert_allclose(apply_class_calibration(raw, cal),
                               log_softmax(raw) / 2.0 + np.array([0.1, 0.0, -0.1]))
    np.testing.assert_array_equal(apply_class_calibration(raw, None), raw)


def test_outputs_and_labels_must_agree():
    with pytest.raises(ValueError, match=r'Expected \(3, 2\) out-of-fold outputs; got \(2, 2\)'):
        fit_class_calibration(np.zeros((2, 2)), [0, 1, 1])
