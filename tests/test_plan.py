"""The settings plan: one immutable record of a run's settings, which is what a checkpoint
folder fingerprints, what a resume compares and what the artifact's training record holds."""
import dataclasses
import json

import pytest

from q2_aam.actions.plan import DEFAULTS, NOT_FINGERPRINTED, make_plan
from q2_aam.actions.fit import with_defaults
from q2_aam.engine.savedmodel import SavedModel

from plugin_fixtures import SINGLE, TINY, days, encoder, regressor, rep_seqs, table

from qiime2.plugins.aam.methods import fit


def _fit_arguments(**changes):
    return with_defaults({**TINY, **SINGLE, **changes})


def test_a_plan_cannot_be_changed_once_made():
    plan = make_plan('fit', _fit_arguments())
    with pytest.raises(TypeError):
        plan.settings['epochs'] = 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.action = 'pretrain'
    longer = plan.replace(epochs=100)
    assert (plan['epochs'], longer['epochs']) == (TINY['epochs'], 100)


def test_the_plan_holds_settings_as_the_run_uses_them():
    """The encoder's architecture and max_bp, the continued model's ensemble size, a UniFrac
    weight of 0 without distances: not the arguments as typed."""
    saved_encoder = encoder().view(SavedModel)
    plan = make_plan('fit', _fit_arguments(embedding_dim=None, attention_heads=None,
                                           attention_layers=None),
                     pretrained=saved_encoder, distances=False)
    assert plan['embedding_dim'] == saved_encoder.config['model']['embedding_dim']
    assert plan['max_bp'] == saved_encoder.config['max_bp']
    assert plan['unifrac_weight'] == 0.0
    assert plan.starts_from['pretrained'] is not None
    assert plan.starts_from['continue_from'] is None
    previous = regressor().view(SavedModel)
    continued = make_plan('fit', _fit_arguments(ensemble_size=5, embedding_dim=None,
                                                attention_heads=None, attention_layers=None),
                          continue_from=previous)
    assert continued['ensemble_size'] == previous.ensemble_size != 5


def test_the_fingerprint_leaves_out_only_where_and_how_fast_a_run_goes():
    plan = make_plan('fit', _fit_arguments())
    fingerprint = plan.fingerprint()
    for name in NOT_FINGERPRINTED:
        assert name not in fingerprint
    for name in ('freeze_encoder', 'max_bp', 'ensemble_size', 'blend', 'epochs',
                 'pretrained', 'continue_from'):
        assert name in fingerprint
    # the devices and thread counts a resumed run may change do not change the fingerprint
    assert plan.replace(threads=2, device='cpu').fingerprint() == fingerprint
    assert plan.replace(freeze_encoder=True).fingerprint() != fingerprint


def test_what_the_checkpoint_folder_compares_is_what_the_artifact_records(tmp_path):
    folder = tmp_path / 'ck'
    model = fit(table=table(), sequences=rep_seqs(), metadata=days(),
                checkpoint_dir=str(folder), **{**TINY, **SINGLE}).model.view(SavedModel)
    run = json.loads((folder / 'run.json').read_text())
    training = model.config['training']
    compared = {k: v for k, v in run.items() if k not in ('action', 'data', 'groups',
                                                          'pretrained', 'continue_from')}
    assert compared, run
    for name, value in compared.items():
        recorded = training[name]
        if name == 'scheduler_params':          # the record holds it parsed
            recorded = json.dumps(recorded)
            value = json.dumps(json.loads(value))
        assert recorded == value, name
    assert training['unifrac_weight'] == 0.0        # no distance matrix: the weight used
    assert set(DEFAULTS) - set(NOT_FINGERPRINTED) <= set(run)
