import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from q2_aam.engine import runtime, trainer as trainer_module
from q2_aam.engine.data import split_samples
from q2_aam.engine.predict import average_predictions, encode_all_asvs, predict
from q2_aam.engine.runlog import fmt as _fmt
from q2_aam.engine.runtime import resolve_device
from q2_aam.engine.trainer import MAX_NONFINITE_STEPS, TrainSettings, Trainer, target_scale, train

from engine_fixtures import tiny_model, toy_data

TRAIN, VAL = split_samples(10, 0.3, seed=0)


def settings(**changes):
    base = dict(epochs=2, batch_size=4, learning_rate=1e-3, quiet=True,
                histogram_frequency=0, warmup_fraction=0.0)
    base.update(changes)
    return TrainSettings(**base)


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def regression_run(seed=0, **changes):
    data = toy_data(targets='regression', distances=False)
    model = tiny_model('regression', 1, seed=seed)
    result = train(model, data, TRAIN, VAL, settings(**changes))
    return model, data, result


# -- what a run records --------------------------------------------------------------

def test_pretraining_records_its_losses():
    data = toy_data()
    result = train(tiny_model(), data, TRAIN, VAL, settings())
    h = result.history
    assert list(h['epoch']) == [1, 2]
    for split in ('train', 'val'):
        for term in ('total_loss', 'unifrac_loss', 'nuc_loss'):
            assert np.isfinite(h[f'{split}_{term}']).all()
    assert 'train_target_loss' not in h
    assert (h['grad_norm'] > 0).all()
    assert h['learning_rate'].iloc[0] > h['learning_rate'].iloc[1] >= 0     # cosine decay
    # the validation table of a pretraining run: one row per validation pair
    assert len(result.validation) == len(VAL) * (len(VAL) - 1) // 2
    assert result.train_samples_per_second > 0
    assert result.tensorboard and all(isinstance(v, bytes) for v in result.tensorboard.values())


def test_a_kmer_only_encoder_pretrains_on_unifrac_without_a_nucleotide_loss():
    data = toy_data()
    model = tiny_model(nucleotide_layers=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, data, TRAIN, VAL, settings(nuc_weight=1.0))
    h = result.history
    assert np.isfinite(h['train_unifrac_loss']).all() and np.isfinite(h['val_total_loss']).all()
    assert 'train_nuc_loss' not in h and 'val_nuc_loss' not in h
    assert not torch.equal(before['asv_encoder.kmers.table.weight'],
                           result.state_dict['asv_encoder.kmers.table.weight'])


def test_a_given_target_scale_replaces_the_training_rows_own():
    data = toy_data(targets='regression', distances=False)
    _, _, own = regression_run()
    _, _, given = regression_run(target_scale=(10.0, 4.0))
    assert (given.target_mean, given.target_std) == (10.0, 4.0)
    assert (own.target_mean, own.target_std) == pytest.approx(target_scale(data.targets[TRAIN]))
    # the validation predictions stay on the user's scale either way, and differ in fit
    np.testing.assert_allclose(given.validation['truth'], own.validation['truth'])
    assert not np.allclose(given.validation['prediction'], own.validation['prediction'])


def test_rarefy_depth_subsamples_the_training_batches_only():
    data = toy_data(targets='regression', distances=False)
    calls = []
    make_batch = data.make_batch

    def recording(rows, **kwargs):
        calls.append((len(rows), kwargs.get('rarefy')))
        return make_batch(rows, **kwargs)
    data.make_batch = recording
    depth = int(data.totals.min()) // 4
    result = train(tiny_model('regression', 1), data, TRAIN, VAL, settings(rarefy_depth=depth))
    training = [r for n, r in calls if r is not None]
    assert len(training) == 2 * 2                   # 7 training rows, batch 4, 2 epochs
    assert all(r[0] == depth for r in training)
    assert sum(n for n, r in calls if r is None) == 2 * len(VAL)   # validation: full reads
    _, _, plain = regression_run()
    assert not same_state(result.state_dict, plain.state_dict)


def test_target_scale_of_a_constant_target_is_one():
    assert target_scale([2.0, 4.0]) == (3.0, 1.0)
    assert target_scale([5.0, 5.0, 5.0]) == (5.0, 1.0)


def test_average_predictions_of_regressors_is_the_mean():
    a, b = np.array([[1.0], [-2.0]]), np.array([[3.0], [0.0]])
    np.testing.assert_allclose(average_predictions([a, b], 'regression'), [[2.0], [-1.0]])


def test_average_predictions_of_classifiers_averages_probabilities():
    members = [np.array([[4.0, 0.0, 0.0], [20.0, 0.0, 0.0]]),
               np.array([[0.0, 1.0, 0.0], [20.0, 0.0, 0.0]]),
               np.array([[0.0, 0.0, 2.0], [0.0, 50.0, 0.0]])]
    softmax = lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)   # noqa: E731
    out = average_predictions(members, 'classification')
    np.testing.assert_allclose(softmax(out), sum(softmax(m) for m in members) / 3)
    np.testing.assert_allclose(softmax(out)[1], [2 / 3, 1 / 3, 0], atol=1e-8)
    # two of three members vote class 0 for sample 1; the mean of the logits would let the
    # third member's one huge logit outvote them
    assert out.argmax(1).tolist() == [0, 0]
    assert np.mean(members, axis=0).argmax(1).tolist() == [0, 1]


def test_regression_standardises_with_training_statistics():
    model, data, result = regression_run()
    y = data.targets[TRAIN]
    assert result.target_mean == pytest.approx(y.mean())
    assert result.target_std == pytest.approx(y.std())
    for split in ('train', 'val'):
        for name in ('total_loss', 'target_loss', 'nuc_loss', 'r2', 'mae'):
            assert f'{split}_{name}' in result.history
    table = result.validation
    assert list(table.index) == list(data.sample_ids[VAL])
    np.testing.assert_allclose(table['truth'], data.targets[VAL])
    # the table's predictions are on the user's scale: predict() + unstandardise agrees
    model.load_state_dict(result.state_dict)
    raw = predict(model, data, rows=VAL)['prediction'][:, 0]
    np.testing.assert_allclose(table['prediction'], raw * result.target_std + result.target_mean,
                               rtol=1e-4, atol=1e-4)


def test_classification_with_class_names():
    data = toy_data(targets='classification')
    s = settings()
    result = train(tiny_model('classification', 2), data, TRAIN, VAL, s,
                   class_names=['healthy', 'sick'])
    assert {'train_accuracy', 'train_f1', 'val_accuracy', 'val_f1'} <= set(result.history)
    table = result.validation
    assert set(table['truth']) <= {'healthy', 'sick'}
    np.testing.assert_allclose(table['prob:healthy'] + table['prob:sick'], 1.0, rtol=1e-5)
    # without names the classes are called by their index
    result = train(tiny_model('classification', 2), data, TRAIN, VAL, settings(epochs=1))
    assert set(result.validation['truth']) <= {'0', '1'}


def test_model_with_target_needs_targets():
    with pytest.raises(ValueError, match='no targets'):
        Trainer(tiny_model('regression', 1), toy_data(), TRAIN, VAL, settings())


# -- non-finite losses ---------------------------------------------------------------

def _infinite_distances(data, samples):
    """Corrupt distances (a NaN would mean 'unknown pair', which the loss leaves out)."""
    data.distances[samples, :] = np.inf
    data.distances[:, samples] = np.inf
    return data


def test_nonfinite_loss_skips_the_step_and_names_term_and_samples():
    data = _infinite_distances(toy_data(), [3])
    model = tiny_model()
    rows = np.array([0, 1, 2, 3, 4, 5])
    with pytest.warns(RuntimeWarning) as caught:
        result = train(model, data, rows, [], settings(epochs=1, batch_size=2))
    messages = [str(w.message) for w in caught if 'Skipped' in str(w.message)]
    assert len(messages) == 1                       # the one batch that holds S3
    assert 'unifrac_loss is not finite' in messages[0]
    assert 'nuc_loss' in messages[0] and 'S3' in messages[0]
    assert re.search(r"batch's 2 samples: S\d, S\d", messages[0])
    assert np.isfinite(result.history['train_total_loss']).all()   # two good steps counted


def test_skipped_steps_leave_weights_alone_and_five_in_a_row_stop_training():
    data = _infinite_distances(toy_data(), list(range(10)))
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # two batches per epoch, two epochs: four bad steps in a row, not yet fatal
    with pytest.warns(RuntimeWarning, match='unifrac_loss is not finite'):
        train(model, data, np.arange(8), [], settings(epochs=2, batch_size=4))
    assert same_state(model.state_dict(), before)
    with pytest.warns(RuntimeWarning):
        with pytest.raises(FloatingPointError,
                           match=f'{MAX_NONFINITE_STEPS} steps in a row.*unifrac_loss.*'
                                 'Lower the learning rate'):
            train(model, data, np.arange(8), [], settings(epochs=3, batch_size=4))


# -- early stopping, best state, checkpoints, resume -------------------------------------

def test_early_stopping_with_patience(capsys):
    # lr 0: validation never improves after the first epoch
    s = settings(epochs=20, patience=2, learning_rate=0.0, quiet=False)
    result = train(tiny_model(), toy_data(), TRAIN, VAL, s)
    assert result.epochs_run == 3 and result.best_epoch == 1
    assert len(result.history) == 3
    assert 'Early stop: validation loss has not improved for 2 epochs; keeping epoch 1' in \
        capsys.readouterr().err


def test_single_best_state_is_returned_and_checkpointed(tmp_path):
    data = toy_data(targets='regression')
    model = tiny_model('regression', 1)
    states, files = {}, []

    def remember(epoch, record):
        states[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        files.append(sorted(p.name for p in tmp_path.iterdir()))

    s = settings(epochs=6, learning_rate=3e-2, checkpoint_dir=str(tmp_path))
    result = train(model, data, TRAIN, VAL, s, on_epoch_end=remember)
    val = result.history['val_total_loss'].to_numpy()
    assert result.best_epoch == int(np.argmin(val)) + 1
    assert not same_state(states[result.best_epoch], states[6]) or result.best_epoch == 6
    assert same_state(result.state_dict, states[result.best_epoch])
    # the single best model, the last state, and a validation figure per improvement
    improved = sorted({result.history['epoch'][i] for i in range(len(val))
                       if val[i] < val[:i].min(initial=np.inf)})
    assert all(f[:2] == ['best_model.pt', 'last_checkpoint.pt'] for f in files)
    assert files[-1][2:] == sorted(f'validation-epoch-{e}.png' for e in improved)
    assert (tmp_path / f'validation-epoch-{result.best_epoch}.png').read_bytes()[:4] == \
        b'\x89PNG'
    best = torch.load(tmp_path / 'best_model.pt', weights_only=True)
    assert same_state(best, result.state_dict)
    # the validation table is the best epoch's
    model.load_state_dict(result.state_dict)
    raw = predict(model, data, rows=VAL)['prediction'][:, 0]
    np.testing.assert_allclose(result.validation['prediction'],
                               raw * result.target_std + result.target_mean, rtol=1e-4,
                               atol=1e-4)


def test_without_validation_the_training_loss_decides():
    result = train(tiny_model(), toy_data(), np.arange(10), [], settings(epochs=3))
    assert 'val_total_loss' not in result.history
    assert result.best_epoch == int(np.argmin(result.history['train_total_loss'])) + 1
    assert result.validation.empty


class Interrupted(Exception):
    pass


def test_resume_gives_bit_identical_weights(tmp_path):
    data = toy_data(targets='regression')
    s = dict(epochs=4, learning_rate=1e-2)
    whole_model = tiny_model('regression', 1)
    whole = train(whole_model, data, TRAIN, VAL, settings(**s, checkpoint_dir=str(tmp_path / 'a')))

    def stop_after_two(epoch, record):
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(tiny_model('regression', 1), data, TRAIN, VAL,
              settings(**s, checkpoint_dir=str(tmp_path / 'b')), on_epoch_end=stop_after_two)
    torch.rand(13)                                    # the process moved on in between
    resumed_model = tiny_model('regression', 1, seed=99)   # different start: overwritten
    resumed = train(resumed_model, data, TRAIN, VAL,
                    settings(**s, checkpoint_dir=str(tmp_path / 'b')),
                    resume_from=tmp_path / 'b' / 'last_checkpoint.pt')
    assert resumed.epochs_run == 4
    assert same_state(resumed_model.state_dict(), whole_model.state_dict())
    assert same_state(resumed.state_dict, whole.state_dict)
    assert resumed.best_epoch == whole.best_epoch
    assert resumed.history.equals(whole.history)
    assert resumed.validation.equals(whole.validation)


def test_same_seed_same_weights_different_seed_different_weights():
    calls = []

    def run(seed):
        model = tiny_model(seed=0)                    # same initial weights
        calls.append(seed)
        torch.rand(len(calls))                        # whatever else the process drew
        train(model, toy_data(), TRAIN, VAL, settings(random_seed=seed, learning_rate=1e-2))
        return model.state_dict()

    assert same_state(run(1), run(1))
    assert not same_state(run(1), run(2))


# -- clipping and freezing -------------------------------------------------------------

def _record_step_norms(trainer):
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group['params']
                 if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))

    trainer.optimizer.register_step_pre_hook(record)
    return norms


@pytest.mark.parametrize('max_grad_norm', [None, 0.01])
def test_gradient_clipping_and_logged_norm(max_grad_norm):
    data = toy_data()
    trainer = Trainer(tiny_model(), data, np.arange(10), [],
                      settings(epochs=1, batch_size=5, max_grad_norm=max_grad_norm))
    norms = _record_step_norms(trainer)
    result = trainer.run()
    assert len(norms) == 2
    logged = result.history['grad_norm'].iloc[0]
    assert logged > 0.01                               # the norm before clipping is logged
    if max_grad_norm is None:
        assert logged == pytest.approx(np.mean(norms), rel=1e-4)
    else:
        assert max(norms) <= max_grad_norm * (1 + 1e-4)


def test_freeze_encoder_trains_only_the_head():
    data = toy_data(targets='regression')
    model = tiny_model('regression', 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, data, TRAIN, VAL, settings(freeze_encoder=True, learning_rate=1e-2))
    after = model.state_dict()
    for name in before:
        if name.startswith('target_head.'):
            continue
        assert torch.equal(after[name], before[name]), name
    assert not torch.equal(after['target_head.0.weight'], before['target_head.0.weight'])
    assert {c for c in result.history if 'loss' in c} == \
        {'train_total_loss', 'train_target_loss', 'val_total_loss', 'val_target_loss'}


def test_activation_checkpointing_by_default_for_larger_models_only_same_weights():
    small, large = tiny_model(), tiny_model(dim=128)        # 16 x 1 and 128 x 1
    Trainer(small, toy_data(), TRAIN, VAL, settings())
    Trainer(large, toy_data(), TRAIN, VAL, settings())
    assert small.asv_encoder.checkpoint_layers is False
    assert large.asv_encoder.checkpoint_layers is True
    weights = []
    for checkpointing in (True, False):
        model = tiny_model()
        train(model, toy_data(), TRAIN, VAL,
              settings(activation_checkpointing=checkpointing, learning_rate=1e-2))
        assert model.asv_encoder.checkpoint_layers is checkpointing
        weights.append(model.state_dict())
    assert same_state(*weights)


def test_freeze_encoder_needs_a_head():
    with pytest.raises(ValueError, match='freeze_encoder leaves nothing to train'):
        Trainer(tiny_model(), toy_data(), TRAIN, VAL, settings(freeze_encoder=True))


# -- TensorBoard -------------------------------------------------------------------

def _events(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(directory), size_guidance={'scalars': 0, 'histograms': 0,
                                                          'images': 0})
    acc.Reload()
    return acc


def test_tensorboard_overlays_train_and_val_as_two_runs_with_the_same_tags(tmp_path):
    model, data, result = regression_run(epochs=3, tensorboard_dir=str(tmp_path),
                                         learning_rate=1e-2)
    train_run, val_run = _events(tmp_path / 'train'), _events(tmp_path / 'val')
    metrics = {'total_loss', 'target_loss', 'nuc_loss', 'r2', 'mae'}
    epoch_tags = {t for t in train_run.Tags()['scalars'] if not t.startswith('step/')}
    assert set(val_run.Tags()['scalars']) == metrics      # the same names in both runs,
    assert epoch_tags == metrics | {'learning_rate', 'grad_norm'}   # so one chart each
    history = result.history
    for run, split in ((train_run, 'train'), (val_run, 'val')):
        for name in ('total_loss', 'r2'):
            events = run.Scalars(name)
            assert [e.step for e in events] == [1, 2, 3]
            np.testing.assert_allclose([e.value for e in events], history[f'{split}_{name}'],
                                       rtol=1e-5)
    for name in ('learning_rate', 'grad_norm'):
        np.testing.assert_allclose([e.value for e in train_run.Scalars(name)], history[name],
                                   rtol=1e-5)
    assert train_run.Tags()['histograms'] == []           # histogram_frequency=0: off
    # the validation figure, once per improvement, in the val run
    improved = np.sum(np.diff(np.minimum.accumulate(
        np.concatenate([[np.inf], history['val_total_loss']]))) < 0)
    assert len(val_run.Images('figure')) == improved >= 1
    # the run's event files come back with the result too
    assert set(result.tensorboard) == {p.relative_to(tmp_path).as_posix()
                                       for p in tmp_path.rglob('*') if p.is_file()}


def test_per_step_scalars_record_every_step_and_the_clipping(tmp_path):
    data = toy_data()
    trainer = Trainer(tiny_model(), data, np.arange(10), [],
                      settings(epochs=2, batch_size=4, max_grad_norm=0.01,
                               tensorboard_dir=str(tmp_path)))
    norms = _record_step_norms(trainer)
    trainer.run()
    run = _events(tmp_path / 'train')
    steps = 2 * 3                                     # 10 samples in batches of 4, 4, 2
    for name in ('total_loss', 'unifrac_loss', 'nuc_loss', 'learning_rate', 'grad_norm',
                 'clipped'):
        assert [e.step for e in run.Scalars(f'step/{name}')] == list(range(1, steps + 1))
    logged = [e.value for e in run.Scalars('step/grad_norm')]
    assert all(n > 0.01 for n in logged)              # before clipping ...
    assert max(norms) <= 0.01 * (1 + 1e-4)            # ... while the step used the clipped one
    assert [e.value for e in run.Scalars('step/clipped')] == [1.0] * steps


def test_epoch_losses_are_means_weighted_by_samples(monkeypatch):
    """Batches of 4, 4 and 2 samples: the epoch's loss is their mean weighted 4:4:2."""
    seen = []
    original = trainer_module.losses.total_loss

    def recording(terms, weights):
        loss = original(terms, weights)
        if loss is not None and loss.requires_grad:
            seen.append(loss.item())
        return loss
    monkeypatch.setattr(trainer_module.losses, 'total_loss', recording)
    result = train(tiny_model(), toy_data(), np.arange(10), [], settings(epochs=1,
                                                                         batch_size=4))
    assert len(seen) == 3
    weighted = (4 * seen[0] + 4 * seen[1] + 2 * seen[2]) / 10
    assert result.history['train_total_loss'].iloc[0] == pytest.approx(weighted, rel=1e-6)
    assert weighted != pytest.approx(np.mean(seen), rel=1e-6)


def test_pretraining_tensorboard_tags(tmp_path):
    train(tiny_model(), toy_data(), TRAIN, VAL, settings(tensorboard_dir=str(tmp_path)))
    for split in ('train', 'val'):
        scalars = set(_events(tmp_path / split).Tags()['scalars'])
        assert {'total_loss', 'unifrac_loss', 'nuc_loss'} <= scalars
        assert not scalars & {'r2', 'accuracy', 'target_loss'}


def test_histograms_only_when_asked_and_only_for_parameters_with_gradient(tmp_path):
    model, data, result = regression_run(epochs=2, histogram_frequency=1, freeze_encoder=True,
                                         tensorboard_dir=str(tmp_path))
    run = _events(tmp_path / 'train')
    heads = {n for n, _ in model.target_head.named_parameters()}
    assert set(run.Tags()['histograms']) == {f'{kind}/target_head.{n}'
                                             for kind in ('weights', 'gradients') for n in heads}
    assert [e.step for e in run.Histograms('weights/target_head.0.weight')] == [1, 2]


def test_histogram_frequency(tmp_path):
    train(tiny_model(), toy_data(), TRAIN, VAL,
          settings(epochs=2, histogram_frequency=2, tensorboard_dir=str(tmp_path)))
    run = _events(tmp_path / 'train')
    histograms = run.Tags()['histograms']
    assert 'weights/asv_encoder.token.weight' in histograms
    assert 'gradients/nuc_head.weight' in histograms
    assert [e.step for e in run.Histograms('weights/nuc_head.weight')] == [2]


# -- progress output ---------------------------------------------------------------

class EagerTqdm(trainer_module.tqdm):
    """Redraws on every update, so tiny test runs show their postfix."""

    def __init__(self, *args, **kwargs):
        kwargs['mininterval'] = 0
        super().__init__(*args, **kwargs)


def test_progress_bar_shows_present_losses_and_lr(capsys, monkeypatch):
    monkeypatch.setattr(trainer_module, 'tqdm', EagerTqdm)
    train(tiny_model(), toy_data(), TRAIN, VAL, settings(quiet=False))
    err = capsys.readouterr().err
    assert 'Epoch 1/2' in err and 'Epoch 2/2' in err
    assert re.search(r'Total=\d+\.\d{4} UniFrac=\d+\.\d{4} Nuc=\d+\.\d{4} LR=\d\.\d\de-\d\d',
                     err)
    assert 'Target=' not in err and 'Step' not in err
    assert re.search(r'epoch 1/2 .*train_total_loss=.*val_total_loss=', err)


def test_progress_bar_of_a_frozen_fit(capsys, monkeypatch):
    monkeypatch.setattr(trainer_module, 'tqdm', EagerTqdm)
    regression_run(quiet=False, freeze_encoder=True, epochs=1)
    err = capsys.readouterr().err
    assert re.search(r'Total=\d+\.\d{4} Target=\d+\.\d{4} LR=', err)
    assert 'UniFrac=' not in err and 'Nuc=' not in err and 'Step' not in err


def test_quiet_prints_nothing(capfd, monkeypatch):
    monkeypatch.setattr(trainer_module, 'tqdm', EagerTqdm)
    train(tiny_model(), toy_data(), TRAIN, VAL, settings(quiet=True))
    out, err = capfd.readouterr()
    assert out == '' and err == ''


def test_loss_format():
    assert _fmt(0.123456) == '0.1235'
    assert _fmt(12.0) == '12.0000'
    assert _fmt(1e-4) == '0.0001'
    assert _fmt(5.4321e-5) == '0.000054'
    assert _fmt(0.0) == '0.000000'


# -- devices ------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="device 'cuda' was asked for, but torch sees no CUDA"):
        Trainer(tiny_model(), toy_data(), TRAIN, VAL, settings(device='cuda'))
    with pytest.raises(ValueError, match='no CUDA GPU'):
        predict(tiny_model(), toy_data(), device='cuda')
    assert resolve_device('auto') == torch.device('cpu')
    with pytest.raises(ValueError, match="'auto', 'cpu' or 'cuda'"):
        resolve_device('tpu')


# -- prediction ---------------------------------------------------------------------

def _count_encoded_rows(model):
    rows = []
    model.asv_encoder.register_forward_hook(lambda m, inputs, out: rows.append(inputs[0]))
    return rows


def test_predict_encodes_each_distinct_asv_once():
    data = toy_data(n_samples=9, targets='regression')
    model = tiny_model('regression', 1)
    encoded = _count_encoded_rows(model)
    deduped = predict(model, data, batch_size=4, dedupe_table=True)
    n_distinct = len(data.used_features(range(9)))
    assert sum(len(t) for t in encoded) == n_distinct
    assert len(torch.unique(torch.cat([t for t in encoded]), dim=0)) == n_distinct
    encoded.clear()
    per_batch = predict(model, data, batch_size=4, dedupe_table=False)
    assert sum(len(t) for t in encoded) > n_distinct
    for key in ('embedding', 'prediction'):
        assert deduped[key].shape == per_batch[key].shape
        np.testing.assert_allclose(deduped[key], per_batch[key], rtol=1e-4, atol=1e-5)
    assert deduped['embedding'].shape == (9, 16) and deduped['prediction'].shape == (9, 1)


def test_predict_rows_and_no_head():
    data = toy_data(n_samples=6)
    model = tiny_model()
    everything = predict(model, data)
    some = predict(model, data, rows=[4, 1], batch_size=1)
    assert set(everything) == {'embedding'}
    np.testing.assert_allclose(some['embedding'], everything['embedding'][[4, 1]], rtol=1e-4,
                               atol=1e-5)


def test_encode_all_asvs_leaves_unused_rows_zero():
    data = toy_data(n_samples=4)
    model = tiny_model().train()
    vectors = encode_all_asvs(model, data, torch.device('cpu'), rows=[0])
    used = data.used_features([0])
    assert model.training                              # the mode is restored
    assert (vectors[used].abs().sum(1) > 0).all()
    unused = np.setdiff1d(np.arange(len(data.feature_ids)), used)
    assert (vectors[unused] == 0).all()


def test_engine_never_imports_qiime2():
    code = ('import sys; import q2_aam.engine.trainer, q2_aam.engine.savedmodel, '
            'q2_aam.engine.plots; '
            'print(sorted(m for m in sys.modules if m.split(".")[0] in '
            '("qiime2", "q2cli", "q2_types")))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == '[]'


def test_a_failed_run_leaves_no_temporary_tensorboard_folder(tmp_path, monkeypatch):
    monkeypatch.setattr('tempfile.tempdir', str(tmp_path))
    data = toy_data(targets='regression', distances=False)

    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_model('regression', 1), data, TRAIN, VAL, settings(), on_epoch_end=stop)
    assert list(tmp_path.glob('q2-aam-tensorboard-*')) == []
    train(tiny_model('regression', 1), data, TRAIN, VAL, settings(epochs=1))
    assert list(tmp_path.glob('q2-aam-tensorboard-*')) == []


def test_sigterm_removes_the_temporary_event_folder(tmp_path):
    """A scheduler's SIGTERM unwinds like Ctrl-C: the run's temporary folder is removed."""
    import os
    import signal
    import time
    code = ('import sys; sys.path.insert(0, "tests"); import numpy as np\n'
            'from engine_fixtures import tiny_model, toy_data\n'
            'from q2_aam.engine.trainer import TrainSettings, train\n'
            'data = toy_data(targets="regression", distances=False)\n'
            'train(tiny_model("regression", 1), data, np.arange(8), np.arange(8, 10),\n'
            '      TrainSettings(epochs=100000, batch_size=4, quiet=True, '
            'histogram_frequency=0))\n')
    env = dict(os.environ, TMPDIR=str(tmp_path), OMP_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, '-c', code], env=env, cwd=str(
        trainer_module.Path(__file__).resolve().parents[1]))
    deadline = time.time() + 120
    while not list(tmp_path.glob(f'{runtime.TEMP_PREFIX}{proc.pid}-*')):
        assert time.time() < deadline and proc.poll() is None, 'no training folder appeared'
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=180) != 0        # generous: a loaded machine unwinds slowly
    assert not list(tmp_path.glob(f'{runtime.TEMP_PREFIX}*'))


def test_folders_of_dead_runs_are_swept_and_live_ones_kept(tmp_path):
    import os
    finished = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                              capture_output=True, text=True, check=True)
    dead = tmp_path / f'{runtime.TEMP_PREFIX}{finished.stdout.strip()}-abc'
    live = tmp_path / f'{runtime.TEMP_PREFIX}{os.getppid()}-def'
    other = tmp_path / 'someone-elses-folder'
    for folder in (dead, live, other):
        (folder / 'sub').mkdir(parents=True)
        (folder / 'sub' / 'events.out.tfevents.1').write_bytes(b'x')
    assert runtime.sweep_stale_folders(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and other.exists()


def test_a_compiled_forward_trains_the_same_model():
    """compile='inductor' (the plugin's compile) is torch.compile with dynamic shapes; the
    'eager' backend traces the same graphs without generating code, so this checks in
    seconds that our model compiles and trains as it does uncompiled."""
    data = toy_data(targets='regression')
    rows = np.arange(8), np.arange(8, 10)
    settings = TrainSettings(epochs=2, batch_size=4, learning_rate=1e-3, quiet=True,
                             histogram_frequency=0, threads=1, random_seed=0)
    eager = train(tiny_model('regression', 1, dropout=0.0), data, *rows, settings)
    import dataclasses
    traced = train(tiny_model('regression', 1, dropout=0.0), data, *rows,
                   dataclasses.replace(settings, compile='eager'))
    for name, value in eager.state_dict.items():
        torch.testing.assert_close(traced.state_dict[name], value, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(traced.history['train_total_loss'],
                               eager.history['train_total_loss'], rtol=1e-6)
