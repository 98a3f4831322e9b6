#!/usr/bin/env python3
"""Accuracy benchmark: q2-aam against q2-sample-classifier's default random forest.

Same splits for every model:
  sleep-apnea-10422 / age (regression): 5 folds holding out whole mice
      (GroupKFold on `host_subject_id`, 16 mice);
  moving-pictures / body-site (classification, 4 classes): repeated stratified
      80/20 splits, one per seed;
  moving-pictures-by-day / body-site: the same samples, 5 folds holding out whole
      person-days (subject and day), so no held-out palm has its other-hand twin of
      the same person and day in training.

Honesty: everything a model learns from comes from the training part of a split.
UniFrac is cut to the training samples before pretraining or fitting; test labels
never reach training; a validation split for early stopping (pretraining, and fitting
when a variant asks for one) is drawn inside the training part (whole groups
where the folds hold out groups, else stratified).

Usage:
  .venv/bin/python benchmarks/accuracy.py                     # everything, writes results.md
  .venv/bin/python benchmarks/accuracy.py --quick             # 2 folds, short runs
  .venv/bin/python benchmarks/accuracy.py --datasets sleep-apnea --variants rf,aam --folds 3
  .venv/bin/python benchmarks/accuracy.py --list              # the variants
"""
import argparse
import datetime
import os
import platform
import resource
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get('Q2_AAM_DATA', ROOT.parent / 'shared' / 'data'))


# -- data ------------------------------------------------------------------------------

@dataclass
class Dataset:
    name: str
    target: str
    task: str                     # 'regression' | 'classification'
    counts: object                # scipy csr, samples x features (raw counts)
    sample_ids: np.ndarray
    feature_ids: np.ndarray
    sequences: list
    distances: np.ndarray         # n x n unweighted UniFrac in sample order
    y: np.ndarray                 # float targets or class indices
    classes: list = None
    groups: np.ndarray = None     # hold-out unit (mouse, person-day) or None


# key: (folder, target, task, the metadata columns whose values, joined, make the
# hold-out unit; None = stratified splits)
DATASETS = {
    'sleep-apnea': ('sleep-apnea-10422', 'age', 'regression', ('host_subject_id',)),
    'moving-pictures': ('moving-pictures', 'body-site', 'classification', None),
    # The stratified splits above leave most held-out palms' other-hand sample of the same
    # person and day in training; holding out whole person-days takes that twin out of
    # the score.
    'moving-pictures-by-day': ('moving-pictures', 'body-site', 'classification',
                               ('subject', 'days-since-experiment-start')),
    # Four studies added 2026-11-30 (stop 14). No q2-aam setting was ever chosen on them:
    # their rows are the untouched ones (results.md, "Across studies").
    'gepotidacin-type': ('gepotidacin-uuti', 'Type', 'classification', ('ScreenID',)),
    'gepotidacin-visit': ('gepotidacin-uuti', 'Visit', 'classification', ('ScreenID',)),
    'hiv-orientation': ('hiv-bcn0', 'host_sexual_orientation', 'classification', None),
    'hiv-age': ('hiv-bcn0', 'host_age', 'regression', None),
    'keyboard-subject': ('keyboard-fierer2010', 'Subject', 'classification', None),
    'keyboard-sampletype': ('keyboard-fierer2010', 'SampleType', 'classification', None),
    'pd-mice-donor': ('pd-mice', 'donor_status', 'classification', ('mouse_id',)),
    'pd-mice-days': ('pd-mice', 'days_post_transplant', 'regression', ('mouse_id',)),
}
# Targets the data READMEs say carry no usable signal; the suite skips them and says why.
SKIPPED = {
    'hiv-bcn0 / HIV_serostatus': 'the forest scores the majority class (0.826); README: '
                                 '"There is no usable signal here"',
    'pd-mice / genotype': 'with whole mice held out the forest is at chance (0.55); README: '
                          'the random-split score comes from recognising each mouse',
    'sleep-apnea-10422 / exposure_type': 'confounded with cage (README); with whole cages '
                                         'held out each fold holds out one class\'s cage',
}
# The rows `make bench` runs: every study, one row per target (moving-pictures once, with
# stratified splits as in the README's first rows).
SUITE = ('sleep-apnea', 'moving-pictures', 'gepotidacin-type', 'gepotidacin-visit',
         'hiv-orientation', 'hiv-age', 'keyboard-subject', 'keyboard-sampletype',
         'pd-mice-donor', 'pd-mice-days')
# Studies on which a q2-aam default was ever judged; every other row is untouched.
SEEN = ('sleep-apnea', 'moving-pictures', 'moving-pictures-by-day')


# The same rows with every sample subsampled once (seed 0) to the smallest sample's depth,
# so that no model can score from sequencing depth: on moving-pictures depth alone tells the
# palms apart (benchmarks/palm_signal.py). Not in the default --datasets. The UniFrac matrix
# stays the shipped one, from unrarefied counts: only the pretraining variants read it.
RAREFIED = {
    'moving-pictures-rarefied': 'moving-pictures',
    'moving-pictures-by-day-rarefied': 'moving-pictures-by-day',
}


def rarefy_counts(counts, depth, seed):
    """Each row (a sample's integer counts, dense) subsampled without replacement to
    `depth` reads."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(counts)
    for i, row in enumerate(counts):
        if row.sum() < depth:
            raise ValueError(f'sample row {i} has {int(row.sum())} reads, fewer than {depth}')
        reads = np.repeat(np.arange(len(row)), row)
        np.add.at(out[i], rng.choice(reads, depth, replace=False), 1)
    return out


def _read_fasta(path):
    seqs, name = {}, None
    for line in open(path):
        line = line.strip()
        if line.startswith('>'):
            name = line[1:].split()[0]
            seqs[name] = []
        elif line:
            seqs[name].append(line)
    return {k: ''.join(v) for k, v in seqs.items()}


def load_dataset(key):
    import biom
    import pandas as pd
    if key in RAREFIED:
        import scipy.sparse
        ds = load_dataset(RAREFIED[key])
        counts = ds.counts.toarray().astype(np.int64)
        counts = rarefy_counts(counts, int(counts.sum(1).min()), seed=0)
        kept = counts.sum(0) > 0                   # ASVs that no subsample drew are gone
        return replace(ds, name=key, feature_ids=ds.feature_ids[kept],
                       counts=scipy.sparse.csr_matrix(counts[:, kept], dtype=np.float64),
                       sequences=[q for q, k in zip(ds.sequences, kept) if k])
    folder, target, task, group_cols = DATASETS[key]
    d = DATA / folder
    table = biom.load_table(str(d / 'table.biom'))
    meta = pd.read_csv(d / 'metadata.tsv', sep='\t', dtype=str, comment=None)
    meta = meta[~meta.iloc[:, 0].str.startswith('#')].set_index(meta.columns[0])
    dm = pd.read_csv(d / 'unweighted-unifrac.tsv', sep='\t', index_col=0)
    dm.index = dm.index.astype(str)
    dm.columns = dm.columns.astype(str)
    ids = [s for s in table.ids('sample') if s in meta.index and s in dm.index
           and isinstance(meta.loc[s, target], str) and meta.loc[s, target] != '']
    table = table.filter(ids, axis='sample', inplace=False)
    table = table.filter(lambda v, i, m: v.sum() > 0, axis='observation', inplace=False)
    fids = np.asarray(table.ids('observation'), dtype=object)
    seqs = _read_fasta(d / 'rep-seqs.fasta')
    counts = table.matrix_data.T.tocsr().astype(np.float64)          # samples x features
    values = meta.loc[ids, target]
    if task == 'regression':
        y, classes = values.astype(float).to_numpy(), None
    else:
        classes = sorted(values.unique())
        y = values.map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    if group_cols is not None:
        groups = meta.loc[ids, list(group_cols)].astype(str).agg(' / '.join, axis=1).to_numpy()
    elif task == 'regression':   # one sample per subject: each sample is its own group,
        groups = np.asarray(ids, dtype=object)   # so a regression gets 5 plain folds
    else:
        groups = None
    return Dataset(key, target, task, counts, np.asarray(ids, dtype=object), fids,
                   [seqs[f] for f in fids], dm.loc[ids, ids].to_numpy(np.float32),
                   y, classes, groups)


def make_splits(ds, n_splits, split_seed=0):
    """[(train_rows, test_rows)]: whole groups held out, or stratified 80/20 per seed.

    split_seed 0 gives the splits every figure up to 2026-11-26 was measured on (GroupKFold,
    seeds 0-4); any other value gives a fresh draw, to check that choices made on those
    splits carry over: groups shuffled with that seed and dealt round-robin into 5 folds, or
    stratified splits with seeds 100 * split_seed + i.
    """
    from sklearn.model_selection import GroupKFold, train_test_split
    rows = np.arange(len(ds.y))
    if ds.groups is not None:
        if split_seed == 0:
            folds = list(GroupKFold(n_splits=5).split(rows, ds.y, ds.groups))
        else:
            shuffled = np.random.default_rng(split_seed).permutation(np.unique(ds.groups))
            folds = []
            for k in range(5):
                held_out = np.isin(ds.groups, shuffled[k::5])
                folds.append((rows[~held_out], rows[held_out]))
        return folds[:n_splits]
    out = []
    for i in range(n_splits):
        tr, te = train_test_split(rows, test_size=0.2, stratify=ds.y,
                                  random_state=100 * split_seed + i)
        out.append((np.sort(tr), np.sort(te)))
    return out


@dataclass
class ProductVariant:
    """q2-aam as a user runs it: the shipped `fit` and `predict` (the action functions that
    `qiime aam fit` calls), with their defaults and any parameters given here; the
    groups column where a row's subjects repeat, as the README tells users to pass it."""
    description: str
    params: dict = field(default_factory=dict)
    # the pretrain action's parameters: an encoder is pretrained on the fold's training
    # samples (their UniFrac sub-matrix) and fit starts from it; None: fit from scratch
    pretrain: dict = None


@dataclass
class RFVariant:
    description: str
    relative: bool = False        # each sample's counts divided by its reads (depth removed)


@dataclass
class TreeVariant:
    """fit's tree member alone (q2_aam/engine/trees.py), on the same folds."""
    description: str


@dataclass
class LinearVariant:
    """A penalised linear model on log relative abundance: context for how much signal a
    simple compositional transform already exposes (not a q2-sample-classifier default)."""
    description: str


# fit with the transformer ensemble alone: a fixed blend without the other members
ONLY_TRANSFORMERS = dict(blend='fixed', linear_weight=0.0, tree_weight=0.0, kmer_weight=0.0)

VARIANTS = {
    'rf': RFVariant("q2-sample-classifier default: random forest, 100 trees, raw counts"),
    'rf-relative': RFVariant("the same forest on relative abundance: context for how much of "
                             "its score comes from sequencing depth", relative=True),
    'tree': TreeVariant("fit's tree member alone: ExtraTrees (500 trees, leaves of 2) on log "
                        "relative abundance"),
    'linear': LinearVariant("ridge (regression) / logistic regression (classification) on "
                            "log(relative abundance + 1e-5), penalty by inner CV"),
    'aam': ProductVariant("q2-aam as shipped: `fit` with its defaults (the stacked blend of "
                          "the transformer ensemble, the linear, the tree and the k-mer "
                          "member; groups where subjects repeat), then `predict`"),
    'aam-fixed': ProductVariant("the shipped fit with the blend of the last release: 0.25 x "
                                "the transformer ensemble + 0.75 x the linear half",
                                dict(blend='fixed', transformer_weight=0.25, linear_weight=0.75,
                                     tree_weight=0.0, kmer_weight=0.0)),
    'aam-transformer': ProductVariant("the transformer ensemble alone (every member fitted on "
                                      "every training sample): q2-aam before the linear half",
                                      ONLY_TRANSFORMERS),
    'aam-nucleotides': ProductVariant("the transformer ensemble alone, each ASV also read by "
                                      "a one-layer nucleotide transformer (fit's default "
                                      "before 2026-11-30; 5x the training time)",
                                      {**ONLY_TRANSFORMERS, 'nucleotide_layers': 1}),
    'aam-pretrained': ProductVariant("the transformer ensemble alone, from an encoder "
                                     "`pretrain` made (its defaults, 20 epochs) on the fold's "
                                     "training samples' UniFrac (encoder trainable)",
                                     ONLY_TRANSFORMERS, pretrain=dict(epochs=20)),
    'aam-frozen': ProductVariant("as aam-pretrained, the head fitted on the frozen encoder",
                                 {**ONLY_TRANSFORMERS, 'freeze_encoder': True},
                                 pretrain=dict(epochs=20)),
}


THREADS = 0


def _views(ds, rows):
    """A row subset of a data set as the views the actions take (what QIIME 2 hands them)."""
    import biom
    import pandas as pd
    counts = ds.counts[rows]
    used = np.flatnonzero(np.asarray(counts.sum(axis=0)).ravel() > 0)
    table = biom.Table(counts[:, used].T.tocsr(), [str(f) for f in ds.feature_ids[used]],
                       [str(s) for s in ds.sample_ids[rows]])
    seqs = pd.Series({str(ds.feature_ids[i]): ds.sequences[i] for i in used})
    return table, seqs


def _metadata_column(ds, rows, values, name):
    import pandas as pd
    import qiime2
    index = pd.Index([str(s) for s in ds.sample_ids[rows]], name='sample-id')
    series = pd.Series(values, index=index, name=name)
    kind = qiime2.NumericMetadataColumn if series.dtype.kind == 'f' else \
        qiime2.CategoricalMetadataColumn
    return kind(series)


def pretrain_product(ds, rows, params, threads=0):
    """The shipped pretrain on ``rows`` (their UniFrac sub-matrix): an encoder, as
    `qiime aam pretrain` makes it, for fit's ``pretrained``."""
    import contextlib
    import io
    import skbio
    from q2_aam.actions.pretrain import pretrain
    table, seqs = _views(ds, rows)
    ids = [str(s) for s in ds.sample_ids[rows]]
    matrix = skbio.DistanceMatrix(np.asarray(ds.distances[np.ix_(rows, rows)], np.float64),
                                  ids)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return pretrain(table=table, sequences=seqs, distance_matrix=matrix, threads=threads,
                        **params)


def repeats_subjects(ds):
    """Whether the row's subjects repeat (its folds hold out whole groups): where the
    README tells users to pass fit's groups column."""
    key = RAREFIED.get(ds.name, ds.name)
    return key in DATASETS and DATASETS[key][3] is not None


def run_product(v, ds, train_rows, test_rows, threads=0, encoder=None, quick=False):
    """The shipped fit on the training rows, the shipped predict on the test rows. Also
    returns (info['derived']) what the stack's members predict: the transformer ensemble
    alone, the k-mer member alone, and the blend restacked without the transformers (the
    same stack fitted on the other members' out-of-fold predictions the model keeps), so that a row says what the
    transformer adds. ``encoder``: a pretrained encoder to fit from (else the variant's
    ``pretrain`` makes one on the training rows, or fit starts from scratch)."""
    import contextlib
    import io
    from q2_aam.actions.fit import fit
    from q2_aam.actions.predict import member_predictions, predict, predict_probabilities
    from q2_aam.engine import stack as stack_module
    table, seqs = _views(ds, train_rows)
    truth = ds.y[train_rows]
    values = truth.astype(float) if ds.task == 'regression' else \
        np.asarray(ds.classes, dtype=object)[truth.astype(int)]
    groups = None
    if repeats_subjects(ds):
        groups = _metadata_column(ds, train_rows, ds.groups[train_rows].astype(str), 'subject')
    column = _metadata_column(ds, train_rows, values, ds.target)
    params = {'epochs': 12, **v.params} if quick else v.params
    t0 = time.perf_counter()
    if encoder is None and v.pretrain is not None:
        encoder = pretrain_product(ds, train_rows, v.pretrain, threads=threads)
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(io.StringIO()):
        model, _ = fit(table=table, sequences=seqs, metadata=column, groups=groups,
                       pretrained=encoder, threads=threads, **params)
    seconds = time.perf_counter() - t0
    test_table, test_seqs = _views(ds, test_rows)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        if ds.task == 'regression':
            pred = predict(model, test_table, test_seqs, threads=threads).to_numpy()
        else:
            probs = predict_probabilities(model, test_table, test_seqs, threads=threads)
            pred = _class_matrix(ds, probs)
    info = {'predict_seconds': time.perf_counter() - t0,
            'train_samples_per_second': len(train_rows) / seconds,
            'log': [line for line in log.getvalue().splitlines() if 'stacked blend' in line],
            # the stack's out-of-fold table, kept so that stacking rules can be compared
            # offline on the same members (benchmarks/restack.py)
            'out_of_fold': model.validation if 'fold' in model.validation else None}
    if 'stack' not in model.config:
        return pred, info
    stack = model.config['stack']
    info['weights'] = dict(zip(stack['members'], stack['weights']))
    with contextlib.redirect_stdout(io.StringIO()):
        _, members = member_predictions(model, test_table, test_seqs, each_model=True)
    if ds.task == 'classification':        # (models, n, C): each model's probabilities
        import pandas as pd
        info['transformer_models'] = [
            _class_matrix(ds, pd.DataFrame(p, columns=model.config['labels']))
            for p in members['transformer']]
        members['transformer'] = members['transformer'].mean(axis=0)
    derived = {'transformer': members['transformer']}
    if 'kmers' in members:      # no stand-alone variant has it: restack.py reads these rows
        derived['kmers'] = members['kmers']
    others = [m for m in stack['members'] if m != 'transformer']
    oof = model.validation
    if others and 'fold' in oof:
        oof = oof.loc[[str(s) for s in ds.sample_ids[train_rows]]]
        if ds.task == 'regression':
            held = {m: oof[f'prediction:{m}'].to_numpy(float) for m in others}
            y = oof['truth'].to_numpy(float)
        else:
            labels = model.config['labels']
            held = {m: oof[[f'prob:{m}:{c}' for c in labels]].to_numpy(float)
                    for m in others}
            y = oof['truth'].map({c: i for i, c in enumerate(labels)}).to_numpy(int)
        restacked = stack_module.fit_stack(held, y, ds.task)
        derived['without-transformer'] = stack_module.apply_stack(
            restacked, {m: members[m] for m in others})
    if ds.task != 'regression':      # the model's classes -> the data set's
        import pandas as pd
        derived = {name: _class_matrix(ds, pd.DataFrame(out, columns=model.config['labels']))
                   for name, out in derived.items()}
    info['derived'] = derived
    return pred, info


def _class_matrix(ds, probabilities):
    """Probabilities as an (n, classes of the data set) array; a class the training part
    lacked gets 0."""
    out = np.zeros((len(probabilities), len(ds.classes)))
    for c, name in enumerate(ds.classes):
        if name in probabilities.columns:
            out[:, c] = probabilities[name].to_numpy(float)
    return out


def _fit_and_predict(est, X, ds, train_rows, test_rows):
    """Fit a scikit-learn estimator on the training rows and predict the test rows
    (class probabilities for classification), timing both."""
    t0 = time.perf_counter()
    est.fit(X[train_rows], ds.y[train_rows])
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = est.predict(X[test_rows]) if ds.task == 'regression' else \
        est.predict_proba(X[test_rows])
    return pred, {'predict_seconds': time.perf_counter() - t0,
                  'train_samples_per_second': len(train_rows) / seconds}


def run_rf(v, ds, train_rows, test_rows, fold):
    """q2-sample-classifier's default estimator: DictVectorizer over raw counts (feature
    columns in sorted ID order) -> RandomForest{Regressor,Classifier}(n_estimators=100).
    With v.relative, the same forest on relative abundance."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    order = np.argsort(ds.feature_ids.astype(str))
    X = ds.counts[:, order]
    if v.relative:
        X = X.multiply(1.0 / np.asarray(X.sum(1))).tocsr()
    Est = RandomForestRegressor if ds.task == 'regression' else RandomForestClassifier
    return _fit_and_predict(Est(n_estimators=100, random_state=fold, n_jobs=1),
                            X, ds, train_rows, test_rows)


def run_linear(v, ds, train_rows, test_rows):
    """The linear half of q2-aam's fitted model (q2_aam/engine/linear.py): RidgeCV /
    LogisticRegressionCV on log relative abundance, the penalty chosen by cross-validation
    inside the training rows only (whole subjects per fold where they repeat, as fit does
    given its groups column)."""
    from q2_aam.engine.linear import fit_linear, linear_outputs
    t0 = time.perf_counter()
    model = fit_linear(ds.counts[train_rows], list(ds.sequences), ds.y[train_rows], ds.task,
                       None if ds.task == 'regression' else len(ds.classes),
                       groups=ds.groups[train_rows] if repeats_subjects(ds) else None)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred, _ = linear_outputs(model, ds.counts[test_rows], list(ds.sequences))
    return pred, {'predict_seconds': time.perf_counter() - t0,
                  'train_samples_per_second': len(train_rows) / seconds}


def run_tree(ds, train_rows, test_rows):
    """fit's tree member alone, fitted on the training rows with fit's default seed."""
    from q2_aam.engine.trees import fit_trees, tree_outputs
    t0 = time.perf_counter()
    model = fit_trees(ds.counts[train_rows], list(ds.sequences), ds.y[train_rows], ds.task,
                      None if ds.task == 'regression' else len(ds.classes))
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = tree_outputs(model, ds.counts[test_rows], list(ds.sequences))
    return pred, {'predict_seconds': time.perf_counter() - t0,
                  'train_samples_per_second': len(train_rows) / seconds}


# -- metrics and memory ------------------------------------------------------------------

def score(truth, pred, classes=None):
    """R² and MAE of values, or (``classes`` given: truth as class indices, pred as class
    probabilities) accuracy and macro one-vs-rest AUROC; pooled.py scores with it too."""
    from sklearn.metrics import (accuracy_score, mean_absolute_error, r2_score,
                                 roc_auc_score)
    if classes is None:
        return {'r2': r2_score(truth, pred), 'mae': mean_absolute_error(truth, pred)}
    present = np.unique(truth)
    if len(present) < 2:            # a grouped fold can hold out one class only: no AUROC
        auc = float('nan')
    elif len(classes) == 2:         # binary: the second class's probability is the score
        auc = roc_auc_score(truth, pred[:, 1])
    else:                           # one-vs-rest over the classes the fold holds
        probs = pred[:, present] / pred[:, present].sum(1, keepdims=True)
        auc = roc_auc_score(np.searchsorted(present, truth), probs, multi_class='ovr',
                            average='macro') if len(present) > 2 else \
            roc_auc_score(truth == present[1], probs[:, 1])
    return {'accuracy': accuracy_score(truth, pred.argmax(1)), 'auroc': auc}


def reset_peak_rss():
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def peak_rss_mb():
    try:
        for line in open('/proc/self/status'):
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluate(name, variant, ds, splits, quick=False, log=print):
    reset_peak_rss()
    scores, train_s, pred_sps, train_sps, extra, per_sample = [], [], [], [], [], []
    derived = {}     # the product's members and partial blends, scored on the same folds
    # a classifier's transformer models one by one (not scored): restack.py calibrates them
    # as predict does
    per_model = []
    out_of_fold = []     # the product's out-of-fold tables, one per fold
    for fold, (tr, te) in splits:
        t0 = time.perf_counter()
        if isinstance(variant, RFVariant):
            pred, info = run_rf(variant, ds, tr, te, fold)
        elif isinstance(variant, LinearVariant):
            pred, info = run_linear(variant, ds, tr, te)
        elif isinstance(variant, TreeVariant):
            pred, info = run_tree(ds, tr, te)
        elif isinstance(variant, ProductVariant):
            pred, info = run_product(variant, ds, tr, te, threads=THREADS, quick=quick)
            if info.get('out_of_fold') is not None:
                out_of_fold.append(info['out_of_fold'].rename(columns={'fold': 'inner_fold'})
                                   .reset_index().assign(dataset=ds.name, model=name,
                                                         fold=fold))
            for k, each in enumerate(info.get('transformer_models', [])):
                per_model += prediction_rows(ds, f'{name}:transformer-model-{k}', fold, te,
                                             each)
            for other, other_pred in info.get('derived', {}).items():
                derived.setdefault(other, []).append(
                    (score(ds.y[te], other_pred, ds.classes),
                     prediction_rows(ds, f'{name}:{other}', fold, te, other_pred)))
        else:
            raise TypeError(f'unknown variant {variant!r}')
        train_s.append(time.perf_counter() - t0 - info['predict_seconds'])
        pred_sps.append(len(te) / max(info['predict_seconds'], 1e-9))
        train_sps.append(info['train_samples_per_second'])
        s = score(ds.y[te], pred, ds.classes)
        scores.append(s)
        per_sample += prediction_rows(ds, name, fold, te, pred)
        extra.append({k: v for k, v in info.items() if k.endswith('epoch') or k == 'epochs_run'
                      or k == 'weights'})
        log(f'  {ds.name} {name} fold {fold}: ' +
            ' '.join(f'{k}={v:.3f}' for k, v in s.items()) +
            f' ({train_s[-1]:.0f} s) {extra[-1] or ""}')
    if ds.task == 'classification':
        log(confusion_text(ds, per_sample))
    row = {'dataset': ds.name, 'target': ds.target, 'model': name, 'folds': len(scores),
           'per_sample': per_sample}
    for k in scores[0]:
        vals = np.array([s[k] for s in scores])
        row[k] = (vals.mean(), vals.std(ddof=1) if len(vals) > 1 else 0.0)
    row['train_s'] = float(np.mean(train_s))
    row['peak_mb'] = peak_rss_mb()
    row['train_sps'] = float(np.nanmean(train_sps))
    row['predict_sps'] = float(np.mean(pred_sps))
    row['out_of_fold'] = out_of_fold
    row['per_model'] = per_model
    row['derived'] = []
    for other, folds in derived.items():
        sub = {'dataset': ds.name, 'target': ds.target, 'model': f'{name}:{other}',
               'folds': len(folds), 'per_sample': [r for _, rows in folds for r in rows],
               'train_s': float('nan'), 'peak_mb': float('nan'), 'train_sps': float('nan'),
               'predict_sps': float('nan')}
        for k in folds[0][0]:
            vals = np.array([sc[k] for sc, _ in folds])
            sub[k] = (vals.mean(), vals.std(ddof=1) if len(vals) > 1 else 0.0)
        row['derived'].append(sub)
    return row


def prediction_rows(ds, model, fold, test_rows, pred):
    """One record per test sample, so that a row's errors can be read (and splits pooled)."""
    out = []
    for r, p in zip(test_rows, pred):
        rec = {'dataset': ds.name, 'model': model, 'fold': fold, 'sample_id': ds.sample_ids[r]}
        if ds.task == 'regression':
            rec.update(truth=float(ds.y[r]), prediction=float(p))
        else:
            rec.update(truth=ds.classes[ds.y[r]], prediction=ds.classes[int(np.argmax(p))])
            rec.update({f'p({c})': float(q) for c, q in zip(ds.classes, p)})
        out.append(rec)
    return out


def confusion_text(ds, records):
    """Test samples by true class (rows) and predicted class (columns), summed over splits:
    which classes a row's accuracy is lost on."""
    index = {c: i for i, c in enumerate(ds.classes)}
    counts = np.zeros((len(ds.classes), len(ds.classes)), dtype=int)
    for rec in records:
        counts[index[rec['truth']], index[rec['prediction']]] += 1
    width = max(len(c) for c in ds.classes) + 2
    lines = ['  confusion over all splits (rows: true class, columns: predicted):',
             ' ' * (width + 2) + ''.join(f'{c:>{width}}' for c in ds.classes)]
    for c, row in zip(ds.classes, counts):
        lines.append(f'  {c:<{width}}' + ''.join(f'{n:>{width}d}' for n in row)
                     + f'   {row[index[c]]}/{row.sum()} right')
    return '\n'.join(lines)


def write_predictions(path, rows, split_seed):
    """Append every row's per-sample predictions to a TSV (header written once)."""
    import csv
    path = Path(path)
    records = [dict(split_seed=split_seed, **rec) for r in rows
               for rec in r['per_sample'] + r.get('per_model', [])]
    if not records:
        return
    fields = list(dict.fromkeys(k for rec in records for k in rec))
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path) as f:
            existing = next(csv.reader(f, delimiter='\t'))
        if existing != fields:
            raise SystemExit(f'{path} has the columns {existing}, these predictions have '
                             f'{fields}: write them to a new file (one file per data set).')
    with open(path, 'a', newline='') as f:
        w = csv.DictWriter(f, fieldnames=fields, delimiter='\t', restval='')
        if new:
            w.writeheader()
        w.writerows(records)
    print(f'appended {len(records)} predictions to {path}')


def write_out_of_fold(path, tables, split_seed):
    """Append the product's out-of-fold tables (every training sample of every test fold,
    with each member's prediction) to a TSV."""
    import pandas as pd
    frame = pd.concat(tables, ignore_index=True).assign(split_seed=split_seed)
    path = Path(path)
    frame.to_csv(path, sep='\t', index=False, mode='a', header=not path.exists(),
                 float_format='%.10g')
    print(f'appended {len(frame)} out-of-fold rows to {path}')


def format_table(rows):
    head = ('| data set | target | model | folds | R² / accuracy | MAE / AUROC | '
            'train s/fold | peak MB | train samples/s | predict samples/s |')
    lines = [head, '|' + '---|' * 10]
    for r in rows:
        if 'r2' in r:
            a, b = r['r2'], r['mae']
        else:
            a, b = r['accuracy'], r['auroc']
        lines.append(f"| {r['dataset']} | {r['target']} | {r['model']} | {r['folds']} | "
                     f"{a[0]:.3f} ± {a[1]:.3f} | {b[0]:.3f} ± {b[1]:.3f} | "
                     f"{r['train_s']:.1f} | {r['peak_mb']:.0f} | {r['train_sps']:.1f} | "
                     f"{r['predict_sps']:.1f} |")
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--datasets', default=','.join(SUITE),
                   help=f"comma-separated, from: {', '.join([*DATASETS, *RAREFIED])} "
                   f"(default, the suite: {', '.join(SUITE)})")
    p.add_argument('--variants', default='rf,rf-relative,linear,aam',
                   help='comma-separated VARIANTS keys; rf-relative (the forest on relative '
                   'abundance) costs seconds and shows what the forest gets from depth')
    p.add_argument('--folds', type=int, default=5, help='folds / seeds per data set (max 5 '
                   'for the grouped ones)')
    p.add_argument('--only-folds', default='', metavar='I,J',
                   help='run only these fold numbers (0-based), e.g. for a quick lever check')
    p.add_argument('--split-seed', type=int, default=0,
                   help='0: the standard splits; another value: a fresh draw of folds / '
                   'stratified splits, never used to choose a setting')
    p.add_argument('--quick', action='store_true', help='2 folds and ~1/5 of the epochs')
    p.add_argument('--threads', type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument('--output', default=str(ROOT / 'benchmarks' / 'results.md'),
                   help="markdown file to write ('' = do not write)")
    p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                   help='a fit parameter for the q2-aam variants of this run, e.g. --set epochs=20 '
                   '(repeatable; the model is then named with the override)')
    p.add_argument('--predictions', default='', metavar='TSV',
                   help='append every test sample\'s prediction to this TSV, to read a row\'s '
                   'errors or pool split draws; "{dataset}" in the name gives one file per data '
                   'set, each written as soon as its rows are done')
    p.add_argument('--list', action='store_true')
    args = p.parse_args(argv)
    if args.list:
        for k, v in VARIANTS.items():
            print(f'{k:14s} {v}')
        return []
    import ast
    import torch
    global THREADS
    THREADS = args.threads
    torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.set:
        k, _, val = item.partition('=')
        try:
            overrides[k] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            overrides[k] = val
    folds = 2 if args.quick else args.folds
    rows = []
    started = time.time()
    for key in args.datasets.split(','):
        ds = load_dataset(key)
        # (fold number, split): --only-folds keeps each fold's number, and so its seeds
        splits = list(enumerate(make_splits(ds, folds, args.split_seed)))
        if args.only_folds:
            keep = {int(i) for i in args.only_folds.split(',')}
            splits = [(i, split) for i, split in splits if i in keep]
        for name in args.variants.split(','):
            variant, label = VARIANTS[name], name
            if overrides and isinstance(variant, ProductVariant):
                variant = replace(variant, params={**variant.params, **overrides})
                label = name + ' ' + ' '.join(args.set)
            print(f'{key}: {label}', flush=True)
            row = evaluate(label, variant, ds, splits, quick=args.quick)
            if row['out_of_fold'] and args.predictions:
                write_out_of_fold(args.predictions.format(dataset=key).replace(
                    '.tsv', '') + '-oof.tsv', row['out_of_fold'], args.split_seed)
            row.pop('out_of_fold')
            rows += [row] + row.pop('derived')
        if '{dataset}' in args.predictions:    # kept even if a later data set fails
            write_predictions(args.predictions.format(dataset=key),
                              [r for r in rows if r['dataset'] == key], args.split_seed)
    table = format_table(rows)
    print(table)
    across = across_studies(rows, args.split_seed)
    if across:
        print(across)
        table += '\n\n' + across
    if args.predictions and '{dataset}' not in args.predictions:
        write_predictions(args.predictions, rows, args.split_seed)
    if args.output:
        command = ' '.join(shlex.quote(a) for a in [sys.executable.replace(str(ROOT) + '/', '')]
                           + ['benchmarks/accuracy.py'] + (argv if argv is not None
                                                           else sys.argv[1:]))
        write_results(args.output, table, command, time.time() - started,
                      title=('Quick check (2 folds, 1/5 of the epochs): ' if args.quick
                             else 'Main results: ') + ', '.join(args.datasets.split(','))
                      + (f' (fresh splits, seed {args.split_seed})' if args.split_seed else ''),
                      threads=args.threads)
    return rows


def across_studies(rows, split_seed):
    """q2-aam minus the forest per row and pooled over rows (pooled.across_table), when the
    run has both; the skipped targets are listed with the reason."""
    import pandas as pd
    from pooled import across_table, split_scores
    records = [dict(split_seed=split_seed, **rec) for r in rows for rec in r['per_sample']]
    models = {r['model'] for r in rows}
    if not records or 'rf' not in models or len(models) < 2:
        return ''
    text = across_table(split_scores(pd.DataFrame(records)), 'rf', seen=SEEN)
    skipped = '\n'.join(f'- skipped {k}: {why}' for k, why in SKIPPED.items())
    return f'{text}\nTargets left out of the suite:\n\n{skipped}\n'


def write_results(path, table, command, seconds, title='Main results', threads=None):
    """Replace the section called ``title`` in the results file (other sections stay)."""
    path = Path(path)
    stamp = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
    section = (f'## {title}\n\nRun {stamp} on {platform.node() or "?"}: '
               f'{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), '
               f'{threads or "default"} torch threads; total {seconds / 60:.1f} min '
               '(the machine was shared with other jobs: times are inflated).\n\n'
               f'Command: `{command}`\n\n{table}\n\n'
               'R² and MAE (weeks) for sleep-apnea/age are per fold (whole mice held out); '
               'accuracy and macro one-vs-rest AUROC for moving-pictures/body-site are per '
               'stratified 80/20 split, and for moving-pictures-by-day per fold of whole '
               'person-days held out. Values are mean ± sd over folds. Train time includes '
               'pretraining and every ensemble member; peak MB is the process\'s peak RSS '
               'during that row.\n\n')
    text = path.read_text() if path.exists() else '# q2-aam accuracy benchmark\n\n'
    start = text.find(f'## {title}\n')
    if start >= 0:
        end = text.find('\n## ', start + 5)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else '')
    else:
        text = text.rstrip('\n') + '\n\n' + section
    path.write_text(text)
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
