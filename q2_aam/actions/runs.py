"""A training run's folders and record: the TensorBoard and checkpoint folders a user
names (kept harmless under Galaxy), resuming members from a checkpoint folder, and the
finished runs turned into one SavedModel."""
import dataclasses
import os
import sys

import pandas as pd

from . import inputs
from ..engine import folds, runstate, savedmodel
from ..engine.data import split_samples
from ..engine.savedmodel import SavedModel
from ..engine.trainer import TrainResult, train


def under_galaxy():
    """Is this process a Galaxy job, i.e. `q2galaxy run PLUGIN ACTION inputs.json`?"""
    return os.path.basename(sys.argv[0] if sys.argv else '').startswith('q2galaxy') and \
        sys.argv[1:2] == ['run']


def safe_folder(name, path):
    """A folder parameter, checked before any work: it must not be a file, and under
    Galaxy it may only name a folder inside the job's working directory (a relative path
    that does not climb out). Elsewhere any path is the user's own choice."""
    if not path:
        return path
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f'{name} {path!r} is a file, not a folder. Give the path of a folder '
                         f'(it is created if missing), or leave {name} empty.')
    parts = os.path.normpath(path).split(os.sep)
    if under_galaxy() and (os.path.isabs(path) or parts[0] == '..'):
        raise ValueError(f'Under Galaxy, {name} must be a folder inside the job\'s working '
                         f'directory (a relative path), not {path!r}: the job must not write '
                         'elsewhere on the server. Leave it empty; the logs are in the '
                         'model artifact.')
    return path


def check_folders(plan):
    """Both folder parameters, before any work."""
    safe_folder('tensorboard_dir', plan['tensorboard_dir'])
    safe_folder('checkpoint_dir', plan.get('checkpoint_dir'))


def run_folder(tensorboard_dir):
    """A fresh folder of this run's own inside the user's tensorboard_dir, so that the
    artifact holds this run's event files and nothing else that lives in that folder."""
    if not tensorboard_dir:
        return None
    os.makedirs(tensorboard_dir, exist_ok=True)
    import tempfile
    import time
    run = tempfile.mkdtemp(prefix=time.strftime('q2-aam-%Y%m%d-%H%M%S-'), dir=tensorboard_dir)
    inputs.note(f'TensorBoard logs of this run: {run} (tensorboard --logdir '
                f'{tensorboard_dir}).')
    return run


def start_checkpoints(plan, data, groups=None):
    """With a checkpoint_dir: take the folder's lock for this run (refused, naming the
    process, while another run holds it), then create the folder or check that it holds
    this same run: the plan's fingerprint and the data's are compared. Returns the lock
    (None without a checkpoint_dir), which the caller releases when the run ends."""
    if not plan.get('checkpoint_dir'):
        return None
    lock = runstate.lock(plan['checkpoint_dir'])
    record = {**plan.fingerprint(), 'data': runstate.fingerprint(data),
              'groups': None if groups is None else runstate.digest(
                  '\t'.join(str(g) for g in groups))}
    try:
        resuming = runstate.prepare(plan['checkpoint_dir'], record)
    except BaseException:
        lock.release()
        raise
    if resuming:
        inputs.note(f"checkpoint_dir {plan['checkpoint_dir']} holds this run: resuming it.")
    return lock


def train_member(model, data, rows, settings, plan, member=0, class_names=None):
    """train(), or with a checkpoint_dir: skip a member that finished before, resume one
    that was interrupted, and keep its best model, last state, figures and logs there."""
    if not plan.get('checkpoint_dir'):
        return train(model, data, *rows, settings, class_names=class_names)
    here = runstate.member_folder(plan['checkpoint_dir'], member, plan.get('ensemble_size', 1))
    here.mkdir(parents=True, exist_ok=True)
    finished = runstate.load_finished(here)
    if finished is not None:
        inputs.note(f'{here}: this model finished before; taken as it is.')
        return TrainResult(**finished)
    resume = runstate.resume_point(here)
    if resume is not None:
        inputs.note(f'{here}: resuming after the last saved epoch.')
    settings = dataclasses.replace(
        settings, checkpoint_dir=str(here),
        tensorboard_dir=settings.tensorboard_dir or str(here / 'tensorboard'))
    result = train(model, data, *rows, settings, class_names=class_names, resume_from=resume)
    runstate.save_finished(here, result)
    return result


def saved_model(cfg, plan, results, samples, labels=None, extra=None, stack=None,
                members=None, out_of_fold=None, continued=None, read_floor=0.0):
    """One SavedModel from one training run, or from an ensemble's runs (one per member).
    ``stack``: the blend's weights (None: an encoder, or a continued model from before
    stacking, which keeps its linear weight); ``members``: the linear, tree and k-mer members;
    ``out_of_fold``: the stack's out-of-fold table, kept as the validation rows when no
    validation split was held out; ``continued``: the model a fit went on from;
    ``read_floor``: the relative abundance below which its predictions leave an ASV out."""
    first = results[0]
    members = members or {}
    linear_half, tree, kmers = members.get('linear'), members.get('tree'), members.get('kmers')
    if stack is not None:
        share = dict(zip(stack.members, stack.weights)).get('linear', 0.0)
    elif linear_half is not None:                    # continued from before stacking
        share = continued.config['linear']['weight']
    legacy_calibration = None if continued is None or stack is not None else \
        continued.config.get('calibration')
    config = savedmodel.make_config(
        cfg, plan['max_asvs'], plan['max_bp'], labels=labels,
        training={**plan.record(), 'samples': samples, **(extra or {})},
        target_mean=first.target_mean, target_std=first.target_std,
        extra={'best_epoch': first.best_epoch, 'epochs_run': first.epochs_run,
               'ensemble_size': len(results), 'calibration': legacy_calibration,
               **({'read_floor': float(read_floor)} if read_floor else {}),
               'linear': None if linear_half is None else savedmodel.linear_config(
                   linear_half, share),
               **({} if stack is None else {'stack': stack.to_config()})})
    if len(results) == 1:
        validation = first.validation
        if out_of_fold is not None and not len(validation):
            validation = out_of_fold
        return SavedModel(config, first.state_dict, first.history, validation,
                          first.tensorboard, linear=linear_half, tree=tree, kmers=kmers)
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
    return SavedModel(config, savedmodel.pack_members([r.state_dict for r in results]),
                      history, validation, tensorboard, linear=linear_half, tree=tree,
                      kmers=kmers)


def validation_split(data, validation_size, seed, stratify=None, groups=None):
    """Training and validation rows, drawn and announced once per action: an ensemble's
    members all train on this split. With groups, whole groups are held out."""
    if groups is not None and validation_size:
        try:
            train_rows, val_rows = folds.train_test_rows(
                len(data), validation_size, stratify=stratify, groups=groups, seed=seed)
        except folds.FoldError as e:
            raise ValueError(f'validation_size {validation_size:g} holds out whole groups: '
                             f'{e} Lower validation_size, or set it to 0.') from None
    else:
        train_rows, val_rows = split_samples(len(data), validation_size, stratify=stratify,
                                             seed=seed)
    held_out = (f'validating on {len(val_rows)}' if len(val_rows) else
                'no validation split (every sample, every epoch)')
    inputs.note(f'training on {len(train_rows)} samples, {held_out}; '
                f'{len(data.feature_ids)} distinct ASVs.')
    return train_rows, val_rows
