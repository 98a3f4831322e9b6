#!/usr/bin/env python3
"""Peak memory and speed of pretraining from a phylogeny as a study grows to 100,000 samples.

The synthetic study: every sample mixes two real samples of one study in ../shared/data
(gepotidacin-uuti by default: 4,755 ASVs with their tree), with a random share u of the
first, and draws `--depth` reads from that mixture (multinomial). So the ASVs, their
sequences and their tree are real, and the samples are new, distinct and as sparse as real
ones. Each size runs in a fresh process, which builds the table, the data (each sample's
ASV list; counts sparse, never densified whole) and the tree's UniFrac source, then
pretrains one epoch over `--train-samples` of them (distances computed batch by batch from
the tree; no samples x samples matrix is built), and reports its peak resident memory.

Usage:
  .venv/bin/python benchmarks/scale.py --samples 10000,30000,100000
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get('Q2_AAM_DATA', ROOT.parent / 'shared' / 'data'))


def synthetic_counts(study_counts, n, depth, seed, chunk=2000):
    """n samples x features CSR: mixtures of two real samples, `depth` reads each."""
    import scipy.sparse as sp
    rng = np.random.default_rng(seed)
    real = np.asarray(study_counts.todense(), np.float64)
    profiles = real / real.sum(axis=1, keepdims=True)
    blocks = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        a, b = rng.integers(0, len(profiles), (2, m))
        u = rng.random((m, 1))
        mixed = u * profiles[a] + (1 - u) * profiles[b]
        mixed /= mixed.sum(axis=1, keepdims=True)
        blocks.append(sp.csr_matrix(rng.multinomial(depth, mixed)))
    return sp.vstack(blocks).tocsr()


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_size(n, args):
    """Build and pretrain at one size; returns the figures as a dict."""
    import biom
    import skbio
    import torch
    sys.path.insert(0, str(ROOT))
    from q2_aam.engine.data import AmpliconData
    from q2_aam.engine.model import AAM, AAMConfig
    from q2_aam.engine.trainer import TrainSettings, train
    from q2_aam.engine.unifrac import TreeDistances
    torch.set_num_threads(args.threads)
    folder = DATA / args.study
    table = biom.load_table(str(folder / 'table.biom'))
    features = [str(f) for f in table.ids('observation')]
    seqs = {str(s.metadata['id']): str(s) for s in skbio.io.read(
        str(folder / 'rep-seqs.fasta'), format='fasta', constructor=skbio.DNA, lowercase=True)}
    t0 = time.perf_counter()
    counts = synthetic_counts(table.matrix_data.T.tocsr(), n, args.depth, seed=n)
    ids = [f'synthetic-{i}' for i in range(n)]
    source = TreeDistances(counts, features, (folder / 'tree.nwk').read_text())
    data = AmpliconData(counts, ids, features, [seqs[f] for f in features],
                        max_asvs=args.max_asvs, max_bp=150, distances=source)
    built = time.perf_counter() - t0
    after_build = peak_mb()
    rng = np.random.default_rng(0)
    rows = rng.permutation(n)[:args.train_samples + args.val_samples]
    cfg = AAMConfig(task='encoder', n_outputs=0, max_bp=150, embedding_dim=32,
                    attention_heads=4, attention_layers=1, nucleotide_layers=0)
    settings = TrainSettings(epochs=1, batch_size=args.batch_size, learning_rate=3e-3,
                             random_seed=0, quiet=True, histogram_frequency=0,
                             threads=args.threads, nuc_weight=0.0)
    result = train(AAM(cfg), data, rows[:args.train_samples], rows[args.train_samples:],
                   settings)
    return {'samples': n, 'reads': int(counts.sum()), 'nonzero': int(counts.nnz),
            'build_s': round(built, 1), 'peak_mb_after_build': round(after_build),
            'peak_mb': round(peak_mb()),
            'train_samples_per_s': round(result.train_samples_per_second, 1),
            'matrix_gb_float32': round(n * n * 4 / 1e9, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--samples', default='10000,30000,100000')
    p.add_argument('--study', default='gepotidacin-uuti')
    p.add_argument('--depth', type=int, default=2000)
    p.add_argument('--max-asvs', type=int, default=128)
    p.add_argument('--train-samples', type=int, default=2000)
    p.add_argument('--val-samples', type=int, default=200)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--one', type=int, help=argparse.SUPPRESS)   # the child process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one_size(args.one, args)), flush=True)
        return
    print('| samples | reads | non-zero counts | build s | peak MB after build | peak MB '
          '| pretraining samples/s | a float32 matrix would be |')
    print('|---|---|---|---|---|---|---|---|')
    for n in (int(x) for x in args.samples.split(',')):
        child = [sys.executable, __file__, '--one', str(n)] + [
            f'--{k.replace("_", "-")}={v}' for k, v in vars(args).items()
            if k not in ('samples', 'one')]
        out = subprocess.run(child, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['samples']:,} | {r['reads']:,} | {r['nonzero']:,} | {r['build_s']} | "
              f"{r['peak_mb_after_build']:,} | {r['peak_mb']:,} | {r['train_samples_per_s']} "
              f"| {r['matrix_gb_float32']} GB |", flush=True)


if __name__ == '__main__':
    main()
