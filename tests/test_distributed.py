"""Several processes (torch.distributed, gloo on CPU) train as one process does on the same
global batches: the UniFrac loss counts the pairs across ranks, and the gradients match."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from q2_aam.engine import distributed
from q2_aam.engine.data import AmpliconData
from q2_aam.engine.trainer import TrainSettings, train

from engine_fixtures import random_sequences, tiny_config, toy_distances, toy_table
from q2_aam.engine.model import AAM

N = 15                # samples; global batches of 7 and 8 deal unevenly to 2 or 3 ranks


def _data():
    counts = toy_table(N, 14, seed=4)
    rng = np.random.default_rng(5)
    targets = counts[:, 0] / counts.sum(1) * 10 + rng.normal(0, 0.1, N)
    return AmpliconData(counts, [f'S{i}' for i in range(N)], [f'F{j:02d}' for j in range(14)],
                        random_sequences(14, rng), max_bp=40, distances=toy_distances(counts),
                        targets=targets)


def _model(task):
    torch.manual_seed(11)        # DDP broadcasts rank 0's weights anyway
    n_out = 1 if task == 'regression' else 0
    return AAM(tiny_config(task, n_out, dropout=0.0, nucleotide_layers=0))


def _settings(epochs, batch_size):
    # SGD: Adam turns gradients that are ~0 into full steps, so float noise would show
    return TrainSettings(epochs=epochs, batch_size=batch_size, learning_rate=0.05,
                         optimizer='sgd', scheduler='constant', random_seed=3, quiet=True,
                         histogram_frequency=0, threads=1, nuc_weight=0.0,
                         max_grad_norm=None)


def _run(task, epochs, batch_size):
    return train(_model(task), _data(), np.arange(12), np.arange(12, N),
                 _settings(epochs, batch_size))


def _worker(rank, world, port, task, epochs, batch_size, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = distributed.init_from_environment('gloo')
    assert (ctx.rank, ctx.world) == (rank, world)
    result = _run(task, epochs, batch_size)
    if ctx.main:
        torch.save({'state': result.state_dict,
                    'history': result.history.to_dict(orient='list')}, out)
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _distributed(tmp_path, world, task, epochs, batch_size):
    out = str(tmp_path / f'rank0-{world}.pt')
    mp.spawn(_worker, args=(world, _free_port(), task, epochs, batch_size, out), nprocs=world)
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize('world', [2, 3])
def test_one_step_has_the_one_process_loss_and_gradient(tmp_path, world):
    """One SGD step on a global batch of all 12 training samples (6+6 or 4+4+4 per rank):
    the weights after it (w - lr x gradient) and the logged losses equal one process's."""
    single = _run('encoder', 1, 12)
    multi = _distributed(tmp_path, world, 'encoder', 1, 12)
    for name, value in single.state_dict.items():
        torch.testing.assert_close(multi['state'][name], value, atol=1e-6, rtol=1e-5)
    assert multi['history']['train_unifrac_loss'][0] == pytest.approx(
        single.history['train_unifrac_loss'][0], rel=1e-5)
    moved = max(float((single.state_dict[k] - _model('encoder').state_dict()[k]).abs().max())
                for k in single.state_dict)
    assert moved > 1e-4                      # the step did something to compare


def test_a_two_process_fit_trains_to_the_one_process_weights(tmp_path):
    """Three epochs of global batches of 5 (3+2 per rank, the last 2: 1+1), a regressor with
    the UniFrac loss on: the same weights and losses as one process, within float tolerance."""
    single = _run('regression', 3, 5)
    multi = _distributed(tmp_path, 2, 'regression', 3, 5)
    for name, value in single.state_dict.items():
        torch.testing.assert_close(multi['state'][name], value, atol=1e-5, rtol=1e-4)
    for key in ('train_total_loss', 'train_unifrac_loss', 'train_target_loss',
                'val_total_loss'):
        np.testing.assert_allclose(multi['history'][key], single.history[key], rtol=1e-4)


def test_without_a_process_group_the_context_is_one_process():
    ctx = distributed.context()
    assert (ctx.rank, ctx.world, ctx.main, ctx.distributed) == (0, 1, True, False)
    parts = distributed.shards(np.arange(7), 3)
    assert [p.tolist() for p in parts] == [[0, 3, 6], [1, 4], [2, 5]]
