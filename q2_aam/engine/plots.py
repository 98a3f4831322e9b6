"""Figures shared by the trainer (TensorBoard) and the visualizers.

Figures are built with ``matplotlib.figure.Figure`` directly, never pyplot, so no
global state or GUI backend is touched and figures can be made from any thread.
"""
import numpy as np
from matplotlib.figure import Figure

from .metrics import classification_metrics, confusion_matrix, regression_metrics


def regression_figure(truth, predicted, title='Validation'):
    """Predicted vs true, least-squares line, dashed 1:1 line and R² in the title."""
    truth = np.asarray(truth, float)
    predicted = np.asarray(predicted, float)
    m = regression_metrics(truth, predicted)
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    ax.scatter(truth, predicted, s=18, alpha=0.7, edgecolors='none')
    low = float(min(truth.min(), predicted.min())) if len(truth) else 0.0
    high = float(max(truth.max(), predicted.max())) if len(truth) else 1.0
    ax.plot([low, high], [low, high], '--', color='grey', label='1:1')
    if len(truth) >= 2 and np.ptp(truth) > 0:
        slope, intercept = np.polyfit(truth, predicted, 1)
        xs = np.array([truth.min(), truth.max()])
        ax.plot(xs, slope * xs + intercept, color='C3',
                label=f'fit: y = {slope:.2f}x + {intercept:.2f}')
    ax.set_xlabel('true value')
    ax.set_ylabel('predicted value')
    ax.set_title(f"{title}: R² = {m['r2']:.3f}, MAE = {m['mae']:.3f} (n = {m['n']})")
    ax.legend(loc='upper left', fontsize='small')
    fig.tight_layout()
    return fig


def confusion_figure(truth, predicted, class_names, title='Validation'):
    """Confusion matrix (rows true, columns predicted) with accuracy, precision, recall, F1."""
    n = len(class_names)
    matrix = confusion_matrix(truth, predicted, n)
    one_hot = np.eye(n)[np.asarray(predicted, int)] if len(predicted) else np.zeros((0, n))
    m = classification_metrics(truth, one_hot, n)
    size = max(4.0, 1.0 + 0.7 * n)
    fig = Figure(figsize=(size + 1, size), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap='Blues')
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=class_names, rotation=45, ha='right')
    ax.set_yticks(range(n), labels=class_names)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i, j]), ha='center', va='center',
                    color='white' if matrix[i, j] > threshold else 'black')
    ax.set_xlabel('predicted class')
    ax.set_ylabel('true class')
    ax.set_title(f"{title}: accuracy {m['accuracy']:.3f}, precision {m['precision']:.3f},\n"
                 f"recall {m['recall']:.3f}, F1 {m['f1']:.3f} (n = {m['n']})", fontsize='medium')
    fig.tight_layout()
    return fig


def roc_figure(truth, models, class_names):
    """One-vs-rest ROC curve of every class, averaged over classes (macro), per model:
    ``models`` is [(name, (n, C) probabilities)]."""
    truth = np.asarray(truth, int)
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    grid = np.linspace(0, 1, 101)
    for name, prob in models:
        curves = []
        for c in range(len(class_names)):
            positive = truth == c
            if positive.all() or not positive.any():
                continue
            order = np.argsort(-prob[:, c], kind='mergesort')
            tp = np.concatenate([[0], np.cumsum(positive[order])]) / positive.sum()
            fp = np.concatenate([[0], np.cumsum(~positive[order])]) / (~positive).sum()
            curves.append(np.interp(grid, fp, tp))
        if curves:
            auc = classification_metrics(truth, prob, len(class_names))['auroc']
            ax.plot(grid, np.mean(curves, axis=0), label=f'{name.split(" (")[0]} '
                                                         f'(AUROC {auc:.3f})')
    ax.plot([0, 1], [0, 1], '--', color='grey')
    ax.set_xlabel('false positive rate')
    ax.set_ylabel('true positive rate')
    ax.legend(loc='lower right', fontsize='small')
    fig.tight_layout()
    return fig


def unifrac_figure(truth, predicted, title='Validation'):
    """Embedding distance vs UniFrac distance for sample pairs."""
    fig = regression_figure(truth, predicted, title)
    ax = fig.axes[0]
    ax.set_xlabel('UniFrac distance')
    ax.set_ylabel('distance between sample vectors')
    return fig


def loss_curves_figure(history):
    """One panel per loss term, train and validation overlaid, epochs on x."""
    terms = [t for t in ('total_loss', 'unifrac_loss', 'nuc_loss', 'target_loss')
             if f'train_{t}' in history or f'val_{t}' in history]
    fig = Figure(figsize=(4 * max(1, len(terms)), 3.5), dpi=100)
    # an ensemble's history has a member column: one line per member, labelled once
    runs = ([history] if 'member' not in history else
            [run for _, run in history.groupby('member', sort=True)])
    for k, term in enumerate(terms):
        ax = fig.add_subplot(1, len(terms), k + 1)
        for split, style, colour in (('train', '-', 'C0'), ('val', '--', 'C1')):
            column = f'{split}_{term}'
            for i, run in enumerate(runs):
                if column in run and run[column].notna().any():
                    label = 'validation' if split == 'val' else 'training'
                    ax.plot(run['epoch'], run[column], style, color=colour,
                            alpha=1.0 if len(runs) == 1 else 0.6,
                            label=label if i == 0 else None)
        ax.set_title(term.replace('_', ' '))
        ax.set_xlabel('epoch')
        values = history.filter(like=term).to_numpy(float)
        values = values[np.isfinite(values)]
        # log only when the curve spans more than a decade; otherwise ticks get unreadable
        if len(values) and values.min() > 0 and values.max() / values.min() > 10:
            ax.set_yscale('log')
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize='small')
    fig.tight_layout()
    return fig


def save_figure(fig, path_without_suffix):
    """Write PNG and SVG next to each other; returns the two file names."""
    names = []
    for suffix in ('png', 'svg'):
        path = f'{path_without_suffix}.{suffix}'
        fig.savefig(path, format=suffix)
        names.append(path)
    return names


def validation_figure(table, kind, class_names=None):
    """The figure of a validation table: scatter, confusion matrix or UniFrac pairs."""
    if kind == 'regression':
        return regression_figure(table['truth'].to_numpy(float),
                                 table['prediction'].to_numpy(float))
    if kind == 'classification':
        names = list(class_names)
        lookup = {n: i for i, n in enumerate(names)}
        return confusion_figure(table['truth'].map(lookup).to_numpy(int),
                                table['prediction'].map(lookup).to_numpy(int), names)
    return unifrac_figure(table['truth'].to_numpy(float), table['prediction'].to_numpy(float))
