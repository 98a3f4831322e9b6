"""classify-samples / regress-samples and their -ncv forms: q2-sample-classifier's
workflow, run with q2-aam's fit, with subjects kept on one side of every split.

Each pipeline is QIIME 2 glue around the plugin's own actions (fit, predict,
predict-probabilities, accuracy-report) and q2-sample-classifier's
default random forest, fitted on the same training samples, so the report compares the two
on the very same split.
"""
import biom
import numpy as np
import pandas as pd

from . import inputs
from .plan import D
from ..engine import folds as folds_module

# the fit settings a pipeline passes on (every other fit setting: run fit yourself)
FIT_PASSED = ('ensemble_size', 'epochs', 'blend', 'transformer_weight', 'linear_weight',
              'tree_weight', 'kmer_weight', 'max_asvs', 'device', 'threads')


def _samples(table, metadata, groups, missing_samples, classification):
    """The table's samples that have a target (and a group): (ids, targets, groups or None).
    Table samples without a target are an error unless missing_samples is 'ignore'."""
    ids = [str(i) for i in table.ids('sample')]
    values = metadata.to_series()
    values.index = values.index.astype(str)
    values = values.reindex(ids)
    missing = values[values.isna()].index.tolist()
    if missing and missing_samples == 'error':
        raise ValueError(
            f'{len(missing)} of {len(ids)} samples of the table have no value in metadata '
            f'column {metadata.name!r}: {inputs.preview(missing)}. Nothing was fitted. Pass '
            '--p-missing-samples ignore to leave them out, or filter the table first.')
    if missing:
        inputs.note(f'left out {len(missing)} of {len(ids)} samples that have no value in '
                    f'metadata column {metadata.name!r}: {inputs.preview(missing)}.')
    values = values.dropna()
    kept = list(values.index)
    group_of = None if groups is None else inputs.group_values(groups, kept)
    if classification:
        values = values.astype(str)
    return kept, values, group_of


def _strata(values, classification, stratify):
    """What a split keeps in proportion: the class, a regressor's target quintile (with
    stratify), or nothing."""
    if classification:
        return values.to_numpy()
    if stratify:
        return pd.qcut(values.astype(float), 5, labels=False, duplicates='drop').to_numpy()
    return None


def _absent_classes(values, train, test):
    """Classes of the test rows that no training row has."""
    return sorted(set(values.iloc[test]) - set(values.iloc[train]))


def _split(ids, values, group_of, test_size, random_state, stratify, classification):
    strata = _strata(values, classification, stratify)
    try:
        train, test = folds_module.train_test_rows(len(ids), test_size, stratify=strata,
                                                   groups=group_of, seed=random_state)
    except folds_module.FoldError as e:
        raise ValueError(f'The samples cannot be split into training and test samples: {e} '
                         'Nothing was fitted. Lower test_size, or give more groups.') from None
    if not len(train) or not len(test):
        raise ValueError(f'The split leaves the {"training" if not len(train) else "test"} '
                         f'side empty ({len(ids)} samples'
                         f'{"" if group_of is None else f", {len(set(group_of))} groups"}). '
                         'Nothing was fitted. Change test_size, or give more samples.')
    if classification:
        absent = _absent_classes(values, train, test)
        if absent:
            raise ValueError(
                f'The split leaves {len(absent)} classes out of the training samples: '
                f'{inputs.preview(absent)} (their every sample, or every group, fell on the '
                'test side). Nothing was fitted. Choose another random_state or test_size, or '
                'leave out classes with too few groups.')
    ids = np.asarray(ids, dtype=object)
    if group_of is not None:
        inputs.note(f'split by groups: {len(set(group_of[train]))} groups ({len(train)} '
                    f'samples) to train on, {len(set(group_of[test]))} groups ({len(test)} '
                    'samples) to test on; no group is on both sides.')
    return list(ids[train]), list(ids[test])


def _subtable(ctx, table, ids):
    sub = table.filter(ids, axis='sample', inplace=False)
    sub.remove_empty(axis='observation', inplace=True)
    return ctx.make_artifact('FeatureTable[Frequency]', sub)


def _targets(ctx, values, ids):
    return ctx.make_artifact('SampleData[TrueTargets]', values.reindex(ids).rename(
        values.name))


def _forest(ctx, classification, train_table, test_table, metadata, random_state):
    """q2-sample-classifier's default random forest on the same training samples."""
    if classification:
        fit = ctx.get_action('sample_classifier', 'fit_classifier')
        predict = ctx.get_action('sample_classifier', 'predict_classification')
    else:
        fit = ctx.get_action('sample_classifier', 'fit_regressor')
        predict = ctx.get_action('sample_classifier', 'predict_regression')
    estimator, _ = fit(table=train_table, metadata=metadata, random_state=random_state,
                       missing_samples='ignore')
    out = predict(table=test_table, sample_estimator=estimator)
    return out if classification else (out[0], None)


def _pipeline(ctx, classification, table, sequences, metadata, groups, pretrained, test_size,
              random_state, stratify, missing_samples, fit_params):
    view = table.view(biom.Table)
    ids, values, group_of = _samples(view, metadata, groups, missing_samples, classification)
    train_ids, test_ids = _split(ids, values, group_of, test_size, random_state, stratify,
                                 classification)
    train_table, test_table = _subtable(ctx, view, train_ids), _subtable(ctx, view, test_ids)
    fit = ctx.get_action('aam', 'fit')
    model, importance = fit(table=train_table, sequences=sequences, metadata=metadata,
                            groups=groups, pretrained=pretrained, random_seed=random_state,
                            **fit_params)
    predictions, = ctx.get_action('aam', 'predict')(model=model, table=test_table,
                                                    sequences=sequences)
    probabilities = None
    if classification:
        probabilities, = ctx.get_action('aam', 'predict_probabilities')(
            model=model, table=test_table, sequences=sequences)
    forest, forest_probabilities = _forest(ctx, classification, train_table, test_table,
                                           metadata, random_state)
    training_targets = _targets(ctx, values, train_ids)
    test_targets = _targets(ctx, values, test_ids)
    report = ctx.get_action('aam', 'accuracy_report')
    extra = {} if groups is None else {'groups': groups}
    if classification:
        extra.update(probabilities=probabilities, baseline_probabilities=forest_probabilities)
    accuracy_results, = report(predictions=predictions, truth=metadata,
                               baseline_predictions=forest, training_targets=training_targets,
                               **extra)
    out = [model, predictions] + ([probabilities] if classification else [])
    return tuple(out + [importance, accuracy_results, training_targets, test_targets])


def _ncv(ctx, classification, table, sequences, metadata, groups, pretrained, cv,
         random_state, stratify, missing_samples, fit_params):
    view = table.view(biom.Table)
    ids, values, group_of = _samples(view, metadata, groups, missing_samples, classification)
    strata = _strata(values, classification, stratify)
    try:
        folds = folds_module.cross_fit_folds(len(ids), cv, stratify=strata, groups=group_of,
                                             seed=random_state)
    except folds_module.FoldError as e:
        raise ValueError(f'cv {cv} asks for more folds than the samples allow: {e} Nothing '
                         'was fitted. Lower cv.') from None
    ids = np.asarray(ids, dtype=object)
    if classification:
        for f, (train, test) in enumerate(folds):
            absent = _absent_classes(values, train, test)
            if absent:
                raise ValueError(
                    f'Fold {f + 1} of {cv} leaves {len(absent)} classes out of its training '
                    f'samples: {inputs.preview(absent)}. Nothing was fitted. Lower cv, or '
                    'leave out classes with too few samples or groups.')
    fit = ctx.get_action('aam', 'fit')
    predict = ctx.get_action('aam', 'predict')
    probabilities_of = ctx.get_action('aam', 'predict_probabilities')
    predictions, probabilities, importances, forest, forest_p = [], [], [], [], []
    for f, (train, test) in enumerate(folds):
        inputs.note(f'fold {f + 1} of {cv}: training on {len(train)} samples, testing on '
                    f'{len(test)}.')
        train_table = _subtable(ctx, view, list(ids[train]))
        test_table = _subtable(ctx, view, list(ids[test]))
        model, importance = fit(table=train_table, sequences=sequences, metadata=metadata,
                                groups=groups, pretrained=pretrained,
                                random_seed=random_state, **fit_params)
        predictions.append(predict(model=model, table=test_table,
                                   sequences=sequences)[0].view(pd.Series))
        if classification:
            probabilities.append(probabilities_of(model=model, table=test_table,
                                                  sequences=sequences)[0].view(pd.DataFrame))
        importances.append(importance.view(pd.DataFrame))
        p, q = _forest(ctx, classification, train_table, test_table, metadata, random_state)
        forest.append(p.view(pd.Series))
        if q is not None:
            forest_p.append(q.view(pd.DataFrame))
    kind = 'ClassifierPredictions' if classification else 'RegressorPredictions'
    joined = ctx.make_artifact(f'SampleData[{kind}]', pd.concat(predictions).rename(
        'prediction'))
    forest_joined = ctx.make_artifact(f'SampleData[{kind}]', pd.concat(forest).rename(
        'prediction'))
    importance = ctx.make_artifact('FeatureData[Importance]', _mean_importance(importances))
    extra = {} if groups is None else {'groups': groups}
    out = [joined]
    if classification:
        probs = ctx.make_artifact('SampleData[Probabilities]',
                                  pd.concat(probabilities).fillna(0.0))
        extra.update(probabilities=probs, baseline_probabilities=ctx.make_artifact(
            'SampleData[Probabilities]', pd.concat(forest_p).fillna(0.0)))
        out.append(probs)
    accuracy_results, = ctx.get_action('aam', 'accuracy_report')(
        predictions=joined, truth=metadata, baseline_predictions=forest_joined, **extra)
    return tuple(out + [importance, accuracy_results])


def _mean_importance(tables):
    """Importances averaged over folds (an ASV absent from a fold's training samples
    counts 0 there), ordered by the blend's."""
    joined = pd.concat(tables, axis=0).fillna(0.0)
    mean = joined.groupby(level=0).sum() / len(tables)
    mean.index.name = 'feature-id'
    return mean.sort_values('importance', ascending=False)


def _fit_params(local):
    return {k: local[k] for k in FIT_PASSED}


def classify_samples(ctx, table, sequences, metadata, groups=None, pretrained=None,
                     test_size=0.2, random_state=0, missing_samples='error',
                     ensemble_size=D['ensemble_size'], epochs=D['epochs'], blend=D['blend'],
                     transformer_weight=D['transformer_weight'],
                     linear_weight=D['linear_weight'], tree_weight=D['tree_weight'],
                     kmer_weight=D['kmer_weight'],
                     max_asvs=D['max_asvs'], device=D['device'], threads=D['threads']):
    return _pipeline(ctx, True, table, sequences, metadata, groups, pretrained, test_size,
                     random_state, True, missing_samples, _fit_params(locals()))


def regress_samples(ctx, table, sequences, metadata, groups=None, pretrained=None,
                    test_size=0.2, random_state=0, stratify=False, missing_samples='error',
                    ensemble_size=D['ensemble_size'], epochs=D['epochs'], blend=D['blend'],
                    transformer_weight=D['transformer_weight'],
                    linear_weight=D['linear_weight'], tree_weight=D['tree_weight'],
                    kmer_weight=D['kmer_weight'],
                    max_asvs=D['max_asvs'], device=D['device'], threads=D['threads']):
    return _pipeline(ctx, False, table, sequences, metadata, groups, pretrained, test_size,
                     random_state, stratify, missing_samples, _fit_params(locals()))


def classify_samples_ncv(ctx, table, sequences, metadata, groups=None, pretrained=None,
                         cv=5, random_state=0, missing_samples='error',
                         ensemble_size=D['ensemble_size'], epochs=D['epochs'],
                         blend=D['blend'], transformer_weight=D['transformer_weight'],
                         linear_weight=D['linear_weight'], tree_weight=D['tree_weight'],
                         kmer_weight=D['kmer_weight'],
                         max_asvs=D['max_asvs'], device=D['device'], threads=D['threads']):
    return _ncv(ctx, True, table, sequences, metadata, groups, pretrained, cv, random_state,
                True, missing_samples, _fit_params(locals()))


def regress_samples_ncv(ctx, table, sequences, metadata, groups=None, pretrained=None,
                        cv=5, random_state=0, stratify=False, missing_samples='error',
                        ensemble_size=D['ensemble_size'], epochs=D['epochs'],
                        blend=D['blend'], transformer_weight=D['transformer_weight'],
                        linear_weight=D['linear_weight'], tree_weight=D['tree_weight'],
                        kmer_weight=D['kmer_weight'],
                        max_asvs=D['max_asvs'], device=D['device'], threads=D['threads']):
    return _ncv(ctx, False, table, sequences, metadata, groups, pretrained, cv, random_state,
                stratify, missing_samples, _fit_params(locals()))


__all__ = ['classify_samples', 'regress_samples', 'classify_samples_ncv',
           'regress_samples_ncv']
