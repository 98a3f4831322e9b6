#!/usr/bin/env python3
"""Seconds per pretraining epoch with and without torch.compile (`compile` in the plugin).

sleep-apnea-10422, all 184 samples (150 train, 34 validate), embedding 32, one sample-encoder
layer, one nucleotide layer, batch 32, 6 epochs: the first compiled epoch includes the
compilation. Run it on the machine you will train on: the answer differs between a CPU and
a GPU.

Usage:
  .venv/bin/python benchmarks/compile.py [--device cuda]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as A  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--epochs', type=int, default=6)
    args = p.parse_args(argv)
    import torch
    from q2_aam.engine.model import AAM, AAMConfig
    from q2_aam.engine.trainer import TrainSettings, train
    torch.set_num_threads(args.threads)
    ds = A.load_dataset('sleep-apnea')
    data = A._subset_data(ds, np.arange(len(ds.y)), 128, with_distances=True,
                          with_targets=True)
    print('| compile | seconds per epoch | last training loss |\n|---|---|---|')
    for backend in (None, 'inductor'):
        torch.manual_seed(0)
        model = AAM(AAMConfig(task='encoder', n_outputs=0, embedding_dim=32,
                              attention_heads=4, attention_layers=1, nucleotide_layers=1))
        settings = TrainSettings(epochs=args.epochs, batch_size=32, learning_rate=3e-3,
                                 quiet=True, histogram_frequency=0, threads=args.threads,
                                 device=args.device, compile=backend)
        ends = []
        start = time.perf_counter()
        result = train(model, data, np.arange(150), np.arange(150, len(ds.y)), settings,
                       on_epoch_end=lambda epoch, record: ends.append(time.perf_counter()))
        seconds = np.diff([start] + ends)
        print(f"| {backend or 'off'} | {', '.join(f'{s:.1f}' for s in seconds)} | "
              f'{result.history.train_total_loss.iloc[-1]:.4f} |', flush=True)


if __name__ == '__main__':
    main()
