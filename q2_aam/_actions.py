"""pretrain / fit / predict: QIIME 2 views in, engine calls, views out.

No torch model code here: this module only turns QIIME 2 inputs into engine data,
engine settings into a training run, and a run into a SavedModel.
"""
import dataclasses
import os

import numpy as np
import pandas as pd
import qiime2
import skbio
from q2_types.feature_table import BIOMV210Format

from . import _inputs
from .engine import calibration, checkpoint, linear, optim, runstate
from .engine import folds as folds_module, importance as importance_module
from .engine import members as members_module, stack as stack_module
from .engine.checkpoint import SavedModel
from .engine.data import split_samples
from .engine.model import AAM, AAMConfig, load_encoder_weights, parameter_count
from .engine.unifrac import TreeDistances
from .engine.trainer import TrainSettings, average_predictions, class_probabilities, \
    predict as engine_predict, resolve_device, seed_everything, target_scale, train

# Defaults, shared with plugin_setup.py so that the signature and the help agree. They are
# the settings measured in benchmarks/results.md: a small model that trains in minutes on
# two CPU cores for a few hundred samples (the public AAM's 128 x 4 heads x 4 layers is a
# `--p-embedding-dim 128 --p-attention-layers 4` away, for a GPU).
DEFAULTS = dict(
    epochs=60, batch_size=16, learning_rate=3e-3, weight_decay=0.01, optimizer='adamw',
    scheduler='warmup_cosine', scheduler_params='{}', warmup_fraction=0.1, patience=10,
    max_grad_norm=1.0, validation_size=0.2, max_asvs=128, max_bp=150, embedding_dim=32,
    attention_heads=4, attention_layers=1, nucleotide_layers=1, dropout=0.1, kmer_size=6,
    nuc_mask_ratio=0.15,
    unifrac_weight=1.0, nuc_weight=1.0, target_weight=1.0, regression_loss='mse',
    random_seed=0, device='auto', threads=0, tensorboard_dir='', checkpoint_dir='',
    histogram_frequency=50, processes=1, compile=False,
    ensemble_size=5,
    rarefy_depth=2000, blend='stacked', transformer_weight=1.0, linear_weight=1.0,
    tree_weight=1.0,
)
# fitting leaves the masked-nucleotide loss to pretraining (it costs time, the target pays)
FIT_NUC_WEIGHT = 0.0
# fitting uses every sample for every epoch by default: on a fresh draw of sleep-apnea folds,
# early stopping on a fifth of the training mice stopped members at epochs 8-17 (fold 0:
# test R² 0.27, against 0.71 without a validation split; benchmarks/results.md)
FIT_VALIDATION_SIZE = 0.0
# fitting from scratch reads each ASV through its k-mer profile alone: the nucleotide
# transformer took four fifths of a fit's time and, without pretraining to train it, did not
# raise accuracy on the two studies the defaults were judged on (benchmarks/results.md)
FIT_NUCLEOTIDE_LAYERS = 0
# blend: every fitted model is a stack of the transformer ensemble, a linear model and a
# forest of extremely randomised trees, weighed by their out-of-fold predictions over the user's own training
# samples (engine/stack.py). The weight fixed on other studies that it replaces could not
# know which member is good on the user's study.
D = DEFAULTS
ARCHITECTURE = ('embedding_dim', 'attention_heads', 'attention_layers', 'nucleotide_layers',
                'dropout', 'kmer_size')
# what fit builds when neither the user nor a pretrained encoder sets a value
FIT_ARCHITECTURE = {**{k: DEFAULTS[k] for k in ARCHITECTURE},
                    'nucleotide_layers': FIT_NUCLEOTIDE_LAYERS}


def _threads(value):
    """0 or 'auto' (newer QIIME 2's Threads) leave torch's own choice."""
    return None if value in (0, 'auto', None) else int(value)


def _under_galaxy():
    """Is this process a Galaxy job, i.e. `q2galaxy run PLUGIN ACTION inputs.json`?"""
    import sys
    return os.path.basename(sys.argv[0] if sys.argv else '').startswith('q2galaxy') and \
        sys.argv[1:2] == ['run']


def _safe_folder(name, path):
    """A folder parameter, checked before any work: it must not be a file, and under
    Galaxy it may only name a folder inside the job's working directory (a relative path
    that does not climb out). Elsewhere any path is the user's own choice."""
    if not path:
        return path
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f'{name} {path!r} is a file, not a folder. Give the path of a folder '
                         f'(it is created if missing), or leave {name} empty.')
    parts = os.path.normpath(path).split(os.sep)
    if _under_galaxy() and (os.path.isabs(path) or parts[0] == '..'):
        raise ValueError(f'Under Galaxy, {name} must be a folder inside the job\'s working '
                         f'directory (a relative path), not {path!r}: the job must not write '
                         'elsewhere on the server. Leave it empty; the logs are in the '
                         'model artifact.')
    return path


def _run_folder(tensorboard_dir):
    """A fresh folder of this run's own inside the user's tensorboard_dir, so that the
    artifact holds this run's event files and nothing else that lives in that folder."""
    if not tensorboard_dir:
        return None
    os.makedirs(tensorboard_dir, exist_ok=True)
    import tempfile
    import time
    run = tempfile.mkdtemp(prefix=time.strftime('q2-aam-%Y%m%d-%H%M%S-'), dir=tensorboard_dir)
    _inputs.note(f'TensorBoard logs of this run: {run} (tensorboard --logdir '
                 f'{tensorboard_dir}).')
    return run


def _settings(p, **overrides):
    """TrainSettings from the action's parameters (validated before any work)."""
    resolve_device(p['device'])                     # 'cuda' without a GPU fails here
    params = optim.parse_scheduler_params(p['scheduler_params'])
    s = TrainSettings(
        epochs=p['epochs'], batch_size=p['batch_size'], learning_rate=p['learning_rate'],
        weight_decay=p['weight_decay'], optimizer=p['optimizer'], scheduler=p['scheduler'],
        scheduler_params=params, warmup_fraction=p['warmup_fraction'], patience=p['patience'],
        max_grad_norm=p['max_grad_norm'] or None, nuc_mask_ratio=p['nuc_mask_ratio'],
        unifrac_weight=p['unifrac_weight'], nuc_weight=p['nuc_weight'],
        random_seed=p['random_seed'], device=p['device'], threads=_threads(p['threads']),
        histogram_frequency=p['histogram_frequency'], tensorboard_dir=None, quiet=False,
        compile='inductor' if p.get('compile') else None, **overrides)
    optim._check_params(s.scheduler, params)        # unknown keys fail before training
    s.tensorboard_dir = _run_folder(_safe_folder('tensorboard_dir', p['tensorboard_dir']))
    _safe_folder('checkpoint_dir', p.get('checkpoint_dir'))
    return s


def _check_size(arch, max_bp, members=1):
    """Refuse, before reading any data, a model too large to hold: each setting is within
    its range, but 48 layers of width 1024 times 20 members is not."""
    try:
        cfg = AAMConfig(max_bp=max_bp, **arch)
    except ValueError as e:
        raise ValueError(f'These model settings do not describe a model: {e}') from None
    each = parameter_count(cfg)
    if each * members > checkpoint.MAX_PARAMETERS:
        raise ValueError(
            f'These settings ask for {members} model(s) of {each:,} parameters, '
            f'{each * members:,} in all, more than the {checkpoint.MAX_PARAMETERS:,} q2-aam trains. '
            'Lower embedding_dim, attention_layers, nucleotide_layers or ensemble_size.')


# settings that change where or how fast a run goes, not what it computes: a resumed run
# may change them
NOT_FINGERPRINTED = ('checkpoint_dir', 'tensorboard_dir', 'threads', 'device',
                     'histogram_frequency', 'processes', 'compile')


# set by `qiime aam ... --p-processes N` for its workers (q2_aam/launch.py), which then
# leave the import of the model folder to the action
FROM_ACTION = 'Q2_AAM_LAUNCHED_BY_ACTION'
NOT_RESUMABLE = ('checkpoint_dir: a run on several processes cannot be resumed yet; leave '
                 'checkpoint_dir out, or use processes 1.')


def _on_processes(action, views, p):
    """Run this action as p['processes'] torchrun workers on this machine (one per GPU when
    there are GPUs) and return rank 0's model: the inputs are written where the workers
    read them (q2_aam/launch.py), as a multi-node run reads them exported."""
    import subprocess
    import sys
    import tempfile
    import json
    n = p['processes']
    if p.get('checkpoint_dir'):
        raise ValueError(NOT_RESUMABLE)
    with tempfile.TemporaryDirectory(prefix='q2-aam-processes-') as tmp:
        args = [f'--output={tmp}/model']
        for name, view in views.items():
            if view is not None and name in ('metadata', 'groups'):
                args += [f'--{name}-file={_export(name, view, tmp)}',
                         f'--{name}-column={view.name}']
            elif view is not None:
                args.append(f'--{name.replace("_", "-")}={_export(name, view, tmp)}')
        args += [f'--set={k}={json.dumps(v)}' for k, v in p.items()
                 if k != 'processes' and v is not None]
        command = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                   f'--nproc-per-node={n}', '-m', 'q2_aam.launch', action] + args
        _inputs.note(f'training on {n} processes (torchrun): {" ".join(command[:6])} …')
        done = subprocess.run(command, env={**os.environ, FROM_ACTION: '1'})
        if done.returncode != 0:
            raise RuntimeError(f'The {n} training processes failed (exit status '
                               f'{done.returncode}); their messages are above.')
        saved = checkpoint.load(f'{tmp}/model')
    saved.config['training']['processes'] = n
    return saved


def _export(name, view, folder):
    """One input as the file q2_aam/launch.py reads (what `qiime tools export` gives)."""
    path = os.path.join(folder, name)
    if name == 'table':
        from biom.util import biom_open
        view = _inputs.as_table(view)
        with biom_open(path + '.biom', 'w') as fh:
            view.to_hdf5(fh, 'q2-aam')
        return path + '.biom'
    if name == 'sequences':
        with open(path + '.fasta', 'w') as fh:
            fh.writelines(f'>{i}\n{s}\n' for i, s in view.items())
        return path + '.fasta'
    if name in ('distance_matrix', 'phylogeny'):
        view.write(path)
        return path
    if name == 'alpha_diversity':
        pd.Series(view).rename('alpha').to_csv(path + '.tsv', sep='\t', index_label='id')
        return path + '.tsv'
    if name in ('metadata', 'groups'):
        kind = 'numeric' if isinstance(view, qiime2.NumericMetadataColumn) else 'categorical'
        series = view.to_series()
        with open(path + '.tsv', 'w') as fh:
            fh.write(f'id\t{view.name}\n#q2:types\t{kind}\n')
            series.to_csv(fh, sep='\t', header=False)
        return path + '.tsv'
    checkpoint.save(view, path)          # a model: pretrained or continue_from
    return path


def _start_checkpoints(p, action, data, pretrained=None, groups=None, continue_from=None,
                       freeze_encoder=False):
    """With a checkpoint_dir: take the folder's lock for this run (refused, naming the
    process, while another run holds it), then create the folder or check that it holds
    this same run: every setting that changes the result is compared. Returns the lock
    (None without a checkpoint_dir), which the caller releases when the run ends."""
    if not p.get('checkpoint_dir'):
        return None
    lock = runstate.lock(p['checkpoint_dir'])
    record = {'action': action, 'data': runstate.fingerprint(data),
              'groups': None if groups is None else runstate.digest(
                  '\t'.join(str(g) for g in groups)),
              'freeze_encoder': bool(freeze_encoder),
              'continue_from': None if continue_from is None else runstate.fingerprint_state(
                  continue_from.state_dict),
              'pretrained': None if pretrained is None else runstate.fingerprint_state(
                  pretrained.state_dict),
              **{k: v for k, v in sorted(p.items()) if k not in NOT_FINGERPRINTED}}
    try:
        resuming = runstate.prepare(p['checkpoint_dir'], record)
    except BaseException:
        lock.release()
        raise
    if resuming:
        _inputs.note(f"checkpoint_dir {p['checkpoint_dir']} holds this run: resuming it.")
    return lock


def _train_member(model, data, rows, settings, p, member=0, class_names=None):
    """train(), or with a checkpoint_dir: skip a member that finished before, resume one
    that was interrupted, and keep its best model, last state, figures and logs there."""
    if not p.get('checkpoint_dir'):
        return train(model, data, *rows, settings, class_names=class_names)
    here = runstate.member_folder(p['checkpoint_dir'], member, p.get('ensemble_size', 1))
    here.mkdir(parents=True, exist_ok=True)
    finished = runstate.load_finished(here)
    if finished is not None:
        _inputs.note(f'{here}: this model finished before; taken as it is.')
        return finished
    resume = runstate.resume_point(here)
    if resume is not None:
        _inputs.note(f'{here}: resuming after the last saved epoch.')
    settings = dataclasses.replace(
        settings, checkpoint_dir=str(here),
        tensorboard_dir=settings.tensorboard_dir or str(here / 'tensorboard'))
    result = train(model, data, *rows, settings, class_names=class_names, resume_from=resume)
    runstate.save_finished(here, result)
    return result


def _training_record(p, settings, samples, extra=None):
    record = {k: v for k, v in p.items()}
    record['scheduler_params'] = settings.scheduler_params
    record['unifrac_weight'] = settings.unifrac_weight   # 0 when fit had no distance matrix
    record['samples'] = samples
    record.update(extra or {})
    return record


def _split(data, validation_size, seed, stratify=None, groups=None):
    """Training and validation rows, drawn and announced once per action: an ensemble's
    members all train on this split. With groups, whole groups are held out."""
    if groups is not None and validation_size:
        try:
            train_rows, val_rows = folds_module.train_test_rows(
                len(data), validation_size, stratify=stratify, groups=groups, seed=seed)
        except folds_module.FoldError as e:
            raise ValueError(f'validation_size {validation_size:g} holds out whole groups: '
                             f'{e} Lower validation_size, or set it to 0.') from None
    else:
        train_rows, val_rows = split_samples(len(data), validation_size, stratify=stratify,
                                             seed=seed)
    held_out = (f'validating on {len(val_rows)}' if len(val_rows) else
                'no validation split (every sample, every epoch)')
    _inputs.note(f'training on {len(train_rows)} samples, {held_out}; '
                 f'{len(data.feature_ids)} distinct ASVs.')
    return train_rows, val_rows


def pretrain(
        table: BIOMV210Format, sequences: pd.Series, distance_matrix: skbio.DistanceMatrix = None,
        phylogeny: skbio.TreeNode = None,
        alpha_diversity: pd.Series = None, pretrained: SavedModel = None,
        ignore_missing_samples: bool = False,
        max_bp: int = D['max_bp'], embedding_dim: int = D['embedding_dim'],
        attention_heads: int = D['attention_heads'],
        attention_layers: int = D['attention_layers'],
        nucleotide_layers: int = D['nucleotide_layers'], dropout: float = D['dropout'],
        kmer_size: int = D['kmer_size'],
        epochs: int = D['epochs'], batch_size: int = D['batch_size'],
        learning_rate: float = D['learning_rate'], weight_decay: float = D['weight_decay'],
        optimizer: str = D['optimizer'], scheduler: str = D['scheduler'],
        scheduler_params: str = D['scheduler_params'],
        warmup_fraction: float = D['warmup_fraction'], patience: int = D['patience'],
        max_grad_norm: float = D['max_grad_norm'], validation_size: float = D['validation_size'],
        max_asvs: int = D['max_asvs'], nuc_mask_ratio: float = D['nuc_mask_ratio'],
        unifrac_weight: float = D['unifrac_weight'], nuc_weight: float = D['nuc_weight'],
        random_seed: int = D['random_seed'], device: str = D['device'],
        threads: int = D['threads'], tensorboard_dir: str = D['tensorboard_dir'],
        checkpoint_dir: str = D['checkpoint_dir'],
        histogram_frequency: int = D['histogram_frequency'],
        processes: int = D['processes'], compile: bool = D['compile']) -> SavedModel:
    p = {k: v for k, v in locals().items() if k in DEFAULTS}
    if (distance_matrix is None) == (phylogeny is None):
        raise ValueError('Pretraining learns UniFrac distances: give either distance_matrix '
                         '(a UniFrac DistanceMatrix of these samples) or phylogeny (the rooted '
                         'tree of these ASVs, from which each batch\'s distances are computed '
                         'as needed; memory then grows with the table, not its square), '
                         f"not {'both' if phylogeny is not None else 'neither'}.")
    if processes > 1:
        return _on_processes('pretrain', dict(
            table=table, sequences=sequences, distance_matrix=distance_matrix,
            phylogeny=phylogeny, alpha_diversity=alpha_diversity, pretrained=pretrained),
            {**p, 'ignore_missing_samples': ignore_missing_samples})
    if pretrained is not None:      # go on from an encoder: its architecture, its weights
        given = {k: p[k] for k in ARCHITECTURE + ('max_bp',) if p[k] != DEFAULTS[k]}
        arch, max_bp = _architecture({'max_bp': None, **given}, pretrained)
        p.update(arch, max_bp=max_bp)
    _check_size({k: p[k] for k in ARCHITECTURE}, p['max_bp'])
    settings = _settings(p)
    seed_everything(p['random_seed'])
    counts, sample_ids, feature_ids = _inputs.table_parts(table)
    seqs = _inputs.sequences_for(feature_ids, sequences)
    if distance_matrix is not None:
        keep = _inputs.distances_for(sample_ids, distance_matrix, ignore_missing_samples)
        counts, sample_ids = _inputs.select_samples(counts, sample_ids, keep)
    if len(sample_ids) < _inputs.MIN_SAMPLES:
        raise ValueError(f'Only {len(sample_ids)} samples are in both the table and the '
                         f'distance matrix; pretraining needs at least {_inputs.MIN_SAMPLES}.')
    targets = None if alpha_diversity is None else _inputs.alpha_values(alpha_diversity,
                                                                        sample_ids)
    distances = (_inputs.distance_array(distance_matrix, sample_ids)
                 if distance_matrix is not None else
                 TreeDistances(counts, feature_ids, phylogeny))
    data = _inputs.build_data(counts, sample_ids, feature_ids, seqs, p['max_asvs'],
                              p['max_bp'], distances, targets)
    cfg = AAMConfig(task='encoder', n_outputs=0 if targets is None else 1, max_bp=p['max_bp'],
                    **{k: p[k] for k in ARCHITECTURE})
    if not cfg.asv_layers and p['nuc_weight'] > 0:
        _inputs.note('no masked-nucleotide loss: with nucleotide_layers 0 the encoder reads '
                     'each ASV as its k-mer profile and has no bases to predict.')
    lock = _start_checkpoints(p, 'pretrain', data, pretrained)
    model = AAM(cfg)
    if pretrained is not None:
        if (pretrained.model_config.n_outputs > 0) != (targets is not None):
            raise ValueError('The encoder to continue was pretrained '
                             f"{'with' if targets is None else 'without'} alpha diversity; "
                             f"continue it {'with' if targets is None else 'without'} "
                             'alpha_diversity too.')
        model.load_state_dict(pretrained.state_dict)
    with runstate.held(lock):
        result = _train_member(model, data, _split(data, p['validation_size'],
                                                   p['random_seed']), settings, p)
    return _saved(cfg, p, settings, [result], sample_ids,
                  extra={'alpha_diversity': alpha_diversity is not None,
                         'continued': pretrained is not None,
                         'distances': 'matrix' if phylogeny is None else
                         'computed per batch from the phylogeny (unweighted UniFrac)'})


def _saved(cfg, p, settings, results, sample_ids, labels=None, extra=None, stack=None,
           members=None, out_of_fold=None, continued=None):
    """One SavedModel from one training run, or from an ensemble's runs (one per member).
    ``stack``: the blend's weights (None: an encoder, or a continued model from before
    stacking, which keeps its linear weight); ``members``: the linear and tree members;
    ``out_of_fold``: the stack's out-of-fold table, kept as the validation rows when no
    validation split was held out; ``continued``: the model a fit went on from."""
    first = results[0]
    members = members or {}
    linear_half, tree = members.get('linear'), members.get('tree')
    if stack is not None:
        share = dict(zip(stack.members, stack.weights)).get('linear', 0.0)
    elif linear_half is not None:                    # continued from before stacking
        share = continued.config['linear']['weight']
    legacy_calibration = None if continued is None or stack is not None else \
        continued.config.get('calibration')
    config = checkpoint.make_config(
        cfg, p['max_asvs'], p['max_bp'], labels=labels,
        training=_training_record(p, settings, len(sample_ids), extra),
        target_mean=first.target_mean, target_std=first.target_std,
        extra={'best_epoch': first.best_epoch, 'epochs_run': first.epochs_run,
               'ensemble_size': len(results), 'calibration': legacy_calibration,
               'linear': None if linear_half is None else checkpoint.linear_config(
                   linear_half, share),
               **({} if stack is None else {'stack': stack.to_config()})})
    if len(results) == 1:
        validation = first.validation
        if out_of_fold is not None and not len(validation):
            validation = out_of_fold
        return SavedModel(config, first.state_dict, first.history, validation,
                          first.tensorboard, linear=linear_half, tree=tree)
    # an ensemble: each member's epochs and validation rows, told apart by a member column
    config.update(best_epoch=[r.best_epoch for r in results],
                  epochs_run=[r.epochs_run for r in results])
    history = pd.concat([r.history.assign(member=i) for i, r in enumerate(results)],
                        ignore_index=True)
    validation = pd.concat([r.validation.assign(member=i) for i, r in enumerate(results)])
    if out_of_fold is not None and not len(validation):   # no validation split: the honest rows
        validation = out_of_fold
    tensorboard = {f'member-{i}/{path}': content for i, r in enumerate(results)
                   for path, content in r.tensorboard.items()}
    return SavedModel(config, checkpoint.pack_members([r.state_dict for r in results]),
                      history, validation, tensorboard, linear=linear_half, tree=tree)


def _architecture(p, pretrained, kind='encoder'):
    """The run's architecture: the starting model's (a pretrained encoder, or a fitted
    model to continue), which explicit settings must match."""
    if pretrained is None:
        return {k: (FIT_ARCHITECTURE[k] if p.get(k) is None else p[k]) for k in ARCHITECTURE}, \
            (DEFAULTS['max_bp'] if p.get('max_bp') is None else p['max_bp'])
    if kind == 'encoder' and pretrained.task != 'encoder':
        raise ValueError(f'The pretrained model is a {pretrained.task} model; start a fit '
                         'from an encoder made by `qiime aam pretrain`.')
    # an encoder saved before nucleotide_layers existed read bases with attention_layers
    base = {'nucleotide_layers': None, **pretrained.config['model']}
    effective = {**base, 'nucleotide_layers': AAMConfig(**base).asv_layers}
    effective['max_bp'] = pretrained.config['max_bp']
    clashes = [f'{k}={p[k]} (encoder: {effective[k]})' for k in ARCHITECTURE + ('max_bp',)
               if p.get(k) is not None and k != 'dropout' and p[k] != effective[k]]
    if clashes:
        raise ValueError('These settings differ from the pretrained encoder\'s and cannot be '
                         f'changed when starting from it: {", ".join(clashes)}. Leave them '
                         'unset to use the encoder\'s.')
    arch = {k: base[k] for k in ARCHITECTURE}
    if p.get('dropout') is not None:
        arch['dropout'] = p['dropout']
    return arch, pretrained.config['max_bp']


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
        processes: int = D['processes'], compile: bool = D['compile']) -> SavedModel:
    p = {k: v for k, v in locals().items() if k in DEFAULTS}
    if processes > 1:
        return _on_processes('fit', dict(
            table=table, sequences=sequences, metadata=metadata, pretrained=pretrained,
            distance_matrix=distance_matrix, continue_from=continue_from, groups=groups),
            {**p, 'freeze_encoder': freeze_encoder,
             'ignore_missing_samples': ignore_missing_samples})
    if freeze_encoder and pretrained is None:
        raise ValueError('freeze_encoder keeps a pretrained encoder unchanged, but no '
                         'pretrained encoder was given. Pass --i-pretrained, or leave '
                         'freeze_encoder off.')
    classification = isinstance(metadata, qiime2.CategoricalMetadataColumn)
    if continue_from is not None:
        _check_continuation(continue_from, pretrained, classification, p, freeze_encoder)
    arch, max_bp = _architecture(p, pretrained if continue_from is None else continue_from,
                                 kind='encoder' if continue_from is None else 'fitted')
    _check_size(arch, max_bp, p['ensemble_size'])
    p.update(arch, max_bp=max_bp)
    settings = _settings(p, freeze_encoder=freeze_encoder, target_weight=p['target_weight'],
                         regression_loss=p['regression_loss'],
                         rarefy_depth=p['rarefy_depth'])
    seed_everything(p['random_seed'])
    counts, sample_ids, feature_ids = _inputs.table_parts(table)
    seqs = _inputs.sequences_for(feature_ids, sequences)
    keep, values = _inputs.target_values(metadata, sample_ids)
    if distance_matrix is not None:
        keep = _inputs.distances_for(keep, distance_matrix, ignore_missing_samples,
                                     what='table with a metadata value')
    counts, sample_ids = _inputs.select_samples(counts, sample_ids, keep)
    values = values.reindex(sample_ids)
    group_of = None if groups is None else _inputs.group_values(groups, sample_ids)
    labels, stratify = None, None
    if classification:
        _inputs.note_numeric_looking(values, metadata.name)
        labels = _inputs.class_labels(values, metadata.name, p['validation_size'])
        if continue_from is not None:
            labels = _continued_labels(continue_from, labels, metadata.name)
        targets = values.astype(str).map({c: i for i, c in enumerate(labels)}).to_numpy()
        stratify = targets
    else:
        targets = _inputs.regression_targets(values, metadata.name)
    distances = (None if distance_matrix is None else
                 _inputs.distance_array(distance_matrix, sample_ids))
    data = _inputs.build_data(counts, sample_ids, feature_ids, seqs, p['max_asvs'], max_bp,
                              distances, targets)
    cfg = AAMConfig(task='classification' if classification else 'regression',
                    n_outputs=len(labels) if classification else 1, max_bp=max_bp, **arch)
    if distance_matrix is None:
        settings.unifrac_weight = 0.0
    if not classification:   # one scale for every member, so their outputs can be averaged
        settings.target_scale = target_scale(targets) if continue_from is None else (
            continue_from.config['target_mean'], continue_from.config['target_std'])
    train_rows, val_rows = _split(data, p['validation_size'], p['random_seed'],
                                  stratify=stratify, groups=group_of)
    folds = _member_folds(p, continue_from, train_rows, stratify, group_of)
    lock = _start_checkpoints(p, 'fit', data, pretrained, groups=group_of,
                              continue_from=continue_from, freeze_encoder=freeze_encoder)
    results, held_out = [], []
    with runstate.held(lock):
        for member in range(p['ensemble_size']):
            rows = (train_rows if folds is None else train_rows[folds[member][0]]), val_rows
            start = None if continue_from is None else continue_from.member_states()[member]
            result = _fit_member(cfg, pretrained, data, rows, settings, p, member,
                                 class_names=labels, start=start)
            if folds is not None:
                held_out.append(_held_out_outputs(cfg, result, data,
                                                  train_rows[folds[member][1]], p['device']))
            results.append(result)
    stack, fitted, table_oof = _blend(p, cfg, data, counts, seqs, targets, train_rows, folds,
                                      held_out, continue_from, labels, group_of,
                                      settings.target_scale)
    return _saved(cfg, p, settings, results, sample_ids, labels=labels,
                  extra={'target_column': metadata.name, 'pretrained': pretrained is not None,
                         'freeze_encoder': freeze_encoder,
                         'continued': continue_from is not None,
                         'groups': None if groups is None else groups.name},
                  stack=stack, members=fitted, out_of_fold=table_oof, continued=continue_from)


def _member_folds(p, continue_from, train_rows, stratify, group_of):
    """The folds the transformer members are cross-fitted on (member m fits all but fold m
    and predicts fold m), as positions within ``train_rows``, or None: a fixed blend, a
    continued model or a single member train every member on every training sample."""
    if p['blend'] != 'stacked' or continue_from is not None or p['ensemble_size'] < 2:
        return None
    try:
        found = folds_module.cross_fit_folds(
            len(train_rows), p['ensemble_size'],
            stratify=None if stratify is None else stratify[train_rows],
            groups=None if group_of is None else group_of[train_rows], seed=p['random_seed'])
    except folds_module.FoldError as e:
        raise ValueError(f'The stacked blend deals the training samples into one fold per '
                         f'ensemble member ({p["ensemble_size"]}), keeping groups whole: {e} '
                         'Lower ensemble_size, or use blend fixed.') from None
    grouped = '' if group_of is None else ', whole groups kept together'
    _inputs.note(f'each of the {len(found)} transformer members fits all training samples '
                 f'but one fold and predicts that fold ({len(found)} folds{grouped}).')
    return found


def _blend(p, cfg, data, counts, seqs, targets, train_rows, folds, held_out, continue_from,
           labels, group_of, scale):
    """The stack (weights and calibrations), the linear and tree members fitted on every
    training sample, and the out-of-fold table (None without folds)."""
    task, n_classes = cfg.task, (cfg.n_outputs if cfg.task == 'classification' else None)
    if continue_from is not None:
        return _continued_blend(continue_from)
    chosen = {'transformer': p['transformer_weight'], 'linear': p['linear_weight'],
              'tree': p['tree_weight']}
    names = [m for m in stack_module.MEMBERS if chosen[m] > 0]
    others = [m for m in names if m != 'transformer']
    fitted, oof = members_module.fit_members(
        others, counts[train_rows], seqs, targets[train_rows], task, n_classes, folds=folds,
        seed=p['random_seed'])
    for m in others:
        _inputs.note(_member_note(m, fitted[m], task))
    if p['blend'] == 'fixed':
        return stack_module.fixed_stack(chosen, task), fitted, None
    if folds is None:
        why = ('an ensemble of one transformer has no out-of-fold predictions'
               if p['ensemble_size'] < 2 else 'no folds')
        _inputs.note(f'equal weights for {", ".join(names)}: {why} (ensemble_size 2 or '
                     'more lets the training samples choose the weights).')
        return stack_module.equal_stack(names, task, why), fitted, None
    # the transformer members' held-out rows, back in training-row order
    order = np.argsort(np.concatenate([held for _, held in folds]))
    oof = dict(oof or {})
    transformer = np.concatenate(held_out)[order]
    if task == 'regression':
        mean, std = scale
        oof['transformer'] = transformer[:, 0] * std + mean
    else:
        oof['transformer'] = class_probabilities(transformer)
    truth = targets[train_rows]
    stack = stack_module.fit_stack({m: oof[m] for m in names}, truth, task, folds=len(folds),
                                   grouped=group_of is not None)
    _announce(stack)
    return stack, fitted, _out_of_fold_table(data, train_rows, stack, oof, truth, labels,
                                             folds)


def _member_note(name, member, task):
    if name == 'linear':
        kind = 'ridge' if task == 'regression' else 'logistic'
        penalty = 'alpha' if task == 'regression' else 'C'
        return (f'linear member: {kind} regression on {len(member.sequences)} ASVs, penalty '
                f'{penalty} {member.penalty:.3g} chosen by cross-validation.')
    return (f'tree member: an ExtraTrees forest of {len(member.roots)} trees on '
            f'{len(member.sequences)} ASVs.')


def _announce(stack):
    """The fit log's account of the stack: each member's out-of-fold score and weight."""
    record = stack.out_of_fold
    metric = 'r2' if stack.task == 'regression' else 'accuracy'
    second = 'mse' if stack.task == 'regression' else 'log_loss'
    lines = [f'{m}: out-of-fold {metric} {record["scores"][m][metric]:.3f}, {second} '
             f'{record["scores"][m][second]:.3g}, weight {w:.2f}'
             for m, w in zip(stack.members, stack.weights)]
    blend = record['scores']['blend']
    pulled = (f'; weights pulled {record["shrinkage"]:.0%} toward equal'
              if record['shrinkage'] else '')
    _inputs.note(f'stacked blend from {record["samples"]} out-of-fold predictions '
                 f'({record["folds"]} folds{", grouped" if record["grouped"] else ""}'
                 f'{pulled}): ' + '; '.join(lines)
                 + f'; the blend: {metric} {blend[metric]:.3f}, {second} {blend[second]:.3g}.')


def _out_of_fold_table(data, train_rows, stack, oof, truth, labels, folds):
    """One row per training sample: the truth, the blend's and each member's out-of-fold
    prediction (a classifier's as class probabilities), and the fold that held it out."""
    index = pd.Index(data.sample_ids[train_rows], name='sample-id')
    blend = stack_module.apply_stack(stack, {m: oof[m] for m in stack.members})
    fold_of = np.empty(len(train_rows), np.int64)
    for f, (_, held) in enumerate(folds):
        fold_of[held] = f
    if stack.task == 'regression':
        table = pd.DataFrame({'truth': truth.astype(float), 'prediction': blend}, index=index)
        for m in stack_module.MEMBERS:
            if m in oof:
                table[f'prediction:{m}'] = oof[m]
    else:
        names = np.asarray(labels, dtype=object)
        table = pd.DataFrame({'truth': names[truth.astype(int)],
                              'prediction': names[blend.argmax(1)]}, index=index)
        for c, name in enumerate(labels):
            table[f'prob:{name}'] = blend[:, c]
        for m in stack_module.MEMBERS:
            if m in oof:
                for c, name in enumerate(labels):
                    table[f'prob:{m}:{name}'] = oof[m][:, c]
    table['fold'] = fold_of
    return table.sort_index()


def _continued_blend(previous):
    """A continued model keeps its blend: the transformers go on learning from the new
    samples, and the other members and the weights are refitted only by a new fit."""
    if 'stack' not in previous.config:
        weight = previous.config['linear']['weight'] if previous.linear is not None else 0.0
        _inputs.note(f'the blend of the model continued is kept as it was (linear weight '
                     f'{weight:g}); a new fit refits it.')
        return None, {'linear': previous.linear} if previous.linear is not None else {}, None
    stack = stack_module.Stack.from_config(previous.config['stack'], previous.task)
    _inputs.note('the blend of the model continued is kept as it was (weights ' + ', '.join(
        f'{m} {w:.2f}' for m, w in zip(stack.members, stack.weights)) + '); a new fit '
        'refits it.')
    fitted = {m: getattr(previous, m) for m in ('linear', 'tree')
              if getattr(previous, m) is not None}
    return stack, fitted, None


def _held_out_outputs(cfg, result, data, rows, device):
    """A cross-fitted member's raw outputs for the training rows it did not fit."""
    model = AAM(cfg)
    model.load_state_dict(result.state_dict)
    return engine_predict(model, data, rows=rows, device=resolve_device(device))['prediction']


def _check_continuation(previous, pretrained, classification, p, freeze_encoder):
    """A fit that goes on from a fitted model: same kind, all of its members."""
    if pretrained is not None:
        raise ValueError('Give either pretrained (an encoder to start a new model from) or '
                         'continue_from (a fitted model to train further), not both.')
    kind = 'classification' if classification else 'regression'
    if previous.task != kind:
        raise ValueError(f'continue_from is a {previous.task} model, but the metadata column '
                         f'gives a {kind}: continue a model with a column of the same kind '
                         '(numeric for a regressor, categorical for a classifier).')
    if freeze_encoder:
        raise ValueError('freeze_encoder needs a pretrained encoder; a continued fit trains '
                         'every weight of the model it continues.')
    if p['ensemble_size'] != previous.ensemble_size:
        _inputs.note(f'continuing all {previous.ensemble_size} members of the model '
                     f'(ensemble_size {p["ensemble_size"]} is not used).')
        p['ensemble_size'] = previous.ensemble_size


def _continued_labels(previous, labels, column):
    """A continued classifier keeps its classes: the new samples' classes must be its own."""
    known = list(previous.config['labels'])
    new = sorted(set(labels) - set(known))
    if new:
        raise ValueError(f'Metadata column {column!r} has {len(new)} classes the model to '
                         f'continue does not know: {_inputs.preview(new)} (it knows '
                         f'{_inputs.preview(known)}). Fit a new model for new classes, or '
                         'leave those samples out.')
    return known


def _fit_member(cfg, pretrained, data, rows, settings, p, member, class_names, start=None):
    """Train ensemble member ``member``: its own seed, hence its own initial weights,
    batch order, dropout and read subsampling. Every member validates on the split of
    ``random_seed``: with validation splits of their own, members stopped at unlike epochs
    and the ensemble scored lower on sleep-apnea (benchmarks/results.md). A calibrated
    classifier's members each fit all training rows but their own fold."""
    seed = p['random_seed'] + member
    if p['ensemble_size'] > 1:
        _inputs.note(f"ensemble member {member + 1} of {p['ensemble_size']} (seed {seed})")
        tb = settings.tensorboard_dir
        settings = dataclasses.replace(settings, random_seed=seed, tensorboard_dir=tb and
                                       os.path.join(tb, f'member-{member}'))
    seed_everything(seed)
    model = AAM(cfg)
    if pretrained is not None:
        load_encoder_weights(model, pretrained.state_dict)
    if start is not None:                     # continue a fitted model's member
        model.load_state_dict(start)
    return _train_member(model, data, rows, settings, p, member, class_names=class_names)


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
    if _threads(threads):
        torch.set_num_threads(_threads(threads))
    counts, _, seqs, data = _read(model, table, sequences)
    index = pd.Index(data.sample_ids, name='id')
    out = _transformer_outputs(model, data, batch_size, device)
    if 'stack' in model.config:
        stack = stack_module.Stack.from_config(model.config['stack'], model.task)
        out = stack_module.apply_stack(stack, _member_outputs(model, out, counts, seqs, index))
    elif model.linear is not None:        # a model fitted before stacking: as it predicted
        out = _with_linear_half(model, out, counts, seqs, index)
    _check_finite(out.reshape(len(out), -1).sum(axis=1), index)
    return index, out


def _read(model, table, sequences):
    """A table and its sequences as the model reads them: (counts, their feature IDs and
    sequences, data)."""
    counts, sample_ids, feature_ids = _inputs.table_parts(table)
    seqs = _inputs.sequences_for(feature_ids, sequences)
    data = _inputs.build_data(counts, sample_ids, feature_ids, seqs,
                              model.config['max_asvs'], model.config['max_bp'])
    return counts, feature_ids, seqs, data


def _transformer_outputs(model, data, batch_size, device):
    """The transformer ensemble's predictions: values on the target's scale, or class
    probabilities (a model from before stacking applies its members' calibration)."""
    device = resolve_device(device) if isinstance(device, str) else device
    outputs = [engine_predict(member, data, batch_size=batch_size, device=device)['prediction']
               for member in model.build_models()]
    if model.task == 'classification' and model.config.get('calibration'):
        outputs = [calibration.apply_class_calibration(raw, model.config['calibration'])
                   for raw in outputs]
    raw = outputs[0] if len(outputs) == 1 else average_predictions(outputs, model.task)
    if model.task == 'regression':
        return raw[:, 0] * model.config['target_std'] + model.config['target_mean']
    return class_probabilities(raw)


def _member_outputs(model, transformer, counts, seqs, index):
    """Every member's predictions by name, what the stack weighs; samples that share no
    ASV with the training samples are named in a warning."""
    outputs = {'transformer': transformer}
    if model.tree is not None:
        outputs['tree'] = members_module.member_outputs('tree', model.tree, counts, seqs)
    if model.linear is not None:          # its values, and which samples share no ASV
        outputs['linear'], known = linear.linear_outputs(model.linear, counts, seqs)
        _warn_unknown(index, known)
    return outputs


def member_predictions(model: SavedModel, table, sequences, batch_size=64, device='cpu'):
    """Each member's predictions of a stacked model (values, or class probabilities), by
    member name: what the blend weighs. For benchmarks and for reading a model."""
    counts, _, seqs, data = _read(model, table, sequences)
    index = pd.Index(data.sample_ids, name='id')
    transformer = _transformer_outputs(model, data, batch_size, device)
    return index, _member_outputs(model, transformer, counts, seqs, index)


def _warn_unknown(index, known):
    unknown = index[known == 0]
    if len(unknown):
        _inputs.warn(f'{len(unknown)} of {len(index)} samples share no ASV (by sequence) with '
                     f'the samples the model was fitted on: {_inputs.preview(unknown)}. The '
                     'linear and tree members predict the training mean (or class shares) '
                     'for them; only the transformer reads their sequences.')


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
            f'a finite number: {_inputs.preview(index[bad])}. Nothing was written. The model '
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
    members = {'transformer': importance_module.transformer_importance(
        model.build_models(), data)}
    # build_data keeps the features the samples use: report on those, in that order
    used = list(data.feature_ids)
    order = {f: i for i, f in enumerate(feature_ids)}
    cols = [order[f] for f in used]
    used_counts, used_seqs = counts[:, cols], [seqs[i] for i in cols]
    if model.linear is not None:
        members['linear'] = importance_module.linear_importance(model.linear, used_counts,
                                                                used_seqs)
    if model.tree is not None:
        members['tree'] = importance_module.tree_importance(model.tree, used_seqs)
    if 'stack' in model.config:
        weights = dict(zip(model.config['stack']['members'], model.config['stack']['weights']))
    else:          # a model from before stacking: its linear weight
        w = model.config['linear']['weight'] if model.linear is not None else 0.0
        weights = {'transformer': 1 - w, 'linear': w}
    table_out = pd.DataFrame({'importance': importance_module.blend_importance(members,
                                                                               weights)},
                             index=pd.Index(used, name='feature-id'))
    for name in stack_module.MEMBERS:
        if name in members:
            table_out[name] = members[name]
    return table_out.sort_values('importance', ascending=False)
