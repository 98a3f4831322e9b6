import math

import numpy as np
import pandas as pd
import pytest

from q2_aam.engine import plots
from q2_aam.engine.metrics import classification_metrics, confusion_matrix, regression_metrics

TRUTH = np.array([1.0, 2.0, 3.0, 4.0])
PRED = np.array([1.5, 2.0, 2.0, 5.0])


def test_regression_metrics_by_hand():
    m = regression_metrics(TRUTH, PRED)              # residuals -0.5, 0, 1, -1
    assert m['mae'] == pytest.approx(2.5 / 4)
    assert m['rmse'] == pytest.approx(math.sqrt(2.25 / 4))
    assert m['r2'] == pytest.approx(1 - 2.25 / 5.0)  # SS_tot = 2.25+0.25+0.25+2.25
    assert m['n'] == 4


def test_regression_metrics_edge_cases():
    assert math.isnan(regression_metrics([2.0, 2.0], [1.0, 3.0])['r2'])   # no spread
    assert regression_metrics([], [])['n'] == 0
    with pytest.raises(ValueError, match='3 true values but 2 predictions'):
        regression_metrics([1, 2, 3], [1, 2])


def test_regression_metrics_match_sklearn():
    sk = pytest.importorskip('sklearn.metrics')
    rng = np.random.default_rng(0)
    truth, pred = rng.normal(size=30), rng.normal(size=30)
    m = regression_metrics(truth, pred)
    assert m['r2'] == pytest.approx(sk.r2_score(truth, pred))
    assert m['mae'] == pytest.approx(sk.mean_absolute_error(truth, pred))
    assert m['rmse'] == pytest.approx(math.sqrt(sk.mean_squared_error(truth, pred)))


CLASS_TRUTH = np.array([0, 0, 1, 1, 2, 2])
CLASS_PROBS = np.array([[0.7, 0.2, 0.1],     # 0 -> 0
                        [0.2, 0.6, 0.2],     # 0 -> 1
                        [0.1, 0.8, 0.1],     # 1 -> 1
                        [0.3, 0.4, 0.3],     # 1 -> 1
                        [0.1, 0.1, 0.8],     # 2 -> 2
                        [0.5, 0.2, 0.3]])    # 2 -> 0


def test_confusion_matrix():
    matrix = confusion_matrix(CLASS_TRUTH, CLASS_PROBS.argmax(1), 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])


def test_classification_metrics_by_hand():
    m = classification_metrics(CLASS_TRUTH, CLASS_PROBS, 3)
    precision = [1 / 2, 2 / 3, 1 / 1]
    recall = [1 / 2, 2 / 2, 1 / 2]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    assert m['accuracy'] == pytest.approx(4 / 6)
    assert m['precision'] == pytest.approx(np.mean(precision))
    assert m['recall'] == pytest.approx(np.mean(recall))
    assert m['f1'] == pytest.approx(np.mean(f1))
    assert m['n'] == 6
    # one-vs-rest AUROC = share of (positive, negative) pairs the positive wins, ties half:
    # class 0: 0.7 beats 4, 0.2 beats 2 -> 6/8; class 1: 0.8 beats 4, 0.4 beats 3 -> 7/8;
    # class 2: 0.8 beats 4, 0.3 beats 3 and ties one -> 7.5/8
    assert m['auroc'] == pytest.approx((6 + 7 + 7.5) / 24)


def test_classification_metrics_match_sklearn():
    sk = pytest.importorskip('sklearn.metrics')
    m = classification_metrics(CLASS_TRUTH, CLASS_PROBS, 3)
    pred = CLASS_PROBS.argmax(1)
    assert m['accuracy'] == pytest.approx(sk.accuracy_score(CLASS_TRUTH, pred))
    assert m['precision'] == pytest.approx(sk.precision_score(CLASS_TRUTH, pred,
                                                              average='macro'))
    assert m['recall'] == pytest.approx(sk.recall_score(CLASS_TRUTH, pred, average='macro'))
    assert m['f1'] == pytest.approx(sk.f1_score(CLASS_TRUTH, pred, average='macro'))
    assert m['auroc'] == pytest.approx(sk.roc_auc_score(CLASS_TRUTH, CLASS_PROBS,
                                                        multi_class='ovr', average='macro'))


def test_binary_auroc_by_hand():
    truth = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.65, 0.35], [0.2, 0.8]])
    # class 1 scores: positives 0.35, 0.8; negatives 0.1, 0.6 -> wins 1 + 2 = 3 of 4
    assert classification_metrics(truth, probs, 2)['auroc'] == pytest.approx(0.75)


def _titles(fig):
    return ' '.join(ax.get_title() for ax in fig.axes)


def test_regression_figure():
    fig = plots.regression_figure(TRUTH, PRED)
    ax = fig.axes[0]
    r2 = regression_metrics(TRUTH, PRED)['r2']
    assert 'R²' in ax.get_title() and f'{r2:.3f}' in ax.get_title()
    lines = {line.get_label(): line for line in ax.get_lines()}
    one_to_one = lines['1:1']
    assert one_to_one.get_linestyle() == '--'
    np.testing.assert_allclose(one_to_one.get_xdata(), one_to_one.get_ydata())
    fit = [line for label, line in lines.items() if label.startswith('fit')]
    assert len(fit) == 1
    slope, intercept = np.polyfit(TRUTH, PRED, 1)
    x, y = fit[0].get_xdata(), fit[0].get_ydata()
    np.testing.assert_allclose(y, slope * np.asarray(x) + intercept)
    assert fit[0].get_linestyle() == '-'


def test_regression_figure_without_spread_has_no_fit_line():
    fig = plots.regression_figure([2.0, 2.0], [1.0, 3.0])
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ['1:1']


def test_confusion_figure():
    pred = CLASS_PROBS.argmax(1)
    fig = plots.confusion_figure(CLASS_TRUTH, pred, ['a', 'b', 'c'])
    title = fig.axes[0].get_title()
    m = classification_metrics(CLASS_TRUTH, CLASS_PROBS, 3)
    for name in ('accuracy', 'precision', 'recall', 'F1'):
        assert name in title
    assert f"{m['accuracy']:.3f}" in title and f"{m['f1']:.3f}" in title
    cells = sorted(t.get_text() for t in fig.axes[0].texts)
    assert cells == sorted(str(v) for v in [1, 1, 0, 0, 2, 0, 1, 0, 1])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ['a', 'b', 'c']


def test_unifrac_and_loss_curve_figures(tmp_path):
    fig = plots.unifrac_figure(TRUTH, PRED)
    assert fig.axes[0].get_xlabel() == 'UniFrac distance'
    history = pd.DataFrame({'epoch': [1, 2, 3], 'train_total_loss': [3.0, 2.0, 1.0],
                            'val_total_loss': [3.5, 2.5, 2.0],
                            'train_nuc_loss': [2.0, 1.5, 1.0]})
    fig = plots.loss_curves_figure(history)
    assert [ax.get_title() for ax in fig.axes] == ['total loss', 'nuc loss']
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ['training', 'validation']
    names = plots.save_figure(fig, str(tmp_path / 'curves'))
    assert [n.rsplit('.', 1)[1] for n in names] == ['png', 'svg']
    assert (tmp_path / 'curves.png').read_bytes()[:4] == b'\x89PNG'
    assert b'<svg' in (tmp_path / 'curves.svg').read_bytes()[:500]


def test_loss_curves_of_an_ensemble_draw_each_member():
    history = pd.DataFrame({'epoch': [1, 2, 1, 2, 3], 'member': [0, 0, 1, 1, 1],
                            'train_total_loss': [3.0, 2.0, 3.1, 2.2, 1.9],
                            'val_total_loss': [3.5, 2.5, 3.4, 2.6, 2.4]})
    ax, = plots.loss_curves_figure(history).axes
    lines = ax.get_lines()
    assert len(lines) == 4                      # training and validation of two members
    assert [l.get_label() for l in lines if not l.get_label().startswith('_')] == \
        ['training', 'validation']              # each split in the legend once
    assert [list(l.get_xdata()) for l in lines] == [[1, 2], [1, 2, 3], [1, 2], [1, 2, 3]]
    assert list(lines[3].get_ydata()) == [3.4, 2.6, 2.4]
