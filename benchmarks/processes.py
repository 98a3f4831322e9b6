#!/usr/bin/env python3
"""Wall time of `pretrain` on 1..N processes (torchrun workers), through the Python API.

On a GPU machine each worker takes one GPU (`--device cuda`); on CPUs each takes
`--threads`. The first row is one process with all the threads, for comparison. Start-up
(torchrun, imports in every worker) is included: it is what a user waits for.

Usage:
  .venv/bin/python benchmarks/processes.py                       # 1 x 2, 2 x 1, 1 x 1 threads
  .venv/bin/python benchmarks/processes.py --runs 1x0,2x0,4x0,8x0 --device cuda --batch-size 256
"""
import argparse
import contextlib
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get('Q2_AAM_DATA', ROOT.parent / 'shared' / 'data'))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--runs', default='1x2,2x1,1x1', help='PROCESSESxTHREADS, comma-separated '
                   '(threads 0: torch\'s choice)')
    p.add_argument('--study', default='sleep-apnea-10422')
    p.add_argument('--epochs', type=int, default=20)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--nucleotide-layers', type=int, default=1)
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda', 'auto'])
    args = p.parse_args(argv)
    warnings.simplefilter('ignore')
    import qiime2
    from qiime2.plugins.aam.methods import pretrain
    folder = DATA / args.study
    table, seqs, dm = (qiime2.Artifact.load(str(folder / f)) for f in
                       ('table.qza', 'rep-seqs.qza', 'unweighted-unifrac.qza'))
    n = table.view(__import__('biom').Table).shape[1]
    print(f'{args.study}: {n} samples, {args.epochs} epochs, batch {args.batch_size}, '
          f'nucleotide_layers {args.nucleotide_layers}, device {args.device}\n')
    print('| processes x threads | wall s | samples/s (incl. start-up) |')
    print('|---|---|---|')
    for run in args.runs.split(','):
        procs, threads = (int(x) for x in run.split('x'))
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):      # the action's notes, not the table
            pretrain(table=table, sequences=seqs, distance_matrix=dm, epochs=args.epochs,
                     batch_size=args.batch_size, processes=procs, threads=threads,
                     nucleotide_layers=args.nucleotide_layers, device=args.device,
                     random_seed=0, histogram_frequency=0)
        wall = time.perf_counter() - t0
        print(f'| {procs} x {threads} | {wall:.1f} | {n * 0.8 * args.epochs / wall:.0f} |',
              file=sys.stdout, flush=True)


if __name__ == '__main__':
    main()
