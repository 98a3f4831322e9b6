"""plot_validation: a model's best-epoch figures, loss curves and tables as a .qzv."""
import html
import importlib.resources
import os

import numpy as np
import pandas as pd
import q2templates
import qiime2

from .engine import metrics, plots
from .engine.savedmodel import SavedModel

TITLES = {'encoder': 'UniFrac distances of validation sample pairs',
          'regression': 'Predicted against true values of the validation samples',
          'classification': 'Confusion matrix of the validation samples'}


def ensemble_validation(model: SavedModel):
    """One validation row per sample: for an ensemble, its members' predictions averaged
    (class probabilities averaged, then the likeliest class), as predict would give."""
    table = model.validation
    if model.ensemble_size == 1 or 'member' not in table or len(table) == 0:
        return table
    grouped = table.drop(columns='member').groupby(level=0, sort=False)
    if model.task == 'regression':
        return grouped.agg({'truth': 'first', 'prediction': 'mean'})
    labels = list(model.config['labels'])
    combined = grouped[[f'prob:{name}' for name in labels]].mean()
    combined.insert(0, 'prediction', [labels[i] for i in combined.to_numpy().argmax(1)])
    combined.insert(0, 'truth', grouped['truth'].first())
    return combined


def _figure(model: SavedModel, table):
    """The best epoch's validation figure and its metrics, or (None, {}) without validation.
    ``table``: the model's validation rows, one per sample (ensemble_validation)."""
    if table is None or len(table) == 0:
        return None, {}
    if model.task == 'classification':
        labels = list(model.config['labels'])
        lookup = {name: i for i, name in enumerate(labels)}
        truth = table['truth'].astype(str).map(lookup).to_numpy(int)
        predicted = table['prediction'].astype(str).map(lookup).to_numpy(int)
        prob_columns = [f'prob:{name}' for name in labels]
        probabilities = (table[prob_columns].to_numpy(float)
                         if all(c in table for c in prob_columns) else np.eye(len(labels))[predicted])
        m = metrics.classification_metrics(truth, probabilities, len(labels))
        return plots.confusion_figure(truth, predicted, labels), m
    truth, predicted = table['truth'].to_numpy(float), table['prediction'].to_numpy(float)
    m = metrics.regression_metrics(truth, predicted)
    if model.task == 'encoder' and not model.config['model']['n_outputs']:
        return plots.unifrac_figure(truth, predicted), m
    return plots.regression_figure(truth, predicted), m


def out_of_fold(model: SavedModel):
    """Whether the validation rows are the stack's out-of-fold predictions (fit stores them
    there when it holds no validation split out), or a model of the release before stacking
    that calibrated cross-fitted members."""
    config = model.config
    if config.get('training', {}).get('validation_size'):
        return False
    return 'fold' in model.validation or bool(config.get('calibration'))


def member_rows(model: SavedModel):
    """(name, weight, score, loss) of each member of the stack and of the blend."""
    stack = model.config.get('stack') or {}
    scores = (stack.get('out_of_fold') or {}).get('scores')
    if not scores:
        return [], '', ''
    metric, loss = ('r2', 'mse') if model.task == 'regression' else ('accuracy', 'log_loss')
    rows = [(m, f'{w:.3f}', f'{scores[m][metric]:.3f}', f'{scores[m][loss]:.4g}')
            for m, w in zip(stack['members'], stack['weights'])]
    rows.append(('the blend', '1.000', f'{scores["blend"][metric]:.3f}',
                 f'{scores["blend"][loss]:.4g}'))
    return rows, metric, loss


def plot_validation(output_dir: str, model: SavedModel) -> None:
    figures = []
    validation = ensemble_validation(model)
    figure, scores = _figure(model, validation)
    cross_fitted = out_of_fold(model)
    if figure is not None:
        plots.save_figure(figure, os.path.join(output_dir, 'validation'))
        title = TITLES[model.task]
        if cross_fitted:
            title = ('Confusion matrix of the out-of-fold predictions (each training sample '
                     'predicted by the members that did not fit it, blended)'
                     if model.task == 'classification' else
                     'Predicted against true values of the out-of-fold predictions (each '
                     'training sample predicted by the members that did not fit it, blended)')
        elif model.ensemble_size > 1:
            title += f' (the {model.ensemble_size} ensemble members\' predictions averaged)'
        figures.append(('validation', title))
    history = model.history
    if len(history):
        plots.save_figure(plots.loss_curves_figure(history), os.path.join(output_dir, 'losses'))
        figures.append(('losses', 'Training and validation loss per epoch'))
    validation.to_csv(os.path.join(output_dir, 'validation.tsv'), sep='\t')
    if model.ensemble_size > 1:
        model.validation.to_csv(os.path.join(output_dir, 'validation-by-member.tsv'), sep='\t')
    history.to_csv(os.path.join(output_dir, 'history.tsv'), sep='\t', index=False)
    config = model.config
    summary = [('task', model.task), ('best epoch', config.get('best_epoch')),
               ('epochs run', config.get('epochs_run')),
               ('training samples', config.get('training', {}).get('samples')),
               ('out-of-fold samples' if cross_fitted else 'validation samples',
                model.validation.index.nunique())]
    if model.ensemble_size > 1:    # the figure and scores are the members' average
        summary.insert(1, ('ensemble members', model.ensemble_size))
    if config.get('training', {}).get('target_column'):
        summary.append(('metadata column', config['training']['target_column']))
    summary += [(name, f'{value:.4f}' if isinstance(value, float) else value)
                for name, value in scores.items()]
    last = history.tail(1).T.iloc[:, 0] if len(history) else pd.Series(dtype=float)
    members, member_metric, member_loss = member_rows(model)
    template = importlib.resources.files('q2_aam') / 'assets' / 'index.html'
    with importlib.resources.as_file(template) as path:     # renders to output_dir/index.html
        q2templates.render(str(path), output_dir, context={
            'title': f'q2-aam {model.task} model',
            'has_validation': len(model.validation) > 0,
            'out_of_fold': cross_fitted,
            'summary': [(html.escape(str(k)), html.escape(str(v))) for k, v in summary],
            'figures': figures,
            'members': [tuple(html.escape(str(x)) for x in row) for row in members],
            'member_metric': member_metric, 'member_loss': member_loss,
            'last_epoch': [(html.escape(str(k)), f'{v:.4g}' if isinstance(v, float) else v)
                           for k, v in last.items()],
        })


def _scores(task, truth, predicted, probabilities, labels):
    """{metric: function of row indices} for one model's test predictions."""
    if task == 'regression':
        return {'R²': lambda r: metrics.regression_metrics(truth[r], predicted[r])['r2'],
                'MAE': lambda r: metrics.regression_metrics(truth[r], predicted[r])['mae']}
    lookup = {c: i for i, c in enumerate(labels)}
    t = np.array([lookup[x] for x in truth])
    p = np.array([lookup.get(x, -1) for x in predicted])
    out = {'accuracy': lambda r: float((t[r] == p[r]).mean())}
    if probabilities is not None:
        out['AUROC (macro, one-vs-rest)'] = lambda r: metrics.classification_metrics(
            t[r], probabilities[r], len(labels))['auroc']
    return out


def _probability_matrix(frame, ids, labels):
    if frame is None:
        return None
    frame = frame.reindex(index=ids, columns=labels).fillna(0.0)
    return frame.to_numpy(float)


def accuracy_report(output_dir: str, predictions: pd.Series, truth: qiime2.MetadataColumn,
                    baseline_predictions: pd.Series = None,
                    probabilities: pd.DataFrame = None,
                    baseline_probabilities: pd.DataFrame = None,
                    training_targets: pd.Series = None,
                    groups: qiime2.CategoricalMetadataColumn = None) -> None:
    ids = [str(i) for i in predictions.index]
    values = truth.to_series()
    values.index = values.index.astype(str)
    missing = [i for i in ids if i not in values.index or pd.isna(values.get(i))]
    if missing:
        raise ValueError(f'{len(missing)} of {len(ids)} predicted samples have no true value '
                         f'in metadata column {truth.name!r}: {missing[:5]}. Give the column '
                         'the predictions were made for.')
    regression = isinstance(truth, qiime2.NumericMetadataColumn)
    task = 'regression' if regression else 'classification'
    t = values.reindex(ids).to_numpy(float if regression else object)
    if not regression:
        t = t.astype(str)
    labels = None if regression else sorted(set(t) | set(predictions.astype(str)) | (
        set(probabilities.columns) if probabilities is not None else set()))
    models = [('q2-aam', predictions, probabilities)]
    if baseline_predictions is not None:
        models.append(('random forest (q2-sample-classifier defaults)', baseline_predictions,
                       baseline_probabilities))
    units = None
    group_rows = []
    if groups is not None:
        g = groups.to_series()
        g.index = g.index.astype(str)
        units = g.reindex(ids).astype(str).to_numpy()
        test_groups = set(units)
        group_rows.append(('groups among the test samples', len(test_groups)))
        if training_targets is not None:
            train_groups = set(g.reindex([str(i) for i in training_targets.index])
                               .astype(str))
            group_rows += [('groups among the training samples', len(train_groups)),
                           ('groups on both sides', len(test_groups & train_groups))]
    rows, funcs = [], {}
    for name, pred, prob in models:
        pred = pred.reindex(ids)
        p = pred.to_numpy(float) if regression else pred.astype(str).to_numpy()
        scored = _scores(task, t, p, _probability_matrix(prob, ids, labels)
                         if not regression else None, labels)
        funcs[name] = scored
        for metric, f in scored.items():
            everyone = np.arange(len(ids))
            low, high = metrics.bootstrap_interval(f, len(ids), units)
            rows.append((name, metric, f'{f(everyone):.3f}', f'({low:.3f}, {high:.3f})'))
    differences = []
    if len(models) == 2:
        ours, theirs = funcs[models[0][0]], funcs[models[1][0]]
        for metric in ours:
            if metric in theirs:
                diff = (lambda r, m=metric: ours[m](r) - theirs[m](r))
                low, high = metrics.bootstrap_interval(diff, len(ids), units)
                differences.append((metric, f'{diff(np.arange(len(ids))):+.3f}',
                                    f'({low:+.3f}, {high:+.3f})'))
    figures = []
    for k, (name, pred, _) in enumerate(models):
        pred = pred.reindex(ids)
        if regression:
            fig = plots.regression_figure(t, pred.to_numpy(float), title=name.split(' (')[0])
        else:
            lookup = {c: i for i, c in enumerate(labels)}
            fig = plots.confusion_figure([lookup[x] for x in t],
                                         [lookup[x] for x in pred.astype(str)], labels,
                                         title=name.split(' (')[0])
        plots.save_figure(fig, os.path.join(output_dir, f'model-{k}'))
        figures.append((f'model-{k}', name))
    if not regression and probabilities is not None:
        fig = plots.roc_figure([lookup[x] for x in t], [
            (name, _probability_matrix(prob, ids, labels)) for name, _, prob in models
            if prob is not None], labels)
        plots.save_figure(fig, os.path.join(output_dir, 'roc'))
        figures.append(('roc', 'ROC curves (one-vs-rest, macro average)'))
    table = pd.DataFrame({'truth': t}, index=pd.Index(ids, name='sample-id'))
    for name, pred, _ in models:
        table[name] = pred.reindex(ids).to_numpy()
    table.to_csv(os.path.join(output_dir, 'predictions.tsv'), sep='\t')
    template = importlib.resources.files('q2_aam') / 'assets' / 'accuracy' / 'index.html'
    with importlib.resources.as_file(template) as path:
        q2templates.render(str(path), output_dir, context={
            'title': f'q2-aam {task}: accuracy on {len(ids)} test samples',
            'rows': [tuple(html.escape(str(x)) for x in r) for r in rows],
            'differences': [tuple(html.escape(str(x)) for x in r) for r in differences],
            'groups': [(html.escape(str(k)), v) for k, v in group_rows],
            'grouped': groups is not None,
            'figures': figures,
        })
