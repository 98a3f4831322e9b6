"""The engine on a CUDA GPU: training, prediction and ensembles there agree with the CPU.

Skipped where torch sees no GPU (CI has none). On a GPU the model runs under bf16
autocast, so GPU and CPU agree to bf16 precision, not bit for bit.
"""
import numpy as np
import pytest
import torch

from q2_aam.engine.data import split_samples
from q2_aam.engine.predict import average_predictions, predict
from q2_aam.engine.runtime import resolve_device
from q2_aam.engine.trainer import TrainSettings, Trainer, train

from engine_fixtures import tiny_model, toy_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA GPU here')

TRAIN, VAL = split_samples(10, 0.3, seed=0)


def settings(**changes):
    base = dict(epochs=3, batch_size=4, learning_rate=1e-3, quiet=True,
                histogram_frequency=0, warmup_fraction=0.0, device='cuda')
    base.update(changes)
    return TrainSettings(**base)


def test_auto_picks_the_gpu():
    assert resolve_device('auto').type == 'cuda'


def test_pretraining_on_the_gpu_learns_and_returns_cpu_weights():
    data = toy_data()
    model = tiny_model()
    trainer = Trainer(model, data, TRAIN, VAL, settings(epochs=6, learning_rate=3e-3))
    assert next(model.parameters()).device.type == 'cuda'
    assert model.asv_encoder.checkpoint_layers is False     # memory is no worry there
    result = trainer.run()
    h = result.history
    assert np.isfinite(h[['train_total_loss', 'val_total_loss']].to_numpy()).all()
    assert h['train_total_loss'].iloc[-1] < h['train_total_loss'].iloc[0]
    assert all(t.device.type == 'cpu' for t in result.state_dict.values())


def test_a_regressor_trained_on_the_gpu_predicts_like_on_the_cpu():
    data = toy_data(targets='regression', distances=False)
    model = tiny_model('regression', 1)
    result = train(model, data, TRAIN, VAL, settings())
    model.load_state_dict(result.state_dict)
    on_gpu = predict(model, data, device='cuda')
    on_cpu = predict(model, data, device='cpu')
    # bf16 autocast on the GPU: agreement to about 1e-2 of the outputs' scale
    scale = np.abs(on_cpu['prediction']).max()
    np.testing.assert_allclose(on_gpu['prediction'], on_cpu['prediction'], atol=0.03 * scale)
    np.testing.assert_allclose(on_gpu['embedding'], on_cpu['embedding'],
                               atol=0.03 * np.abs(on_cpu['embedding']).max())
    # the validation table (computed on the GPU) matches a GPU predict() of the same rows
    raw = predict(model, data, rows=VAL, device='cuda')['prediction'][:, 0]
    np.testing.assert_allclose(result.validation['prediction'],
                               raw * result.target_std + result.target_mean,
                               atol=0.05 * result.target_std)


def test_gpu_prediction_with_and_without_the_table_cache_agree():
    data = toy_data(n_samples=9, targets='regression', distances=False)
    model = tiny_model('regression', 1)
    deduped = predict(model, data, batch_size=4, device='cuda', dedupe_table=True)
    per_batch = predict(model, data, batch_size=4, device='cuda', dedupe_table=False)
    np.testing.assert_allclose(deduped['prediction'], per_batch['prediction'], atol=2e-2)


def test_a_classifier_ensemble_on_the_gpu():
    data = toy_data(targets='classification', distances=False)
    outputs = []
    for seed in (0, 1):
        model = tiny_model('classification', 2, seed=seed)
        result = train(model, data, TRAIN, VAL, settings(random_seed=seed))
        model.load_state_dict(result.state_dict)
        outputs.append(predict(model, data, device='cuda')['prediction'])
    averaged = average_predictions(outputs, 'classification')
    probabilities = np.exp(averaged)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-6)
    assert np.isfinite(averaged).all() and averaged.shape == (10, 2)
