"""plot_validation: a model's best-epoch figures, loss curves and tables as a .qzv."""
import html
import importlib.resources
import os

import numpy as np
import pandas as pd
import q2templates

from .engine import metrics, plots
from .engine.checkpoint import SavedModel

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
