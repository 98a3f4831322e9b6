import json

import pandas as pd
import pytest
import torch

from q2_aam.engine import savedmodel
from q2_aam.engine.savedmodel import ModelFileError, SavedModel

from engine_fixtures import tiny_config, tiny_model

# set by the payloads below if unpickling ever ran their code
SIDE_EFFECTS = []


def _record(what):
    SIDE_EFFECTS.append(what)
    return what


class Sneaky:
    """Unpickling this calls _record: it must never happen."""

    def __reduce__(self):
        return (_record, ('unpickled Sneaky',))


def _saved(task='classification', n_outputs=2, labels=('a', 'b')):
    model = tiny_model(task, n_outputs)
    scale = dict(target_mean=12.5, target_std=2.0) if task == 'regression' else {}
    config = savedmodel.make_config(tiny_config(task, n_outputs), max_asvs=64, max_bp=40,
                                    training={'epochs': 3}, labels=labels, **scale)
    history = pd.DataFrame({'epoch': [1, 2], 'train_total_loss': [2.0, 1.5]})
    validation = pd.DataFrame({'truth': ['a', 'b'], 'prediction': ['a', 'a']},
                              index=pd.Index(['s1', 's2'], name='sample-id'))
    return SavedModel(config, model.state_dict(), history, validation,
                      {'events.out.tfevents.1': b'\x00\x01bytes'})


@pytest.fixture
def saved_dir(tmp_path):
    saved = _saved()
    savedmodel.save(saved, tmp_path / 'model')
    return saved, tmp_path / 'model'


def test_round_trip(saved_dir):
    saved, directory = saved_dir
    assert sorted(p.name for p in directory.iterdir()) == \
        ['config.json', 'history.tsv', 'model.pt', 'tensorboard', 'validation.tsv']
    loaded = savedmodel.load(directory)
    assert loaded.config == saved.config
    assert loaded.config['labels'] == ['a', 'b']
    assert loaded.config['versions']['torch'] == torch.__version__.split('+')[0]
    assert loaded.state_dict.keys() == saved.state_dict.keys()
    for name, value in saved.state_dict.items():
        assert torch.equal(loaded.state_dict[name], value)
    pd.testing.assert_frame_equal(loaded.history, saved.history)
    pd.testing.assert_frame_equal(loaded.validation, saved.validation)
    assert loaded.tensorboard == saved.tensorboard
    model, = loaded.build_models()
    assert not model.training and loaded.task == 'classification'
    assert loaded.model_config == tiny_config('classification', 2)
    assert savedmodel.validate(directory)['task'] == 'classification'


def test_regressor_keeps_target_scaling(tmp_path):
    model = tiny_model('regression', 1)
    config = savedmodel.make_config(tiny_config('regression', 1), 64, 40,
                                    target_mean=12.5, target_std=2.0)
    savedmodel.save(SavedModel(config, model.state_dict()), tmp_path)
    loaded = savedmodel.load(tmp_path)
    assert (loaded.config['target_mean'], loaded.config['target_std']) == (12.5, 2.0)


@pytest.mark.parametrize('name', savedmodel.FILES)
def test_missing_file(saved_dir, name):
    _, directory = saved_dir
    (directory / name).unlink()
    with pytest.raises(ModelFileError, match=f'lacks {name}'):
        savedmodel.validate(directory)


def test_bad_json(saved_dir):
    _, directory = saved_dir
    (directory / 'config.json').write_text('{"task": "classification",')
    with pytest.raises(ModelFileError, match='config.json is not valid JSON'):
        savedmodel.validate(directory)


def _edit_config(directory, **changes):
    config = json.loads((directory / 'config.json').read_text())
    config.update(changes)
    (directory / 'config.json').write_text(json.dumps(config))


@pytest.mark.parametrize('version', [2, 0, None, '1'])
def test_unknown_format_version(saved_dir, version):
    _, directory = saved_dir
    _edit_config(directory, format_version=version)
    with pytest.raises(ModelFileError, match='format_version'):
        savedmodel.validate(directory)


def test_config_that_describes_no_model(saved_dir):
    _, directory = saved_dir
    _edit_config(directory, model={'embedding_dim': 15, 'attention_heads': 2})
    with pytest.raises(ModelFileError, match='no valid model'):
        savedmodel.validate(directory)
    _edit_config(directory, model=tiny_config('regression', 1).to_dict())
    with pytest.raises(ModelFileError, match="task 'classification'"):
        savedmodel.validate(directory)


def test_classifier_needs_its_labels(saved_dir):
    _, directory = saved_dir
    _edit_config(directory, labels=['a'])
    with pytest.raises(ModelFileError, match='one label per output'):
        savedmodel.validate(directory)


def test_weights_that_do_not_match_config(saved_dir):
    _, directory = saved_dir
    wider = tiny_model('classification', 2, dim=32)
    torch.save(wider.state_dict(), directory / 'model.pt')
    with pytest.raises(ModelFileError, match='wrongly shaped'):
        savedmodel.validate(directory)
    with pytest.raises(ModelFileError, match='wrongly shaped'):
        savedmodel.load(directory)
    state = tiny_model('classification', 2).state_dict()
    state.pop('nuc_head.weight')
    state['extra.weight'] = torch.zeros(1)
    torch.save(state, directory / 'model.pt')
    with pytest.raises(ModelFileError, match=r'1 missing \(e.g. nuc_head.weight\); '
                                             r'1 unexpected \(e.g. extra.weight\)'):
        savedmodel.validate(directory)


@pytest.mark.parametrize('payload, runs_code', [
    (lambda state: Sneaky(), True),
    (lambda state: {**state, 'nuc_head.weight': Sneaky()}, True),
    (lambda state: _record, False),
])
def test_pickled_code_is_refused_and_never_run(saved_dir, payload, runs_code):
    _, directory = saved_dir
    state = tiny_model('classification', 2).state_dict()
    torch.save(payload(state), directory / 'model.pt')
    SIDE_EFFECTS.clear()
    with pytest.raises(ModelFileError, match='never runs code from a model file'):
        savedmodel.validate(directory)
    with pytest.raises(ModelFileError, match='never runs code from a model file'):
        savedmodel.load(directory)
    assert SIDE_EFFECTS == []
    # the payload is live: a plain unpickle would have run it
    torch.load(directory / 'model.pt', weights_only=False)
    assert SIDE_EFFECTS == (['unpickled Sneaky'] if runs_code else [])


def test_non_tensor_values_are_refused(saved_dir):
    _, directory = saved_dir
    torch.save({'nuc_head.weight': 3}, directory / 'model.pt')
    with pytest.raises(ModelFileError, match='mapping of parameter names to tensors'):
        savedmodel.validate(directory)
    torch.save([torch.zeros(2)], directory / 'model.pt')
    with pytest.raises(ModelFileError, match='mapping of parameter names to tensors'):
        savedmodel.validate(directory)


def test_not_a_torch_file(saved_dir):
    _, directory = saved_dir
    (directory / 'model.pt').write_bytes(b'not a zip file at all')
    with pytest.raises(ModelFileError, match='could not be read as plain weights'):
        savedmodel.validate(directory)


def test_empty_history_is_reported(saved_dir):
    _, directory = saved_dir
    (directory / 'history.tsv').write_text('')
    with pytest.raises(ModelFileError, match='history.tsv is empty'):
        savedmodel.load(directory)


# -- ensembles: several members' weights in one model.pt --------------------------------

def _ensemble(size=3):
    members = [tiny_model('regression', 1, seed=i).state_dict() for i in range(size)]
    config = savedmodel.make_config(tiny_config('regression', 1), 64, 40, target_mean=3.0,
                                    target_std=2.0, extra={'ensemble_size': size})
    return SavedModel(config, savedmodel.pack_members(members)), members


def test_pack_members_keeps_a_single_model_as_it_was():
    state = tiny_model('regression', 1).state_dict()
    assert savedmodel.pack_members([state]).keys() == state.keys()
    assert savedmodel.unpack_members(state, 1) == [state]


def test_ensemble_round_trip(tmp_path):
    saved, members = _ensemble(3)
    assert all(k.startswith(('members.0.', 'members.1.', 'members.2.')) for k in saved.state_dict)
    assert len(saved.state_dict) == 3 * len(members[0])
    savedmodel.save(saved, tmp_path)
    loaded = savedmodel.load(tmp_path)
    assert loaded.ensemble_size == 3
    unpacked = loaded.member_states()
    for original, read in zip(members, unpacked):
        assert original.keys() == read.keys()
        assert all(torch.equal(original[k], read[k]) for k in original)
    models = loaded.build_models()
    assert len(models) == 3 and not any(m.training for m in models)
    # the members differ (seeds 0, 1, 2), and each got its own weights back
    assert not torch.equal(models[0].target_head[0].weight, models[1].target_head[0].weight)
    assert torch.equal(models[2].target_head[0].weight, members[2]['target_head.0.weight'])


def test_ensemble_missing_a_member_is_refused(tmp_path):
    saved, members = _ensemble(3)
    savedmodel.save(saved, tmp_path)
    torch.save(savedmodel.pack_members(members[:2]), tmp_path / 'model.pt')
    n = len(members[0])
    with pytest.raises(ModelFileError, match=rf'{n} missing \(e.g. members\.2\.'):
        savedmodel.validate(tmp_path)


@pytest.mark.parametrize('size, message', [
    (0, 'ensemble_size must be a whole number of at least 1, not 0'),
    ('3', "ensemble_size must be a whole number of at least 1, not '3'"),
    (True, 'ensemble_size must be a whole number of at least 1, not True')])
def test_bad_ensemble_size(saved_dir, size, message):
    _, directory = saved_dir
    _edit_config(directory, ensemble_size=size)
    with pytest.raises(ModelFileError, match=message):
        savedmodel.validate(directory)


@pytest.mark.parametrize('calibration, message', [
    ({'temperature': 1.5, 'bias': [0.1, -0.1]}, None),
    ({'temperature': 0.0, 'bias': [0.1, -0.1]}, 'positive temperature and 2 finite biases'),
    ({'temperature': 1.0, 'bias': [0.1]}, 'found temperature 1.0 and 1 biases'),
    ({'temperature': 'hot', 'bias': [0, 0]}, 'needs a number "temperature"'),
    ({'bias': [0, 0]}, 'needs a number "temperature"')])
def test_a_classifier_calibration_is_checked(saved_dir, calibration, message):
    _, directory = saved_dir
    _edit_config(directory, calibration=calibration)
    if message is None:
        assert savedmodel.load(directory).config['calibration'] == calibration
    else:
        with pytest.raises(ModelFileError, match=message):
            savedmodel.validate(directory)


def test_only_a_classifier_is_calibrated(tmp_path):
    savedmodel.save(_saved('regression', 1, labels=None), tmp_path)
    _edit_config(tmp_path, calibration={'temperature': 1.0, 'bias': [0.0]})
    with pytest.raises(ModelFileError, match="only a classifier is calibrated, but this "
                                             "'regression' model"):
        savedmodel.validate(tmp_path)


def test_an_encoder_cannot_be_an_ensemble(tmp_path):
    config = savedmodel.make_config(tiny_config(), 64, 40, extra={'ensemble_size': 2})
    state = tiny_model().state_dict()
    savedmodel.save(SavedModel(config, savedmodel.pack_members([state, state])), tmp_path)
    with pytest.raises(ModelFileError, match="only a regressor or classifier can be an "
                                             "ensemble, but this 'encoder' model"):
        savedmodel.validate(tmp_path)
