#!/usr/bin/env python3
"""Two training options measured (issue 16: PYT-8.10 and PYT-8.11).

1. Histograms: the TensorBoard event files' size and the time per epoch with weight and
   gradient histograms every epoch, every 10 epochs and never.
2. Optimizer x scheduler: every optimizer (adamw, adam, sgd, lion) with every schedule
   (warmup_cosine, cosine, plateau, onecycle, constant, polynomial), for pretraining (UniFrac
   and masked bases, moving-pictures, no labels, 20 % validation) and for fitting (body
   site, the fit defaults, 20 % validation so that a validation loss can be compared). Each
   optimizer at its own learning rate: lion and sgd are used at other scales than adam.

Usage:
  .venv/bin/python benchmarks/training_options.py                 # both parts
  .venv/bin/python benchmarks/training_options.py --part histograms --epochs 20
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as A  # noqa: E402

LEARNING_RATES = {'adamw': 3e-3, 'adam': 3e-3, 'sgd': 3e-2, 'lion': 3e-4}


def _run(ds, rows, task, settings, nucleotide_layers, seed=0):
    import torch
    from q2_aam.engine.data import split_samples
    from q2_aam.engine.model import AAM, AAMConfig
    from q2_aam.engine.trainer import TrainSettings, train
    data = A._subset_data(ds, rows, 128, with_distances=task == 'encoder', with_targets=True)
    fit_rows, val_rows = split_samples(len(rows), 0.2, seed=seed,
                                       stratify=None if task != 'classification' else ds.y)
    torch.manual_seed(seed)
    n_out = 0 if task == 'encoder' else len(ds.classes)
    model = AAM(AAMConfig(task=task, n_outputs=n_out, embedding_dim=32, attention_heads=4,
                          attention_layers=1, nucleotide_layers=nucleotide_layers))
    base = dict(batch_size=16, max_grad_norm=1.0, quiet=True, random_seed=seed,
                unifrac_weight=1.0 if task == 'encoder' else 0.0,
                nuc_weight=1.0 if task == 'encoder' else 0.0, patience=10 ** 6)
    base.update(settings)
    t0 = time.perf_counter()
    result = train(model, data, fit_rows, val_rows, TrainSettings(**base),
                   class_names=ds.classes)
    return result, time.perf_counter() - t0


def histograms(ds, epochs):
    print(f'## Histograms (pretraining on {ds.name}, {epochs} epochs, nucleotide transformer '
          'and k-mers)\n')
    print('| histogram_frequency | event files (KB) | s per epoch |\n|---|---|---|')
    _run(ds, np.arange(len(ds.y)), 'encoder', dict(epochs=1, histogram_frequency=1), 1)  # warm
    for freq in (0, 10, 1):
        with tempfile.TemporaryDirectory() as tb:
            result, seconds = _run(ds, np.arange(len(ds.y)), 'encoder',
                                   dict(epochs=epochs, histogram_frequency=freq,
                                        tensorboard_dir=tb, learning_rate=1e-3), 1)
            size = sum(len(v) for v in result.tensorboard.values()) / 1024
        print(f'| {freq or "0 (off)"} | {size:.0f} | {seconds / epochs:.2f} |', flush=True)
    print()


def sweep(ds, epochs):
    from q2_aam.engine.optim import OPTIMIZERS, SCHEDULERS
    for task, label, layers in (('encoder', 'pretraining (UniFrac + masked bases)', 1),
                                ('classification', 'fitting body site (fit defaults: k-mer '
                                 'ASVs)', 0)):
        print(f'## Optimizer x scheduler, {label}, {ds.name}, {epochs} epochs\n')
        print('| optimizer | lr | scheduler | best val loss | epoch of best | final val loss '
              '| s |\n|---|---|---|---|---|---|---|')
        for opt in OPTIMIZERS:
            for sched in SCHEDULERS:
                result, seconds = _run(ds, np.arange(len(ds.y)), task,
                                       dict(epochs=epochs, optimizer=opt, scheduler=sched,
                                            learning_rate=LEARNING_RATES[opt],
                                            histogram_frequency=0), layers)
                h = result.history
                print(f'| {opt} | {LEARNING_RATES[opt]:g} | {sched} | '
                      f'{h["val_total_loss"].min():.3f} | {result.best_epoch} | '
                      f'{h["val_total_loss"].iloc[-1]:.3f} | {seconds:.0f} |', flush=True)
        print()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--part', choices=('all', 'histograms', 'sweep'), default='all')
    p.add_argument('--epochs', type=int, default=20)
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    ds = A.load_dataset('moving-pictures')
    if args.part in ('all', 'histograms'):
        histograms(ds, args.epochs)
    if args.part in ('all', 'sweep'):
        sweep(ds, args.epochs)


if __name__ == '__main__':
    main()
