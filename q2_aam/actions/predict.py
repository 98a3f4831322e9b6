"""predict / predict-probabilities / feature-importance: a fitted model applied to a table.

A stacked model's prediction is the weighted blend of its members' (the transformer
ensemble's, the linear member's, the tree member's, the k-mer member's); a model fitted
before stacking predicts as it always did (its linear half at its fixed weight).
"""
import numpy as np
import pandas as pd
from q2_types.feature_table import BIOMV210Format

from . import inputs
from .plan import threads as threads_setting
from ..engine import calibration, importance, linear, members, stack as stack_module
from ..engine.predict import average_predictions, class_probabilities, \
    predict as engine_predict
from ..engine.runtime import resolve_device
from ..engine.savedmodel import SavedModel


def _check_declared_task(model: SavedModel):
    """An artifact typed as one task that holds another was edited by hand: QIIME 2 would
    type the predictions by the artifact's type, so nothing may be predicted."""
    if model.declared_task not in (None, model.task):
        raise ValueError(
            f'This model artifact is typed as a {model.declared_task} model, but its '
            f'config.json holds a {model.task} model: its metadata.yaml was changed by hand. '
            f'Nothing was predicted. Export it (qiime tools export) and import it again with '
            f'the type of its task, or use the artifact fit wrote.')


def _predict_outputs(model: SavedModel, table, sequences, batch_size, device, threads):
    _check_declared_task(model)
    if model.task == 'encoder':
        raise ValueError('This model is a pretrained encoder: it predicts no metadata. Fit '
                         'a regressor or classifier from it with `qiime aam fit`, then '
                         'predict with that.')
    import torch
    if threads_setting(threads):
        torch.set_num_threads(threads_setting(threads))
    counts, _, seqs, data = _read(model, table, sequences)
    index = pd.Index(data.sample_ids, name='id')
    stack = (stack_module.Stack.from_config(model.config['stack'], model.task)
             if 'stack' in model.config else None)
    out = _transformer_outputs(model, data, batch_size, device,
                               each_model=stack is not None and stack.calibrate_each_model)
    if stack is not None:
        out = stack_module.apply_stack(stack, _member_outputs(model, out, counts, seqs, index))
    elif model.linear is not None:        # a model fitted before stacking: as it predicted
        out = _with_linear_half(model, out, counts, seqs, index)
    _check_finite(out.reshape(len(out), -1).sum(axis=1), index)
    return index, out


def _read(model, table, sequences):
    """A table and its sequences as the model reads them: (counts, their feature IDs and
    sequences, data)."""
    counts, sample_ids, feature_ids = inputs.table_parts(table)
    seqs = inputs.sequences_for(feature_ids, sequences)
    data = inputs.build_data(counts, sample_ids, feature_ids, seqs,
                             model.config['max_asvs'], model.config['max_bp'],
                             read_floor=model.config.get('read_floor', 0.0))
    return counts, feature_ids, seqs, data


def _transformer_outputs(model, data, batch_size, device, each_model=False):
    """The transformer ensemble's predictions: values on the target's scale, or class
    probabilities (a model from before stacking applies its members' calibration). With
    ``each_model`` a classifier's are each model's, (models, n, C), for a stack that
    calibrates them one by one."""
    device = resolve_device(device) if isinstance(device, str) else device
    outputs = [engine_predict(member, data, batch_size=batch_size, device=device)['prediction']
               for member in model.build_models()]
    if model.task == 'classification' and model.config.get('calibration'):
        outputs = [calibration.apply_class_calibration(raw, model.config['calibration'])
                   for raw in outputs]
    if model.task == 'classification' and each_model:
        return np.stack([class_probabilities(raw) for raw in outputs])
    raw = outputs[0] if len(outputs) == 1 else average_predictions(outputs, model.task)
    if model.task == 'regression':
        return raw[:, 0] * model.config['target_std'] + model.config['target_mean']
    return class_probabilities(raw)


def _member_outputs(model, transformer, counts, seqs, index):
    """Every member's predictions by name, what the stack weighs; samples that share no
    ASV with the training samples are named in a warning."""
    outputs = {'transformer': transformer}
    if model.tree is not None:
        outputs['tree'] = members.member_outputs('tree', model.tree, counts, seqs)
    if model.kmers is not None:
        outputs['kmers'] = members.member_outputs('kmers', model.kmers, counts, seqs)
    if model.linear is not None:          # its values, and which samples share no ASV
        outputs['linear'], known = linear.linear_outputs(model.linear, counts, seqs)
        _warn_unknown(index, known)
    return outputs


def member_predictions(model: SavedModel, table, sequences, batch_size=64, device='cpu',
                       each_model=False):
    """Each member's predictions of a stacked model (values, or class probabilities), by
    member name: what the blend weighs. For comparing members and reading a model.
    ``each_model``: a classifier's transformer gives each model's probabilities,
    (models, n, C), not their average."""
    counts, _, seqs, data = _read(model, table, sequences)
    index = pd.Index(data.sample_ids, name='id')
    transformer = _transformer_outputs(model, data, batch_size, device, each_model)
    return index, _member_outputs(model, transformer, counts, seqs, index)


def _warn_unknown(index, known):
    unknown = index[known == 0]
    if len(unknown):
        inputs.warn(f'{len(unknown)} of {len(index)} samples share no ASV (by sequence) with '
                    f'the samples the model was fitted on: {inputs.preview(unknown)}. The '
                    'linear and tree members predict the training mean (or class shares) '
                    'for them; only the transformers and the k-mer member read their '
                    'sequences.')


def _with_linear_half(model, transformer, counts, seqs, index):
    """The weighted average of the transformer's predictions and the linear half's."""
    weight = model.config['linear']['weight']
    half, known = linear.linear_outputs(model.linear, counts, seqs)
    _warn_unknown(index, known)
    return (1 - weight) * transformer + weight * half


def _check_finite(values, index):
    """No prediction is ever written as inf or NaN: stop and say which samples."""
    with np.errstate(invalid='ignore', over='ignore'):
        bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(
            f'The model gave {int(bad.sum())} of {len(values)} samples a prediction that is not '
            f'a finite number: {inputs.preview(index[bad])}. Nothing was written. The model '
            '(its weights or target scale) is damaged or was trained on extreme values: '
            'check config.json\'s target_mean and target_std, or fit it again.')


def predict(model: SavedModel, table: BIOMV210Format, sequences: pd.Series, batch_size: int = 64,
            device: str = 'auto', threads: int = 0) -> pd.Series:
    index, out = _predict_outputs(model, table, sequences, batch_size, device, threads)
    if model.task == 'regression':
        return pd.Series(out.astype(np.float64), index=index, name='prediction')
    labels = np.asarray(model.config['labels'], dtype=object)
    return pd.Series(labels[out.argmax(axis=1)], index=index, name='prediction')


def predict_probabilities(model: SavedModel, table: BIOMV210Format, sequences: pd.Series,
                          batch_size: int = 64, device: str = 'auto',
                          threads: int = 0) -> pd.DataFrame:
    _check_declared_task(model)
    if model.task == 'regression':
        raise ValueError('This model is a regressor: it has no class probabilities. Use '
                         '`qiime aam predict` for its predictions.')
    index, probabilities = _predict_outputs(model, table, sequences, batch_size, device,
                                            threads)
    return pd.DataFrame(probabilities.astype(np.float64), index=index,
                        columns=list(model.config['labels']))


def feature_importance(model: SavedModel, table: BIOMV210Format,
                       sequences: pd.Series) -> pd.DataFrame:
    """Each ASV's importance to each member of a fitted model and to its blend, over the
    samples of ``table`` (the training samples, to explain what the model learnt)."""
    _check_declared_task(model)
    if model.task == 'encoder':
        raise ValueError('This model is a pretrained encoder: it predicts nothing, so no ASV '
                         'matters to a prediction. Fit a regressor or classifier from it.')
    counts, feature_ids, seqs, data = _read(model, table, sequences)
    by_member = {'transformer': importance.transformer_importance(model.build_models(), data)}
    # build_data keeps the features the samples use: report on those, in that order
    used = list(data.feature_ids)
    order = {f: i for i, f in enumerate(feature_ids)}
    cols = [order[f] for f in used]
    used_counts, used_seqs = counts[:, cols], [seqs[i] for i in cols]
    if model.linear is not None:
        by_member['linear'] = importance.linear_importance(model.linear, used_counts,
                                                           used_seqs)
    if model.tree is not None:
        by_member['tree'] = importance.tree_importance(model.tree, used_seqs)
    if model.kmers is not None:
        by_member['kmers'] = importance.kmer_importance(model.kmers, used_counts, used_seqs)
    if 'stack' in model.config:
        weights = dict(zip(model.config['stack']['members'], model.config['stack']['weights']))
    else:          # a model from before stacking: its linear weight
        w = model.config['linear']['weight'] if model.linear is not None else 0.0
        weights = {'transformer': 1 - w, 'linear': w}
    table_out = pd.DataFrame({'importance': importance.blend_importance(by_member, weights)},
                             index=pd.Index(used, name='feature-id'))
    for name in stack_module.MEMBERS:
        if name in by_member:
            table_out[name] = by_member[name]
    return table_out.sort_values('importance', ascending=False)
