"""What a training run shows and writes as it goes: the progress bar's text, one line per
epoch, and TensorBoard's scalars, histograms and figures.

TensorBoard overlays runs, not tags: ``writers`` holds two runs, train/ and val/, that log the
same tag names, so that each chart shows both curves.
"""
import numpy as np


def fmt(value):
    return f'{value:.6f}' if abs(value) < 1e-4 else f'{value:.4f}'


class Running:
    """Running means of named values, for the progress bar and the epoch record, weighted
    by the samples of each batch: a 2-sample last batch weighs 2 samples, not a batch."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def add(self, name, value, weight=1):
        if value is None:
            return
        self.sums[name] = self.sums.get(name, 0.0) + float(value) * weight
        self.counts[name] = self.counts.get(name, 0) + weight

    def means(self):
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def postfix(means, learning_rate):
    """The progress bar's text: the loss terms present, and the learning rate."""
    names = [('total_loss', 'Total'), ('unifrac_loss', 'UniFrac'), ('nuc_loss', 'Nuc'),
             ('target_loss', 'Target')]
    parts = [f'{label}={fmt(means[key])}' for key, label in names if key in means]
    parts.append(f'LR={learning_rate:.2e}')
    return ' '.join(parts)


def summary_line(record, epochs, improved):
    parts = [f"epoch {record['epoch']}/{epochs}"]
    for key in ('train_total_loss', 'val_total_loss', 'val_r2', 'val_mae', 'val_accuracy'):
        if key in record and record[key] is not None and np.isfinite(record[key]):
            parts.append(f'{key}={fmt(record[key])}')
    parts.append(f"lr={record['learning_rate']:.2e}")
    return '  '.join(parts) + ('  *best*' if improved else '')


def log_step(writer, step, terms, loss, norm, learning_rate, max_grad_norm):
    """Per-step scalars (tags step/…, x axis: optimizer steps): the loss terms, the
    learning rate, the gradient norm before clipping and whether it was clipped."""
    writer.add_scalar('step/total_loss', loss.item(), step)
    for name, value in terms.items():
        if value is not None:
            writer.add_scalar(f'step/{name}', value.item(), step)
    writer.add_scalar('step/learning_rate', learning_rate, step)
    writer.add_scalar('step/grad_norm', norm, step)
    writer.add_scalar('step/clipped', float(bool(max_grad_norm) and norm > max_grad_norm), step)


def log_epoch(writers, epoch, record, model, histogram_frequency, figure=None):
    """An epoch's record (train_* and val_* to their runs), the weight and gradient
    histograms every ``histogram_frequency`` epochs, and an improved epoch's figure."""
    writer = writers['train']
    for key, value in record.items():
        if key == 'epoch' or value is None or not np.isfinite(value):
            continue
        if key.startswith(('train_', 'val_')):
            split, name = key.split('_', 1)
            writers[split].add_scalar(name, value, epoch)
        else:
            writer.add_scalar(key, value, epoch)
    if histogram_frequency and epoch % histogram_frequency == 0:
        for name, p in model.named_parameters():
            if p.grad is not None and bool(p.grad.abs().sum() > 0):
                writer.add_histogram(f'weights/{name}', p.detach().float().cpu(), epoch)
                writer.add_histogram(f'gradients/{name}', p.grad.float().cpu(), epoch)
    if figure is not None:
        writers['val'].add_figure('figure', figure, epoch)
    for w in writers.values():
        w.flush()
