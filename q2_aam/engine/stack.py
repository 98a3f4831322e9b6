"""The stack: how much each member of a fitted model counts for, chosen by the user's own
training samples.

Every member (the transformer ensemble, the linear half, the tree member) predicts each
training sample once from a fit that did not see it (cross-fitting, engine/folds.py). On
those out-of-fold predictions a classifier's members are first calibrated one by one (a
temperature and one bias per class: their probabilities differ in calibration, and a
confident but weak member would otherwise carry the argmax), then weighed: non-negative
weights summing to 1 that minimise the out-of-fold log loss (squared error for a
regressor), searched on a grid of the simplex (and pulled toward equal weights as far as
SHRINK_SAMPLES says: measured, not at all). A classifier's blend is calibrated once more on the
out-of-fold blend. Why: a weight fixed on other studies cannot know which member is good
on this one; only this study's samples can.
"""
import itertools
from dataclasses import dataclass, field

import numpy as np

from .calibration import apply_class_calibration, fit_class_calibration, softmax

MEMBERS = ('transformer', 'linear', 'tree', 'kmers')
GRID_STEP = 0.02
# equal weights count as this many samples when the chosen weights are pulled toward them.
# 0: not pulled: judged leave-one-study-out, a pull toward equal weights did not pay.
SHRINK_SAMPLES = 0
# a member's probabilities are floored here before their log is taken: a forest's vote
# share can be exactly 0 (a tenth of one tree's vote in a forest of 1,000)
PROBABILITY_FLOOR = 1e-4


@dataclass
class Stack:
    members: list                       # names, in MEMBERS order
    weights: list                       # one per member, >= 0, summing to 1
    task: str
    calibration: dict = None            # classifier: member name -> {temperature, bias}
    blend_calibration: dict = None      # classifier: {temperature, bias} of the blend
    out_of_fold: dict = field(default_factory=dict)   # scores and counts, for the record
    # a member that is an ensemble (the transformers) is calibrated model by model, then
    # averaged; False in models saved before 2026-12-07, which calibrated the average
    calibrate_each_model: bool = False

    def to_config(self):
        config = {'members': list(self.members),
                  'weights': [float(w) for w in self.weights],
                  'calibration': self.calibration, 'blend_calibration': self.blend_calibration,
                  'out_of_fold': self.out_of_fold}
        if self.calibrate_each_model:
            config['calibrate_each_model'] = True
        return config

    @classmethod
    def from_config(cls, config, task):
        return cls(list(config['members']), [float(w) for w in config['weights']], task,
                   config.get('calibration'), config.get('blend_calibration'),
                   config.get('out_of_fold') or {},
                   bool(config.get('calibrate_each_model', False)))


def _log_probabilities(p):
    p = np.maximum(np.asarray(p, np.float64), PROBABILITY_FLOOR)
    return np.log(p / p.sum(axis=1, keepdims=True))


def _calibrated(p, calibration):
    """(n, C) probabilities -> the same, calibrated."""
    return softmax(apply_class_calibration(_log_probabilities(p), calibration))


def simplex_grid(m, step=GRID_STEP):
    """Every weight vector of ``m`` members on a grid of ``step``: (points, m)."""
    n = int(round(1 / step))
    points = [c + (n - sum(c),) for c in itertools.product(range(n + 1), repeat=m - 1)
              if sum(c) <= n]
    return np.array(points, np.float64) / n


def _loss(task, blended, truth):
    if task == 'regression':
        return ((blended - truth) ** 2).mean(axis=-1)
    chosen = np.take_along_axis(blended, truth[None, :, None], axis=2)[..., 0]
    return -np.log(np.maximum(chosen, 1e-300)).mean(axis=-1)


def scores(task, predicted, truth):
    """What a member's out-of-fold predictions score: R² and MSE, or accuracy and log
    loss."""
    truth = np.asarray(truth)
    if task == 'regression':
        mse = float(((predicted - truth) ** 2).mean())
        var = float(truth.var())
        return {'r2': 1 - mse / var if var > 0 else float('nan'), 'mse': mse}
    return {'accuracy': float((predicted.argmax(1) == truth).mean()),
            'log_loss': float(_loss(task, predicted[None], truth)[0])}


def _member_order(names):
    """The shipped members in MEMBERS order, then any other (an offline candidate's) in
    the order given."""
    return [m for m in MEMBERS if m in names] + [m for m in names if m not in MEMBERS]


def fit_stack(out_of_fold, truth, task, folds=None, grouped=False,
              shrink_samples=SHRINK_SAMPLES, calibrate=True, grid_step=GRID_STEP):
    """``out_of_fold``: member name -> (n,) values or (n, C) probabilities, one honest
    prediction per training sample. Returns the Stack. ``shrink_samples``, ``calibrate``
    (a classifier's members and blend) and ``grid_step`` are fit's fixed choices; other
    values compare rules, or candidate members, on kept out-of-fold predictions."""
    names = _member_order(list(out_of_fold))
    truth = np.asarray(truth)
    calibration = None
    preds = {m: np.asarray(out_of_fold[m], np.float64) for m in names}
    if task == 'classification':
        truth = truth.astype(np.int64)
    if task == 'classification' and calibrate:
        n_classes = preds[names[0]].shape[1]
        calibration = {m: fit_class_calibration(_log_probabilities(preds[m]), truth, n_classes)
                       for m in names}
        preds = {m: _calibrated(preds[m], calibration[m]) for m in names}
    stacked = np.stack([preds[m] for m in names])                    # (M, n[, C])
    grid = simplex_grid(len(names), grid_step)                       # (G, M)
    blended = np.tensordot(grid, stacked, axes=1)                    # (G, n[, C])
    losses = _loss(task, blended, truth)
    best = grid[int(np.argmin(losses))]
    shrink = shrink_samples / (len(truth) + shrink_samples)
    weights = (1 - shrink) * best + shrink / len(names)
    blend = np.tensordot(weights, stacked, axes=1)
    blend_calibration = None
    if task == 'classification' and calibrate:
        blend_calibration = fit_class_calibration(_log_probabilities(blend), truth,
                                                  blend.shape[1])
        blend = _calibrated(blend, blend_calibration)
    record = {'samples': int(len(truth)), 'folds': folds, 'grouped': bool(grouped),
              'shrinkage': float(shrink), 'chosen_weights': [float(w) for w in best],
              'scores': {**{m: scores(task, preds[m], truth) for m in names},
                         'blend': scores(task, blend, truth)}}
    # each out-of-fold prediction came from one model, so a calibration fitted on them
    # fits one model's outputs: an ensemble's average of several is already softer
    return Stack(names, [float(w) for w in weights], task, calibration, blend_calibration,
                 record, calibrate_each_model=calibration is not None)


def equal_stack(names, task, why):
    """Equal weights, uncalibrated: what a stacked blend falls back to without out-of-fold
    predictions (an ensemble of one transformer)."""
    names = [m for m in MEMBERS if m in names]
    return Stack(names, [1 / len(names)] * len(names), task, out_of_fold={'none': why})


def fixed_stack(weights, task):
    """The user's own weights (member name -> weight > 0), normalised to sum to 1."""
    names = [m for m in MEMBERS if weights.get(m)]
    total = sum(weights[m] for m in names)
    return Stack(names, [weights[m] / total for m in names], task,
                 out_of_fold={'none': 'fixed weights'})


def _member_probabilities(stack, name, output):
    """A classifier member's (calibrated) probabilities: (n, C), or (models, n, C) for an
    ensemble, whose models are calibrated one by one where the stack says so and then
    averaged."""
    output = np.asarray(output, np.float64)
    if output.ndim == 3:
        if stack.calibration and stack.calibrate_each_model:
            return np.mean([_calibrated(p, stack.calibration[name]) for p in output], axis=0)
        output = output.mean(axis=0)
    return _calibrated(output, stack.calibration[name]) if stack.calibration else output


def apply_stack(stack, outputs):
    """``outputs``: member name -> (n,) values or (n, C) probabilities of new samples; a
    classifier's ensemble member may give each model's, (models, n, C). Returns the blend:
    values, or probabilities."""
    if stack.task == 'classification':
        parts = [_member_probabilities(stack, m, outputs[m]) for m in stack.members]
    else:
        parts = [np.asarray(outputs[m], np.float64) for m in stack.members]
    blend = sum(w * p for w, p in zip(stack.weights, parts))
    if stack.task == 'classification' and stack.blend_calibration:
        blend = _calibrated(blend, stack.blend_calibration)
    return blend


def check_stack_config(config, task, n_outputs):
    """config.json's ``stack``: known members, weights >= 0 summing to 1, and a classifier's
    calibrations; raises ValueError naming the first problem."""
    try:
        members, weights = list(config['members']), [float(w) for w in config['weights']]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f'it needs a list "members" and a list of numbers "weights"; found '
                         f'{config!r}.') from None
    unknown = [m for m in members if m not in MEMBERS]
    if unknown or not members or len(set(members)) != len(members):
        raise ValueError(f'its members must be distinct names from {list(MEMBERS)}; found '
                         f'{members}.')
    if len(weights) != len(members) or not all(np.isfinite(w) and w >= 0 for w in weights) \
            or abs(sum(weights) - 1) > 1e-6:
        raise ValueError(f'it needs one weight of at least 0 per member, summing to 1; found '
                         f'{weights} for {members}.')
    if not isinstance(config.get('calibrate_each_model', False), bool):
        raise ValueError(f'its "calibrate_each_model" must be true or false; found '
                         f'{config["calibrate_each_model"]!r}.')
    cals = config.get('calibration')
    if cals is not None and (task != 'classification' or set(cals) != set(members)):
        raise ValueError('only a classifier\'s members are calibrated, each of them.')
    for cal in list((cals or {}).values()) + [config.get('blend_calibration')]:
        if cal is None:
            continue
        t, bias = float(cal['temperature']), [float(b) for b in cal['bias']]
        if not (np.isfinite(t) and t > 0) or len(bias) != n_outputs or \
                not all(np.isfinite(b) for b in bias):
            raise ValueError(f'a calibration needs a positive temperature and {n_outputs} '
                             f'finite biases; found {cal!r}.')
