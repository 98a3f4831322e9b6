#!/usr/bin/env python3
"""Cross-study transfer (issue 15): does an encoder pretrained on *other* studies help?

For a held-out study S of the V4 studies (sleep-apnea, moving-pictures, gepotidacin-uuti,
pd-mice: all read from the same primer, so the first 150 bases of their ASVs overlap), one
encoder is pretrained on every sample of the other V4 studies, pooled: features are matched
by sequence, and the UniFrac loss uses each study's own distances (pairs across studies have
none: each study has its own tree). The encoder never sees S. Then S's rows of the suite are
fitted from that encoder (q2-aam's fit defaults otherwise) on the suite's splits, and the
predictions are written beside the suite's, so that pooled.py pairs them with q2-aam from
scratch and the forest split by split.

The pooled pretraining drives the engine: the pretrain action takes one study's distance
matrix, and pooled studies have no distances across them. Everything scored (fit, predict)
is the shipped actions', with that encoder as `pretrained`.

Usage:
  .venv/bin/python benchmarks/transfer.py --rows sleep-apnea,pd-mice-donor,pd-mice-days
  .venv/bin/python benchmarks/pooled.py benchmarks/predictions/suite/*.tsv \\
      benchmarks/predictions/transfer/*.tsv --across
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as A  # noqa: E402

V4 = {'sleep-apnea-10422': 'sleep-apnea', 'moving-pictures': 'moving-pictures',
      'gepotidacin-uuti': 'gepotidacin-type', 'pd-mice': 'pd-mice-donor'}


def pooled_studies(keys):
    """One data set of several studies: features matched by sequence, distances known
    within each study only (NaN across)."""
    import scipy.sparse as sp
    parts = [A.load_dataset(k) for k in keys]
    index = {}
    for ds in parts:
        for seq in ds.sequences:
            index.setdefault(seq, len(index))
    blocks, ids = [], []
    for ds in parts:
        cols = np.array([index[q] for q in ds.sequences])
        coo = ds.counts.tocoo()
        blocks.append(sp.csr_matrix((coo.data, (coo.row, cols[coo.col])),
                                    shape=(ds.counts.shape[0], len(index))))
        ids += [f'{ds.name}:{s}' for s in ds.sample_ids]
    n = len(ids)
    distances = np.full((n, n), np.nan, dtype=np.float32)
    start = 0
    for ds in parts:
        end = start + len(ds.y)
        distances[start:end, start:end] = ds.distances
        start = end
    sequences = sorted(index, key=index.get)
    return sp.vstack(blocks).tocsr(), np.array(ids, dtype=object), sequences, distances


def pretrain_encoder(keys, epochs, seed=0):
    """An encoder of fit's architecture pretrained with pretrain's settings on the pooled
    studies, as the SavedModel that fit takes as ``pretrained``."""
    import torch
    from q2_aam.actions.plan import DEFAULTS, FIT_ARCHITECTURE, make_plan, train_settings
    from q2_aam.engine import savedmodel
    from q2_aam.engine.data import AmpliconData, split_samples
    from q2_aam.engine.model import AAM, AAMConfig
    from q2_aam.engine.trainer import train
    counts, ids, sequences, distances = pooled_studies(keys)
    plan = make_plan('pretrain', {**DEFAULTS, **FIT_ARCHITECTURE, 'epochs': epochs,
                                  'random_seed': seed, 'device': 'cpu'})
    data = AmpliconData(counts, ids, [f'seq{i}' for i in range(len(sequences))], sequences,
                        max_asvs=plan['max_asvs'], distances=distances)
    torch.manual_seed(seed)
    np.random.seed(seed)
    cfg = AAMConfig(task='encoder', n_outputs=0, max_bp=plan['max_bp'],
                    **{k: plan[k] for k in FIT_ARCHITECTURE})
    t0 = time.perf_counter()
    result = train(AAM(cfg), data, *split_samples(len(ids), 0.2, seed=seed),
                   train_settings(plan, quiet=True))
    print(f'pretrained on {len(ids)} samples of {", ".join(keys)} ({len(sequences)} ASVs): '
          f'best epoch {result.best_epoch}/{epochs}, '
          f'{time.perf_counter() - t0:.0f} s', flush=True)
    config = savedmodel.make_config(cfg, plan['max_asvs'], plan['max_bp'],
                                    training=plan.record())
    return savedmodel.SavedModel(config, result.state_dict)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rows', default='sleep-apnea,pd-mice-donor,pd-mice-days')
    p.add_argument('--pretrain-epochs', type=int, default=40)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--predictions', default=str(A.ROOT / 'benchmarks' / 'predictions' /
                                                'transfer' / '{dataset}.tsv'))
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    base = A.VARIANTS['aam-transformer']   # pretraining concerns the transformers
    encoders = {}
    for row in args.rows.split(','):
        folder = A.DATASETS[row][0]
        others = tuple(k for f, k in V4.items() if f != folder)
        if others not in encoders:
            encoders[others] = pretrain_encoder(others, args.pretrain_epochs)
        ds = A.load_dataset(row)
        results = []
        for fold, (tr, te) in enumerate(A.make_splits(ds, 5)):
            pred, _ = A.run_product(base, ds, tr, te, threads=args.threads,
                                    encoder=encoders[others])
            score = A.score(ds.y[te], pred, ds.classes)
            print(f'  {row} aam-transfer fold {fold}: ' +
                  ' '.join(f'{k}={v:.3f}' for k, v in score.items()), flush=True)
            results.append({'per_sample': A.prediction_rows(ds, 'aam-transfer', fold, te,
                                                            pred)})
        Path(args.predictions.format(dataset=row)).parent.mkdir(parents=True, exist_ok=True)
        A.write_predictions(args.predictions.format(dataset=row), results, 0)


if __name__ == '__main__':
    main()
