import math

import numpy as np
import pytest
import torch

from q2_aam.engine.optim import (OPTIMIZERS, SCHEDULERS, Lion, make_optimizer, make_scheduler,
                                 parse_scheduler_params, warmup_steps)

LR = 1.0


def _optimizer(lr=LR):
    return make_optimizer('adamw', [torch.nn.Parameter(torch.zeros(2, 2))], lr=lr)


def lr_curve(name, total_steps=20, warmup_fraction=0.25, params=None):
    """The lr used at each optimizer step of a run."""
    opt = _optimizer()
    sched = make_scheduler(name, opt, total_steps, warmup_fraction, params)
    lrs = []
    for _ in range(total_steps):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step(1.0) if sched.per_epoch else sched.step()   # plateau: one step an epoch
    return np.array(lrs)


def test_warmup_steps():
    assert warmup_steps(20, 0.25) == 5
    assert warmup_steps(20, 0.0) == 0
    assert warmup_steps(5, 2.0) == 4        # never longer than the run
    assert warmup_steps(1, 0.5) == 0


@pytest.mark.parametrize('name', ['warmup_cosine', 'constant', 'polynomial', 'onecycle'])
def test_warmup_rises_to_peak(name):
    lrs = lr_curve(name)
    assert lrs[0] > 0
    assert np.all(np.diff(lrs[:6]) > 0)
    assert lrs[5] == pytest.approx(LR)
    assert lrs.max() == pytest.approx(LR)


def test_warmup_cosine_ends_at_floor():
    lrs = lr_curve('warmup_cosine', params={'min_lr_ratio': 0.1})
    assert lrs[0] == pytest.approx(LR / 6)
    assert np.all(np.diff(lrs[5:]) < 0)
    assert lrs[-1] == pytest.approx(0.1 * LR)


def test_cosine_has_no_warmup():
    lrs = lr_curve('cosine', params='{"min_lr_ratio": 0.2}')
    assert lrs[0] == pytest.approx(LR)
    assert np.all(np.diff(lrs) < 0)
    assert lrs[-1] == pytest.approx(0.2 * LR)


def test_constant_is_flat_after_warmup():
    lrs = lr_curve('constant')
    assert np.allclose(lrs[5:], LR)


def test_polynomial_power_one_is_linear():
    lrs = lr_curve('polynomial', params={'min_lr_ratio': 0.0})
    assert np.allclose(np.diff(lrs[5:]), -LR / 14)
    assert lrs[-1] == pytest.approx(0.0)
    quad = lr_curve('polynomial', params={'power': 2.0})
    assert quad[12] < lrs[12]


def test_onecycle_peaks_then_falls():
    lrs = lr_curve('onecycle', params={'div_factor': 10.0, 'final_div_factor': 100.0})
    assert lrs[0] == pytest.approx(LR / 10)
    assert int(np.argmax(lrs)) == 5
    assert np.all(np.diff(lrs[5:]) < 0)
    assert lrs[-1] == pytest.approx(LR / 1000)
    assert int(np.argmax(lr_curve('onecycle', params={'pct_start': 0.5}))) == 10


def test_plateau_reduces_after_patience_bad_epochs():
    opt = _optimizer()
    sched = make_scheduler('plateau', opt, 100, params={'patience': 2, 'factor': 0.5})
    assert sched.per_epoch
    assert not make_scheduler('cosine', _optimizer(), 10).per_epoch
    sched.step(1.0)                         # best so far
    for _ in range(2):                      # `patience` bad epochs are tolerated
        sched.step(1.0)
        assert sched.get_last_lr() == [LR]
    sched.step(1.0)                         # one more: halved
    assert sched.get_last_lr() == [LR / 2]
    assert opt.param_groups[0]['lr'] == LR / 2
    with pytest.raises(ValueError, match='validation loss'):
        sched.step()


def test_plateau_min_lr():
    opt = _optimizer()
    sched = make_scheduler('plateau', opt, 100, params={'patience': 0, 'min_lr_ratio': 0.3})
    for _ in range(10):
        sched.step(1.0)
    assert sched.get_last_lr()[0] == pytest.approx(0.3 * LR)


@pytest.mark.parametrize('name', SCHEDULERS)
def test_warmup_never_exceeds_run(name):
    lrs = lr_curve(name, total_steps=5, warmup_fraction=2.0)
    assert np.all(np.isfinite(lrs)) and np.all(lrs >= 0) and lrs[0] > 0
    assert lrs.max() == pytest.approx(LR)
    one = lr_curve(name, total_steps=1, warmup_fraction=0.5)
    assert np.all(np.isfinite(one))
    zero = lr_curve(name, total_steps=7, warmup_fraction=0.0)
    assert zero[0] == pytest.approx(LR)


@pytest.mark.parametrize('name', SCHEDULERS)
def test_stepping_past_the_run_keeps_last_lr(name):
    opt = _optimizer()
    sched = make_scheduler(name, opt, 4, 0.25)
    for _ in range(10):
        opt.step()
        sched.step(1.0) if sched.per_epoch else sched.step()
    assert all(math.isfinite(lr) and lr >= 0 for lr in sched.get_last_lr())


def test_unknown_scheduler_params_refused():
    with pytest.raises(ValueError, match="'warmup'.*allowed: min_lr_ratio"):
        make_scheduler('warmup_cosine', _optimizer(), 10, params={'warmup': 0.2})
    with pytest.raises(ValueError, match="'min_lr_ratio'.*allowed: none"):
        make_scheduler('constant', _optimizer(), 10, params='{"min_lr_ratio": 0.1}')
    with pytest.raises(ValueError, match="'patience' must be an integer"):
        make_scheduler('plateau', _optimizer(), 10, params={'patience': 1.5})
    with pytest.raises(ValueError, match="'min_lr_ratio' must be in"):
        make_scheduler('cosine', _optimizer(), 10, params={'min_lr_ratio': 2})
    with pytest.raises(ValueError, match="'factor'"):
        make_scheduler('plateau', _optimizer(), 10, params={'factor': 1.0})


def test_bad_arguments_refused():
    with pytest.raises(ValueError, match='warmup_cosine, cosine'):
        make_scheduler('linear', _optimizer(), 10)
    with pytest.raises(ValueError, match='total_steps'):
        make_scheduler('cosine', _optimizer(), 0)
    with pytest.raises(ValueError, match='warmup_fraction'):
        make_scheduler('cosine', _optimizer(), 10, warmup_fraction=-0.1)
    with pytest.raises(ValueError, match='adamw, adam, sgd, lion'):
        make_optimizer('rmsprop', [torch.nn.Parameter(torch.zeros(1))])


def test_parse_scheduler_params():
    assert parse_scheduler_params(None) == {}
    assert parse_scheduler_params('') == {}
    assert parse_scheduler_params('  ') == {}
    assert parse_scheduler_params('{"min_lr_ratio": 0.1}') == {'min_lr_ratio': 0.1}
    with pytest.raises(ValueError, match='not valid JSON.*min_lr_ratio'):
        parse_scheduler_params("{'min_lr_ratio': 0.1}")
    with pytest.raises(ValueError, match='JSON object'):
        parse_scheduler_params('[0.1]')


@pytest.mark.parametrize('name', SCHEDULERS)
def test_scheduler_state_round_trip(name):
    def run(steps):
        torch.manual_seed(0)
        opt = _optimizer()
        return opt, make_scheduler(name, opt, 20, 0.25, {'patience': 1} if name == 'plateau'
                                   else None)

    losses = [1.0, 0.9, 0.95, 0.97, 0.99, 0.8, 0.85, 0.9, 0.95, 0.96] * 2
    opt, sched = run(20)
    for i in range(8):
        opt.step()
        sched.step(losses[i])
    opt_state, sched_state = opt.state_dict(), sched.state_dict()
    expected = []
    for i in range(8, 20):
        opt.step()
        sched.step(losses[i])
        expected.append(sched.get_last_lr()[0])

    opt2, sched2 = run(20)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(sched_state)
    resumed = []
    for i in range(8, 20):
        opt2.step()
        sched2.step(losses[i])
        resumed.append(sched2.get_last_lr()[0])
    assert resumed == expected
    assert opt2.param_groups[0]['lr'] == expected[-1]


@pytest.mark.parametrize('name', OPTIMIZERS)
def test_optimizers_fit_linear_regression(name):
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]]) + 0.3
    model = torch.nn.Linear(3, 1)
    lr = {'sgd': 0.05, 'lion': 0.01}.get(name, 0.05)
    opt = make_optimizer(name, model.parameters(), lr=lr, weight_decay=0.0)
    first = None
    for _ in range(200):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first


def test_weight_decay_groups():
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.LayerNorm(4),
                                torch.nn.Linear(4, 2))
    frozen = torch.nn.Parameter(torch.zeros(3, 3), requires_grad=False)
    opt = make_optimizer('adamw', [*model.parameters(), frozen], weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert [p.shape for p in decay['params']] == [(5, 4), (2, 4)]
    assert len(no_decay['params']) == 3     # LayerNorm weight and bias, Linear bias
    groups = [{'params': list(model.parameters()), 'weight_decay': 0.5}]
    assert make_optimizer('sgd', groups).param_groups[0]['weight_decay'] == 0.5


def test_lion_moves_by_lr_times_sign():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 5))
    start = p.detach().clone()
    opt = Lion([p], lr=0.01, weight_decay=0.0)
    p.grad = torch.randn(4, 5) * torch.tensor([1e-6, 1.0, 100.0, -3.0, 0.0])
    opt.step()
    assert torch.equal(p.detach(), start - 0.01 * torch.sign(p.grad))


def test_lion_decoupled_weight_decay():
    p = torch.nn.Parameter(torch.full((3,), 2.0))
    opt = Lion([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 2.0 * (1 - 0.05) - 0.1))
