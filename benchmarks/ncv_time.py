#!/usr/bin/env python3
"""regress-samples-ncv on sleep-apnea-10422 age (184 samples, 5 folds holding out whole
mice) with the defaults, against one default fit of all 184 samples: the bound is 5 fits.

    .venv/bin/python benchmarks/ncv_time.py

Runs through the QIIME 2 Python API, as a user would; prints both wall times, their ratio,
and the out-of-fold R² of q2-aam and of the forest on the same folds.
"""
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get('Q2_AAM_DATA', ROOT.parent / 'shared' / 'data'))


def main():
    import numpy as np
    import pandas as pd
    import qiime2
    from qiime2.plugins.aam.methods import fit
    from qiime2.plugins.aam.pipelines import regress_samples_ncv
    folder = DATA / 'sleep-apnea-10422'
    table = qiime2.Artifact.load(str(folder / 'table.qza'))
    seqs = qiime2.Artifact.load(str(folder / 'rep-seqs.qza'))
    md = qiime2.Metadata.load(str(folder / 'metadata.tsv'))
    age = md.get_column('age')
    mice = qiime2.CategoricalMetadataColumn(md.get_column('host_subject_id').to_series()
                                            .astype(str))
    started = time.perf_counter()
    fit(table=table, sequences=seqs, metadata=age, groups=mice)
    one = time.perf_counter() - started
    started = time.perf_counter()
    result = regress_samples_ncv(table=table, sequences=seqs, metadata=age, groups=mice, cv=5)
    ncv = time.perf_counter() - started
    predicted = result.predictions.view(pd.Series)
    truth = age.to_series().reindex(predicted.index).astype(float)
    r2 = 1 - ((truth - predicted) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    print(f'one default fit: {one:.0f} s; regress-samples-ncv (cv 5, grouped): {ncv:.0f} s '
          f'= {ncv / one:.2f} fits; out-of-fold R² {r2:.3f} over {len(predicted)} samples '
          f'({np.isfinite(predicted).all() and "all finite"})')


if __name__ == '__main__':
    main()
