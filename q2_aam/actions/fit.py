"""`qiime aam fit`: a regressor or classifier of one metadata column, a stack of the
transformer ensemble, a linear member, a tree member and a k-mer member, and each ASV's
importance to it.

The transformer members are cross-fitted (member m fits all training samples but fold m and
predicts fold m), so their out-of-fold predictions cost no extra training; blend.py weighs
the members by those predictions.
"""
import dataclasses
import inspect
import os

import pandas as pd
import qiime2
import skbio
from q2_types.feature_table import BIOMV210Format

from . import blend as blend_module, inputs, runs
from .plan import ARCHITECTURE, D, FIT_NUC_WEIGHT, FIT_VALIDATION_SIZE, make_plan, \
    read_floor, train_settings
from .predict import feature_importance
from .processes import on_processes
from ..engine import folds as folds_module, runstate
from ..engine.model import AAM, AAMConfig, load_encoder_weights
from ..engine.predict import predict as engine_predict
from ..engine.runtime import resolve_device, seed_everything
from ..engine.savedmodel import SavedModel
from ..engine.trainer import target_scale

VIEWS = ('table', 'sequences', 'metadata', 'pretrained', 'distance_matrix', 'continue_from',
         'groups')


def fit(
        table: BIOMV210Format, sequences: pd.Series, metadata: qiime2.MetadataColumn,
        pretrained: SavedModel = None, distance_matrix: skbio.DistanceMatrix = None,
        continue_from: SavedModel = None, groups: qiime2.CategoricalMetadataColumn = None,
        freeze_encoder: bool = False, ignore_missing_samples: bool = False,
        target_weight: float = D['target_weight'], regression_loss: str = D['regression_loss'],
        max_bp: int = None, embedding_dim: int = None, attention_heads: int = None,
        attention_layers: int = None, nucleotide_layers: int = None, dropout: float = None,
        kmer_size: int = None,
        epochs: int = D['epochs'], batch_size: int = D['batch_size'],
        learning_rate: float = D['learning_rate'], weight_decay: float = D['weight_decay'],
        optimizer: str = D['optimizer'], scheduler: str = D['scheduler'],
        scheduler_params: str = D['scheduler_params'],
        warmup_fraction: float = D['warmup_fraction'], patience: int = D['patience'],
        max_grad_norm: float = D['max_grad_norm'],
        validation_size: float = FIT_VALIDATION_SIZE,
        max_asvs: int = D['max_asvs'], nuc_mask_ratio: float = D['nuc_mask_ratio'],
        unifrac_weight: float = D['unifrac_weight'], nuc_weight: float = FIT_NUC_WEIGHT,
        random_seed: int = D['random_seed'], device: str = D['device'],
        threads: int = D['threads'], tensorboard_dir: str = D['tensorboard_dir'],
        checkpoint_dir: str = D['checkpoint_dir'],
        histogram_frequency: int = D['histogram_frequency'],
        ensemble_size: int = D['ensemble_size'],
        rarefy_depth: int = D['rarefy_depth'], blend: str = D['blend'],
        transformer_weight: float = D['transformer_weight'],
        linear_weight: float = D['linear_weight'], tree_weight: float = D['tree_weight'],
        kmer_weight: float = D['kmer_weight'],
        processes: int = D['processes'],
        compile: bool = D['compile']) -> (SavedModel, pd.DataFrame):
    arguments = dict(locals())
    views = {k: arguments.pop(k) for k in VIEWS}
    if processes > 1:
        model = on_processes('fit', views, arguments)
    else:
        model = fit_model(views, arguments)
    return model, feature_importance(model, table, sequences)


def with_defaults(arguments):
    """fit's arguments: its defaults, then ``arguments`` (for q2_aam/launch.py's workers)."""
    return {**{k: p.default for k, p in inspect.signature(fit).parameters.items()
               if k not in VIEWS}, **arguments}


def fit_model(views, arguments):
    """The fitted model, trained on this process (one rank of several under torchrun)."""
    table, sequences, metadata = views['table'], views['sequences'], views['metadata']
    pretrained, continue_from = views['pretrained'], views['continue_from']
    distance_matrix, groups = views['distance_matrix'], views['groups']
    if arguments['freeze_encoder'] and pretrained is None:
        raise ValueError('freeze_encoder keeps a pretrained encoder unchanged, but no '
                         'pretrained encoder was given. Pass --i-pretrained, or leave '
                         'freeze_encoder off.')
    classification = isinstance(metadata, qiime2.CategoricalMetadataColumn)
    if continue_from is not None:
        _check_continuation(continue_from, pretrained, classification, arguments)
    plan = make_plan('fit', arguments, pretrained=pretrained, continue_from=continue_from,
                     distances=distance_matrix is not None)
    runs.check_folders(plan)
    tensorboard = runs.run_folder(plan['tensorboard_dir'])
    seed_everything(plan['random_seed'])
    counts, sample_ids, feature_ids = inputs.table_parts(table)
    seqs = inputs.sequences_for(feature_ids, sequences)
    keep, values = inputs.target_values(metadata, sample_ids)
    if distance_matrix is not None:
        keep = inputs.distances_for(keep, distance_matrix, plan['ignore_missing_samples'],
                                    what='table with a metadata value')
    counts, sample_ids = inputs.select_samples(counts, sample_ids, keep)
    values = values.reindex(sample_ids)
    group_of = None if groups is None else inputs.group_values(groups, sample_ids)
    labels, stratify = None, None
    if classification:
        inputs.note_numeric_looking(values, metadata.name)
        labels = inputs.class_labels(values, metadata.name, plan['validation_size'])
        if continue_from is not None:
            labels = _continued_labels(continue_from, labels, metadata.name)
        targets = values.astype(str).map({c: i for i, c in enumerate(labels)}).to_numpy()
        stratify = targets
    else:
        targets = inputs.regression_targets(values, metadata.name)
    distances = (None if distance_matrix is None else
                 inputs.distance_array(distance_matrix, sample_ids))
    data = inputs.build_data(counts, sample_ids, feature_ids, seqs, plan['max_asvs'],
                             plan['max_bp'], distances, targets, read_floor=read_floor(plan))
    cfg = AAMConfig(task='classification' if classification else 'regression',
                    n_outputs=len(labels) if classification else 1, max_bp=plan['max_bp'],
                    **{k: plan[k] for k in ARCHITECTURE})
    # one target scale for every member, so that their outputs can be averaged
    scale = None if classification else target_scale(targets) if continue_from is None else (
        continue_from.config['target_mean'], continue_from.config['target_std'])
    settings = train_settings(plan, tensorboard_dir=tensorboard, target_scale=scale)
    train_rows, val_rows = runs.validation_split(data, plan['validation_size'],
                                                 plan['random_seed'], stratify=stratify,
                                                 groups=group_of)
    folds = _member_folds(plan, continue_from, train_rows, stratify, group_of)
    lock = runs.start_checkpoints(plan, data, groups=group_of)
    results, held_out = [], []
    with runstate.held(lock):
        for member in range(plan['ensemble_size']):
            rows = (train_rows if folds is None else train_rows[folds[member][0]]), val_rows
            start = None if continue_from is None else continue_from.member_states()[member]
            result = _fit_member(cfg, pretrained, data, rows, settings, plan, member,
                                 class_names=labels, start=start)
            if folds is not None:
                held_out.append(_held_out_outputs(cfg, result, data,
                                                  train_rows[folds[member][1]], plan['device']))
            results.append(result)
    stack, fitted, table_oof = blend_module.blend(
        plan, cfg, data, counts, seqs, targets, train_rows, folds, held_out, continue_from,
        labels, group_of, scale)
    return runs.saved_model(cfg, plan, results, len(sample_ids), labels=labels,
                            extra={'target_column': metadata.name,
                                   'pretrained': pretrained is not None,
                                   'continued': continue_from is not None,
                                   'groups': None if groups is None else groups.name},
                            stack=stack, members=fitted, out_of_fold=table_oof,
                            continued=continue_from, read_floor=data.read_floor)


def _member_folds(plan, continue_from, train_rows, stratify, group_of):
    """The folds the transformer members are cross-fitted on (member m fits all but fold m
    and predicts fold m), as positions within ``train_rows``, or None: a fixed blend, a
    continued model or a single member train every member on every training sample."""
    if plan['blend'] != 'stacked' or continue_from is not None or plan['ensemble_size'] < 2:
        return None
    try:
        found = folds_module.cross_fit_folds(
            len(train_rows), plan['ensemble_size'],
            stratify=None if stratify is None else stratify[train_rows],
            groups=None if group_of is None else group_of[train_rows],
            seed=plan['random_seed'])
    except folds_module.FoldError as e:
        raise ValueError(f'The stacked blend deals the training samples into one fold per '
                         f'ensemble member ({plan["ensemble_size"]}), keeping groups whole: '
                         f'{e} Lower ensemble_size, or use blend fixed.') from None
    grouped = '' if group_of is None else ', whole groups kept together'
    inputs.note(f'each of the {len(found)} transformer members fits all training samples '
                f'but one fold and predicts that fold ({len(found)} folds{grouped}).')
    return found


def _held_out_outputs(cfg, result, data, rows, device):
    """A cross-fitted member's raw outputs for the training rows it did not fit."""
    model = AAM(cfg)
    model.load_state_dict(result.state_dict)
    return engine_predict(model, data, rows=rows, device=resolve_device(device))['prediction']


def _check_continuation(previous, pretrained, classification, arguments):
    """A fit that goes on from a fitted model: same kind, all of its members."""
    if pretrained is not None:
        raise ValueError('Give either pretrained (an encoder to start a new model from) or '
                         'continue_from (a fitted model to train further), not both.')
    kind = 'classification' if classification else 'regression'
    if previous.task != kind:
        raise ValueError(f'continue_from is a {previous.task} model, but the metadata column '
                         f'gives a {kind}: continue a model with a column of the same kind '
                         '(numeric for a regressor, categorical for a classifier).')
    if arguments['freeze_encoder']:
        raise ValueError('freeze_encoder needs a pretrained encoder; a continued fit trains '
                         'every weight of the model it continues.')
    if arguments['ensemble_size'] != previous.ensemble_size:
        inputs.note(f'continuing all {previous.ensemble_size} members of the model '
                    f'(ensemble_size {arguments["ensemble_size"]} is not used).')


def _continued_labels(previous, labels, column):
    """A continued classifier keeps its classes: the new samples' classes must be its own."""
    known = list(previous.config['labels'])
    new = sorted(set(labels) - set(known))
    if new:
        raise ValueError(f'Metadata column {column!r} has {len(new)} classes the model to '
                         f'continue does not know: {inputs.preview(new)} (it knows '
                         f'{inputs.preview(known)}). Fit a new model for new classes, or '
                         'leave those samples out.')
    return known


def _fit_member(cfg, pretrained, data, rows, settings, plan, member, class_names, start=None):
    """Train ensemble member ``member``: its own seed, hence its own initial weights,
    batch order, dropout and read subsampling. Every member validates on the split of
    ``random_seed``: with validation splits of their own, members stopped at unlike
    epochs and the ensemble scored lower."""
    seed = plan['random_seed'] + member
    if plan['ensemble_size'] > 1:
        inputs.note(f"ensemble member {member + 1} of {plan['ensemble_size']} (seed {seed})")
        tb = settings.tensorboard_dir
        settings = dataclasses.replace(settings, random_seed=seed, tensorboard_dir=tb and
                                       os.path.join(tb, f'member-{member}'))
    seed_everything(seed)
    model = AAM(cfg)
    if pretrained is not None:
        load_encoder_weights(model, pretrained.state_dict)
    if start is not None:                     # continue a fitted model's member
        model.load_state_dict(start)
    return runs.train_member(model, data, rows, settings, plan, member,
                             class_names=class_names)
