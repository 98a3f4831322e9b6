"""Optimizers and learning-rate schedules, chosen by name.

Every schedule is wrapped in `Scheduler`, which the trainer steps once per optimizer step
(or once per epoch with the validation loss when `scheduler.per_epoch` is true: plateau).
Convention for per-step schedules: the lr used at optimizer step s (0-based) is
`base_lr * f(s)`; warm-up reaches the peak at step `warmup`, decaying schedules reach their
floor at the last step `total_steps - 1`, and stepping past the run keeps the last value.
"""
import json
import math

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

OPTIMIZERS = ('adamw', 'adam', 'sgd', 'lion')
SCHEDULERS = ('warmup_cosine', 'cosine', 'plateau', 'onecycle', 'constant', 'polynomial')

# allowed settings per schedule and their defaults (onecycle's pct_start default is computed)
SCHEDULER_DEFAULTS = {
    'warmup_cosine': {'min_lr_ratio': 0.0},
    'cosine': {'min_lr_ratio': 0.0},
    'plateau': {'factor': 0.5, 'patience': 3, 'min_lr_ratio': 0.0},
    'onecycle': {'pct_start': None, 'div_factor': 25.0, 'final_div_factor': 1e4},
    'constant': {},
    'polynomial': {'power': 1.0, 'min_lr_ratio': 0.0},
}


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

    The update is the sign of an interpolation between momentum and gradient, so every
    coordinate moves by exactly lr: use a ~3-10x smaller lr than AdamW. Weight decay is
    decoupled (as in AdamW). Only one state tensor per parameter, half of Adam's memory.
    """

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        if lr <= 0:
            raise ValueError(f'Lion learning rate must be positive, got {lr}')
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f'Lion betas must be in [0, 1), got {betas}')
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group['lr'], group['weight_decay']
            beta1, beta2 = group['betas']
            for p in group['params']:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError('Lion does not support sparse gradients')
                state = self.state[p]
                if not state:
                    state['exp_avg'] = torch.zeros_like(p)
                m = state['exp_avg']
                p.mul_(1.0 - lr * wd)                                   # decoupled decay
                update = m.mul(beta1).add_(p.grad, alpha=1.0 - beta1)   # interpolate
                p.add_(update.sign_(), alpha=-lr)                       # move by lr * sign
                m.mul_(beta2).add_(p.grad, alpha=1.0 - beta2)           # then track momentum
        return loss


def make_optimizer(name, params, lr=1e-4, weight_decay=0.01):
    """Build an optimizer by name (one of OPTIMIZERS).

    `params` is an iterable of tensors (e.g. model.parameters()), or of param-group dicts,
    which are used as given. Tensors are split nanoGPT-style: weight decay applies to
    tensors with ndim >= 2 (matmul weights, embeddings); biases, LayerNorm weights and
    scalar loss weights (ndim < 2) are not decayed, since shrinking them towards zero only
    distorts the model. Parameters with requires_grad=False are left out.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f'unknown optimizer {name!r}; choose one of {", ".join(OPTIMIZERS)}')
    params = list(params)
    if params and all(isinstance(p, dict) for p in params):
        groups = params
    else:
        params = [p for p in params if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [g for g in ({'params': decay, 'weight_decay': weight_decay},
                              {'params': no_decay, 'weight_decay': 0.0}) if g['params']]
        if not groups:
            raise ValueError('the optimizer got no trainable parameters')
    if name == 'adamw':
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == 'adam':
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == 'sgd':
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return Lion(groups, lr=lr, weight_decay=weight_decay)


def parse_scheduler_params(text):
    """Parse the user's JSON scheduler settings ('' or None means no settings)."""
    if text is None or not str(text).strip():
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f'scheduler settings {text!r} are not valid JSON ({e.msg}); '
                         'write a JSON object such as \'{"min_lr_ratio": 0.1}\'') from None
    if not isinstance(params, dict):
        raise ValueError(f'scheduler settings must be a JSON object such as '
                         f'\'{{"min_lr_ratio": 0.1}}\', got {text!r}')
    return params


def warmup_steps(total_steps, warmup_fraction):
    """Warm-up length in steps: a fraction of the run, never longer than the run."""
    if warmup_fraction <= 0:
        return 0
    return min(int(round(warmup_fraction * total_steps)), total_steps - 1)


def _number(name, value, low, high, low_open=False, integer=False):
    """Check one scheduler setting, so a typo fails before training starts."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (integer and not float(value).is_integer()):
        kind = 'an integer' if integer else 'a number'
        raise ValueError(f'scheduler setting {name!r} must be {kind}, got {value!r}')
    if not (low < value if low_open else low <= value) or value > high:
        lo = '(' if low_open else '['
        raise ValueError(f'scheduler setting {name!r} must be in {lo}{low}, {high}], got {value}')
    return int(value) if integer else float(value)


def _check_params(name, params):
    """Fill defaults and refuse unknown or out-of-range settings, naming them."""
    allowed = SCHEDULER_DEFAULTS[name]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        choices = ', '.join(allowed) if allowed else 'none'
        raise ValueError(f'unknown setting(s) {", ".join(map(repr, unknown))} for scheduler '
                         f'{name!r}; allowed: {choices}')
    p = {**allowed, **params}
    inf = math.inf
    checks = {'min_lr_ratio': (0, 1, False, False), 'factor': (0, 1, True, False),
              'patience': (0, inf, False, True), 'power': (0, inf, True, False),
              'pct_start': (0, 1, True, False), 'div_factor': (0, inf, True, False),
              'final_div_factor': (0, inf, True, False)}
    for key in params:
        if not (key == 'pct_start' and params[key] is None):
            p[key] = _number(key, params[key], *checks[key])
    if name == 'plateau' and p['factor'] >= 1:
        raise ValueError(f"scheduler setting 'factor' must be below 1, got {p['factor']}")
    return p


def _cos(start, end, progress):
    """Cosine from start (progress 0) to end (progress 1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _lambda(name, total_steps, warmup, p):
    """The lr multiplier f(s) for every per-step schedule."""
    last = total_steps - 1
    floor = p.get('min_lr_ratio', 0.0)
    if name == 'onecycle':      # Smith's 1cycle: cosine up from max/div, down to max/div/final
        start = 1.0 / p['div_factor']
        floor = start / p['final_div_factor']

    def f(step):
        step = min(step, last)
        if step < warmup:
            if name == 'onecycle':
                return _cos(start, 1.0, step / warmup)
            return (step + 1) / (warmup + 1)            # small but nonzero at step 0
        if name == 'constant' or step == warmup:
            return 1.0
        progress = (step - warmup) / (last - warmup)    # 0 at the peak, 1 at the last step
        if name == 'polynomial':
            return floor + (1.0 - floor) * (1.0 - progress) ** p['power']
        return _cos(1.0, floor, progress)
    return f


class Scheduler:
    """A torch lr scheduler behind one interface: step(metric=None), get_last_lr(), state.

    `per_epoch` is true for plateau, which wants step(validation_loss) once per epoch;
    the others want step() after every optimizer step.
    """

    def __init__(self, name, optimizer, total_steps, warmup_fraction=0.1, params=None):
        if name not in SCHEDULERS:
            raise ValueError(f'unknown scheduler {name!r}; choose one of {", ".join(SCHEDULERS)}')
        if isinstance(total_steps, bool) or int(total_steps) != total_steps or total_steps < 1:
            raise ValueError(f'total_steps must be an integer >= 1, got {total_steps!r}')
        if not (0 <= warmup_fraction < math.inf):
            raise ValueError(f'warmup_fraction must be >= 0, got {warmup_fraction!r}')
        if isinstance(params, str) or params is None:
            params = parse_scheduler_params(params)
        self.name, self.total_steps = name, int(total_steps)
        self.params = _check_params(name, dict(params))
        self.per_epoch = name == 'plateau'
        self.steps = 0
        p, T = self.params, self.total_steps
        if name == 'onecycle':       # its warm-up is pct_start, by default warmup_fraction
            pct = p['pct_start']
            self.warmup = warmup_steps(T, warmup_fraction if pct is None else pct)
        elif name in ('warmup_cosine', 'constant', 'polynomial'):
            self.warmup = warmup_steps(T, warmup_fraction)
        else:                         # cosine and plateau have no warm-up
            self.warmup = 0
        if name == 'plateau':
            min_lrs = [g['lr'] * p['min_lr_ratio'] for g in optimizer.param_groups]
            self.inner = ReduceLROnPlateau(optimizer, mode='min', factor=p['factor'],
                                           patience=p['patience'], min_lr=min_lrs)
        else:
            # onecycle too: OneCycleLR divides by zero for a 0-step warm-up or a 1-step run
            self.inner = LambdaLR(optimizer, _lambda(name, T, self.warmup, p))

    def step(self, metric=None):
        """Advance one optimizer step (plateau: one epoch, with the loss to watch)."""
        if self.per_epoch:
            if metric is None:
                raise ValueError('the plateau scheduler is stepped with the validation loss')
            self.inner.step(float(metric))
            return
        self.steps += 1
        self.inner.step()       # past the run f(s) stays at its last value

    def get_last_lr(self):
        return [float(lr) for lr in self.inner.get_last_lr()]

    def state_dict(self):
        return {'name': self.name, 'steps': self.steps, 'inner': self.inner.state_dict()}

    def load_state_dict(self, state):
        if state['name'] != self.name:
            raise ValueError(f"scheduler state is for {state['name']!r}, not {self.name!r}")
        self.steps = state['steps']
        self.inner.load_state_dict(state['inner'])


def make_scheduler(name, optimizer, total_steps, warmup_fraction=0.1, params=None):
    """Build a Scheduler by name (one of SCHEDULERS); `params` is a dict or a JSON string."""
    return Scheduler(name, optimizer, total_steps, warmup_fraction, params)
