#!/usr/bin/env python3
"""The cost of a default fit of all of sleep-apnea-10422 (184 samples, age) and of predicting
it, for the q2-aam checkout given (default: this one), so that two releases can be timed side
by side on the same machine and threads:

    git worktree add /tmp/q2-aam-old b6597db
    .venv/bin/python benchmarks/fit_cost.py --code /tmp/q2-aam-old
    .venv/bin/python benchmarks/fit_cost.py

Prints the fit's wall seconds, predict's samples/s (the fitted model on all 184 samples,
best of --repeat calls) and the process's peak memory. For predict's speed alone, alternate
`--epochs 2 --repeat 10` runs of the two checkouts: the timing is noisy. Calls the action functions directly (views in,
as QIIME 2 hands them).
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get('Q2_AAM_DATA', ROOT.parent / 'shared' / 'data'))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('--code', default=str(ROOT), help='the q2-aam checkout to time')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--epochs', type=int, default=None,
                   help="fit's epochs (default: fit's own); a short fit for predict's speed")
    p.add_argument('--repeat', type=int, default=3, help='predict calls; the best is kept')
    args = p.parse_args(argv)
    sys.path.insert(0, args.code)
    import biom
    import pandas as pd
    import qiime2
    import torch
    torch.set_num_threads(args.threads)
    try:                 # the layout since the settings plan; before it, q2_aam/_actions.py
        from q2_aam.actions.fit import fit
        from q2_aam.actions.predict import predict
    except ImportError:
        from q2_aam._actions import fit, predict
    import q2_aam
    assert Path(q2_aam.__file__).resolve().is_relative_to(Path(args.code).resolve())
    folder = DATA / 'sleep-apnea-10422'
    table = biom.load_table(str(folder / 'table.biom'))
    seqs, name = {}, None
    for line in open(folder / 'rep-seqs.fasta'):
        line = line.strip()
        if line.startswith('>'):
            name = line[1:].split()[0]
        elif line:
            seqs[name] = seqs.get(name, '') + line
    seqs = pd.Series(seqs)
    column = qiime2.Metadata.load(str(folder / 'metadata.tsv')).get_column('age')
    started = time.perf_counter()
    extra = {} if args.epochs is None else {'epochs': args.epochs}
    model = fit(table=table, sequences=seqs, metadata=column, threads=args.threads, **extra)
    if isinstance(model, tuple):       # (model, feature importance) since fit returns both
        model = model[0]
    fit_seconds = time.perf_counter() - started
    best = float('inf')
    for _ in range(args.repeat):
        started = time.perf_counter()
        predict(model, table, seqs, threads=args.threads)
        best = min(best, time.perf_counter() - started)
    peak = 0.0
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            peak = int(line.split()[1]) / 1024
    print(f'code {args.code}: fit {fit_seconds:.1f} s, predict {table.shape[1] / best:.0f} '
          f'samples/s, peak memory {peak:.0f} MB')


if __name__ == '__main__':
    main()
