#!/usr/bin/env python3
"""Speed benchmark: training and prediction samples/s and peak memory, at the default size.

Data: sleep-apnea-10422 (184 samples, 1,298 ASVs of 100 nt), rarefied to 1,000 reads
(numpy, seeded), as the public PyTorch port was measured. Model: embedding 128, 4 heads,
4 layers per transformer, batch 8, max_asvs 1024.

Two paths, each in its own process so that its peak RSS is its own:
  dedupe  a training batch encodes each distinct ASV of its samples once
          (AmpliconData.make_batch(dedupe=True), what the trainer does); prediction
          encodes each distinct ASV of the whole table once (predict's default).
  naive   every ASV slot of every sample is encoded separately, in training and in
          prediction (make_batch(dedupe=False)): the per-sample path of the public port.
Both run the same Trainer and predict() code; only batch construction differs.

Timed: pretraining (UniFrac + masked-nucleotide loss) and fitting (regression on `age`
+ masked-nucleotide loss) for a fixed number of batches (one epoch over
batches x batch_size training samples, no validation), then prediction of every sample.

Usage:
  .venv/bin/python benchmarks/speed.py                 # both paths, prints a table
  .venv/bin/python benchmarks/speed.py --batches 5 --no-rarefy
  /usr/bin/time -v .venv/bin/python benchmarks/speed.py --path dedupe   # one path
"""
import argparse
import functools
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'benchmarks'))
from accuracy import _read_fasta, rarefy_counts  # noqa: E402  (shared with accuracy.py)

DATA = Path(os.environ.get('Q2_AAM_DATA', ROOT.parent / 'shared' / 'data')) / 'sleep-apnea-10422'

# The public PyTorch port on the same data and model size (design doc, 2-core machine).
REFERENCE = {'pretrain': 0.41, 'fit': 0.29, 'predict': 1.2, 'peak_gb': 9.5}
TARGETS = {'pretrain': 5.0, 'fit': 5.0, 'predict': 20.0, 'peak_gb': 2.0}


def rarefy(counts, depth, seed):
    """Subsample every sample to ``depth`` reads without replacement; drops shallower ones."""
    keep = counts.sum(axis=1) >= depth
    return rarefy_counts(counts[keep], depth, seed), keep


def load(rarefy_depth=1000, seed=0, max_asvs=1024, max_bp=150, npz=None):
    """sleep-apnea-10422 as AmpliconData with UniFrac and `age`.

    ``npz``: a cache of the arrays, read if it exists and written otherwise, so that a
    machine without biom-format (a GPU box) can run the benchmark on the same data.
    """
    from q2_aam.engine.data import AmpliconData
    if npz and Path(npz).is_file():
        a = np.load(npz, allow_pickle=False)
        return AmpliconData(a['counts'], a['sample_ids'], a['feature_ids'],
                            list(a['sequences']), max_asvs=max_asvs, max_bp=max_bp,
                            distances=a['distances'], targets=a['age'])
    import biom
    import pandas as pd
    table = biom.load_table(str(DATA / 'table.biom'))
    sample_ids = np.asarray(table.ids('sample'))
    feature_ids = np.asarray(table.ids('observation'))
    counts = np.asarray(table.matrix_data.T.todense()).astype(np.int64)   # samples x features
    if rarefy_depth:
        counts, keep = rarefy(counts, rarefy_depth, seed)
        sample_ids = sample_ids[keep]
    used = counts.sum(axis=0) > 0
    counts, feature_ids = counts[:, used], feature_ids[used]
    fasta = _read_fasta(DATA / 'rep-seqs.fasta')
    sequences = [fasta[f] for f in feature_ids]
    distances = pd.read_csv(DATA / 'unweighted-unifrac.tsv', sep='\t', index_col=0)
    distances.index = distances.index.astype(str)
    distances.columns = distances.columns.astype(str)
    distances = distances.loc[sample_ids, sample_ids].to_numpy(np.float32)
    metadata = pd.read_csv(DATA / 'metadata.tsv', sep='\t', index_col=0, dtype=str)
    metadata = metadata[~metadata.index.str.startswith('#')]
    age = metadata['age'].astype(float).reindex(sample_ids).to_numpy()
    if npz:
        np.savez_compressed(npz, counts=counts, sample_ids=sample_ids.astype(str),
                            feature_ids=feature_ids.astype(str),
                            sequences=np.asarray(sequences, dtype=str), distances=distances,
                            age=age)
    return AmpliconData(counts, sample_ids, feature_ids, sequences, max_asvs=max_asvs,
                        max_bp=max_bp, distances=distances, targets=age)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def run_path(path, args):
    """Time one path in this process; returns a dict of figures."""
    import torch
    from q2_aam.engine.data import AmpliconData, batch_indices, split_samples
    from q2_aam.engine.model import AAM, AAMConfig
    from q2_aam.engine.predict import predict
    from q2_aam.engine.trainer import TrainSettings, Trainer
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load(args.rarefy, args.seed, npz=args.data_npz)
    if path == 'naive':     # the same trainer and predict(), every slot encoded separately
        data.make_batch = functools.partial(AmpliconData.make_batch, data, dedupe=False)
    rss_data = peak_rss_mb()
    train_rows, _ = split_samples(len(data), 0.2, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    rows = np.sort(rng.choice(train_rows, min(len(train_rows), args.batches * args.batch_size),
                              replace=False))
    encoded = [len(data.make_batch(b).tokens) for b in batch_indices(rows, args.batch_size)]
    size = dict(embedding_dim=128, attention_heads=4, attention_layers=4)
    settings = TrainSettings(epochs=1, batch_size=args.batch_size, quiet=True,
                             histogram_frequency=0, random_seed=args.seed, device=args.device,
                             activation_checkpointing={'auto': None, 'on': True,
                                                       'off': False}[args.checkpointing])
    out = {'path': path, 'samples': len(data), 'train_samples': int(len(rows)),
           'median_asvs': float(np.median(data.asvs_per_sample())),
           'asv_rows_per_batch': float(np.mean(encoded)), 'threads': torch.get_num_threads()}
    out['load_before'] = os.getloadavg()[0]
    if args.device == 'cuda':   # CUDA start-up and lazy kernel loading, outside the timing:
        warm = AAM(AAMConfig(task='encoder', **size))    # one untimed epoch over the rows
        Trainer(warm, data, rows, [], settings).run()
        predict(warm, data, device='cuda')
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(args.seed)
    encoder = AAM(AAMConfig(task='encoder', **size))
    trainer = Trainer(encoder, data, rows, [], settings)
    cpu = time.process_time()
    result = trainer.run()
    out['pretrain_cpu_s'] = time.process_time() - cpu
    out['pretrain_s'] = result.train_seconds
    out['pretrain_sps'] = len(rows) / result.train_seconds
    out['peak_after_pretrain_mb'] = peak_rss_mb()
    torch.manual_seed(args.seed)
    regressor = AAM(AAMConfig(task='regression', n_outputs=1, **size))
    fit_settings = TrainSettings(**{**settings.to_dict(), 'unifrac_weight': 0.0})
    trainer = Trainer(regressor, data, rows, [], fit_settings)
    cpu = time.process_time()
    result = trainer.run()
    out['fit_cpu_s'] = time.process_time() - cpu
    out['fit_s'] = result.train_seconds
    out['fit_sps'] = len(rows) / result.train_seconds
    out['peak_after_fit_mb'] = peak_rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    predict(regressor, data, batch_size=args.predict_batch_size,
            dedupe_table=(path == 'dedupe'), device=args.device)
    if args.device == 'cuda':
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    out['predict_cpu_s'] = time.process_time() - cpu
    out['predict_s'] = seconds
    out['predict_sps'] = len(data) / seconds
    if path == 'dedupe':    # for reference: each batch encodes its own distinct ASVs
        started = time.perf_counter()
        predict(regressor, data, batch_size=args.predict_batch_size, dedupe_table=False,
                device=args.device)
        out['predict_batch_dedupe_sps'] = len(data) / (time.perf_counter() - started)
    out['rss_after_data_mb'] = rss_data
    out['peak_rss_mb'] = peak_rss_mb()
    out['load_after'] = os.getloadavg()[0]
    if args.device == 'cuda':
        out['gpu_peak_mb'] = torch.cuda.max_memory_allocated() / 2**20
        out['gpu'] = torch.cuda.get_device_name()
    return out


def table(results, command):
    lines = [f'command: {command}', '',
             f"data: sleep-apnea-10422, {results[0]['samples']} samples"
             f"{' rarefied' if results[0].get('rarefied') else ''}, median "
             f"{results[0]['median_asvs']:.0f} ASVs per sample; model 128/4 heads/4 layers, "
             f"batch {results[0].get('batch_size', 8)}, {results[0]['train_samples']} training "
             f"samples timed; torch threads {results[0]['threads']}; device "
             f"{results[0].get('device', 'cpu')}", '',
             '| path | ASV rows per training batch | pretrain samples/s | fit samples/s '
             '| predict samples/s | peak RSS (GiB) |',
             '|---|---|---|---|---|---|']
    for r in results:
        lines.append(f"| {r['path']}{'' if r.get('checkpointing', 'auto') == 'auto' else ', checkpointing ' + r['checkpointing']} | {r['asv_rows_per_batch']:.0f} | {r['pretrain_sps']:.2f} | "
                     f"{r['fit_sps']:.2f} | {r['predict_sps']:.1f} | "
                     f"{r['peak_rss_mb'] / 1024:.2f} |")
    for r in results:
        if 'gpu' in r:
            lines.append(f"| (on {r['gpu']}: peak GPU memory {r['gpu_peak_mb'] / 1024:.2f} GiB) "
                         "| | | | | |")
    lines.append(f"| public PyTorch port, 2-core CPU | | {REFERENCE['pretrain']} | "
                 f"{REFERENCE['fit']} | "
                 f"{REFERENCE['predict']} | {REFERENCE['peak_gb']} GB |")
    lines += ['', 'CPU seconds per sample (contention-free cost; threads spin, so >1 thread '
              'inflates it), and the 1-minute load average before/after each path:']
    for r in results:
        lines.append(f"  {r['path']}: pretrain {r['pretrain_cpu_s'] / r['train_samples']:.2f}, "
                     f"fit {r['fit_cpu_s'] / r['train_samples']:.2f}, predict "
                     f"{r['predict_cpu_s'] / r['samples']:.3f}; load "
                     f"{r['load_before']:.1f} -> {r['load_after']:.1f}")
    best = {r['path']: r for r in results}.get('dedupe')
    if best is not None:
        lines += ['', 'dedupe against the public port (targets: >=5x training, >=20x '
                  'prediction, <2 GB):',
                  f"  pretrain {best['pretrain_sps'] / REFERENCE['pretrain']:.1f}x, "
                  f"fit {best['fit_sps'] / REFERENCE['fit']:.1f}x, "
                  f"predict {best['predict_sps'] / REFERENCE['predict']:.0f}x, "
                  f"peak {best['peak_rss_mb'] / 1024:.2f} GiB "
                  f"= {best['peak_rss_mb'] * 2**20 / 1e9:.2f} GB"]
        if 'predict_batch_dedupe_sps' in best:
            lines.append(f"  (prediction with per-batch dedupe only: "
                         f"{best['predict_batch_dedupe_sps']:.1f} samples/s)")
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--path', choices=['dedupe', 'naive'],
                        help='run one path in this process and print its figures as JSON')
    parser.add_argument('--paths', default='dedupe,naive', help='paths to compare')
    parser.add_argument('--batches', type=int, default=10, help='training batches timed')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--predict-batch-size', type=int, default=64,
                        help="prediction batch size (the predict action's default)")
    parser.add_argument('--rarefy', type=int, default=1000, help='reads per sample; 0 = off')
    parser.add_argument('--no-rarefy', dest='rarefy', action='store_const', const=0)
    parser.add_argument('--threads', type=int, default=0, help="torch threads; 0 = torch's")
    parser.add_argument('--checkpointing', choices=['auto', 'on', 'off'], default='auto',
                        help='activation checkpointing of the ASV encoder in training '
                             "(the trainer's default, auto, is on for CPU at this size)")
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--data-npz', help='array cache of the data: read if present, else '
                                           'written (for a machine without biom-format)')
    args = parser.parse_args(argv)
    command = ' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    if args.path:
        out = run_path(args.path, args)
        out.update(rarefied=bool(args.rarefy), batch_size=args.batch_size,
                   checkpointing=args.checkpointing, device=args.device)
        print(json.dumps(out))
        print(table([out], command), file=sys.stderr)
        return
    results = []
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    skip = False
    for a in list(passthrough):      # --paths is ours, not the child's
        if skip:
            passthrough.remove(a)
            skip = False
        elif a == '--paths':
            passthrough.remove(a)
            skip = True
        elif a.startswith('--paths='):
            passthrough.remove(a)
    for path in args.paths.split(','):
        print(f'== {path} path ...', file=sys.stderr, flush=True)
        child = subprocess.run([sys.executable, __file__, '--path', path, *passthrough],
                               stdout=subprocess.PIPE, check=True, text=True)
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    print(table(results, command))


if __name__ == '__main__':
    main()
