"""The stacked blend: each member's out-of-fold predictions over the user's own training
samples decide its weight (engine/stack.py), so that the member that is good on this study
carries the prediction. A weight fixed on other studies could not know which one that is."""
import numpy as np
import pandas as pd

from . import inputs
from ..engine import members, stack as stack_module
from ..engine.predict import class_probabilities


def blend(plan, cfg, data, counts, seqs, targets, train_rows, folds, held_out, continue_from,
          labels, group_of, scale):
    """The stack (weights and calibrations), the linear, tree and k-mer members fitted on
    every training sample, and the out-of-fold table (None without folds)."""
    task, n_classes = cfg.task, (cfg.n_outputs if cfg.task == 'classification' else None)
    if continue_from is not None:
        return _continued_blend(continue_from)
    chosen = {'transformer': plan['transformer_weight'], 'linear': plan['linear_weight'],
              'tree': plan['tree_weight'], 'kmers': plan['kmer_weight']}
    names = [m for m in stack_module.MEMBERS if chosen[m] > 0]
    others = [m for m in names if m != 'transformer']
    fitted, oof = members.fit_members(
        others, counts[train_rows], seqs, targets[train_rows], task, n_classes, folds=folds,
        seed=plan['random_seed'], groups=None if group_of is None else group_of[train_rows])
    for m in others:
        inputs.note(_member_note(m, fitted[m], task))
    if plan['blend'] == 'fixed':
        return stack_module.fixed_stack(chosen, task), fitted, None
    if folds is None:
        why = ('an ensemble of one transformer has no out-of-fold predictions'
               if plan['ensemble_size'] < 2 else 'no folds')
        inputs.note(f'equal weights for {", ".join(names)}: {why} (ensemble_size 2 or '
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
    kind, penalty = ('ridge', 'alpha') if task == 'regression' else ('logistic', 'C')
    if name == 'linear':
        return (f'linear member: {kind} regression on {len(member.sequences)} ASVs, penalty '
                f'{penalty} {member.penalty:.3g} chosen by cross-validation.')
    if name == 'kmers':
        return (f'k-mer member: {kind} regression on {member.coef.shape[0]} {member.k}-mer '
                f'frequencies, penalty {penalty} {member.penalty:.3g} chosen by '
                'cross-validation.')
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
    inputs.note(f'stacked blend from {record["samples"]} out-of-fold predictions '
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
        inputs.note(f'the blend of the model continued is kept as it was (linear weight '
                    f'{weight:g}); a new fit refits it.')
        return None, {'linear': previous.linear} if previous.linear is not None else {}, None
    stack = stack_module.Stack.from_config(previous.config['stack'], previous.task)
    inputs.note('the blend of the model continued is kept as it was (weights ' + ', '.join(
        f'{m} {w:.2f}' for m, w in zip(stack.members, stack.weights)) + '); a new fit '
        'refits it.')
    fitted = {m: getattr(previous, m) for m in ('linear', 'tree', 'kmers')
              if getattr(previous, m) is not None}
    return stack, fitted, None
