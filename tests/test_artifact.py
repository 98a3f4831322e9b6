"""The model artifact: SavedModel <-> .qza round trip, export, and the checks that
refuse damaged or mistyped model folders with a clear message."""
import json
import pickle
import shutil

import pandas as pd
import pytest
import qiime2
import torch
from qiime2.plugin import ValidationError

from q2_aam._formats import AAMModelDirFmt
from q2_aam.engine import savedmodel
from q2_aam.engine.savedmodel import ModelFileError, SavedModel

from plugin_fixtures import classifier, encoder, model_folder, regressor, state_equal


@pytest.fixture(scope='module')
def regressor_folder(tmp_path_factory):
    """A pristine exported regressor folder; tests copy it before damaging it."""
    return model_folder(regressor(), tmp_path_factory.mktemp('models') / 'regressor')


@pytest.fixture
def folder(regressor_folder, tmp_path):
    copy = tmp_path / 'model'
    shutil.copytree(regressor_folder, copy)
    return copy


def _edit_config(folder, edit):
    config = json.loads((folder / 'config.json').read_text())
    edit(config)
    (folder / 'config.json').write_text(json.dumps(config))


def _validate(folder):
    AAMModelDirFmt(str(folder), mode='r').validate()


# -- round trip ----------------------------------------------------------------------

@pytest.mark.parametrize('make, semantic_type', [
    (encoder, 'AAMModel[AAMEncoder]'),
    (regressor, 'AAMModel[AAMRegressor]'),
    (classifier, 'AAMModel[AAMClassifier]'),
])
def test_round_trip_keeps_weights_and_config(make, semantic_type, tmp_path):
    original = make().view(SavedModel)
    artifact = qiime2.Artifact.import_data(semantic_type, original)
    path = str(tmp_path / 'model.qza')
    artifact.save(path)
    loaded = qiime2.Artifact.load(path)
    assert str(loaded.type) == semantic_type
    back = loaded.view(SavedModel)
    assert state_equal(back.state_dict, original.state_dict)    # torch.equal, every tensor
    assert back.config == original.config
    assert back.task == original.task
    pd.testing.assert_frame_equal(back.history, original.history)
    pd.testing.assert_frame_equal(back.validation, original.validation)
    assert back.tensorboard == original.tensorboard
    assert len(back.tensorboard) >= 1


def test_saved_model_config_contents():
    config = classifier().view(SavedModel).config
    assert config['format_version'] == savedmodel.FORMAT_VERSION
    assert config['task'] == 'classification'
    assert config['labels'] == ['gut', 'left palm', 'right palm', 'tongue']
    assert config['model']['n_outputs'] == 4
    assert config['model']['embedding_dim'] == 16
    assert config['max_asvs'] == 32
    assert set(config['versions']) == {'q2-aam', 'torch'}
    assert config['vocabulary']['START'] == 5
    reg = regressor().view(SavedModel).config
    assert reg['task'] == 'regression'
    assert reg['target_std'] > 0 and reg['target_mean'] is not None
    assert reg['labels'] is None


def test_export_gives_a_tensorboard_folder(regressor_folder):
    assert sorted(p.name for p in regressor_folder.iterdir()) == [
        'config.json', 'history.tsv', 'kmers.npz', 'linear.tsv', 'model.pt', 'tensorboard',
        'tree.npz', 'validation.tsv']
    events = list((regressor_folder / 'tensorboard').rglob('events.out.tfevents.*'))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    # two runs, train/ and val/, with the same metric names: TensorBoard overlays them
    runs = {}
    for split in ('train', 'val'):
        accumulator = EventAccumulator(str(regressor_folder / 'tensorboard' / split))
        accumulator.Reload()
        runs[split] = set(accumulator.Tags()['scalars'])
    assert {'total_loss', 'target_loss'} <= runs['train'] & runs['val']
    assert 'learning_rate' in runs['train'] and 'step/total_loss' in runs['train']
    history = pd.read_csv(regressor_folder / 'history.tsv', sep='\t')
    assert list(history['epoch']) == [1]
    validation = pd.read_csv(regressor_folder / 'validation.tsv', sep='\t', index_col=0)
    assert list(validation.columns[:2]) == ['truth', 'prediction']
    assert validation.index.name == 'sample-id'


def test_pristine_folder_validates_and_imports(folder):
    _validate(folder)
    artifact = qiime2.Artifact.import_data('AAMModel[AAMRegressor]', str(folder))
    assert state_equal(artifact.view(SavedModel).state_dict,
                       regressor().view(SavedModel).state_dict)


def test_folder_without_tensorboard_logs_is_still_a_model(folder):
    shutil.rmtree(folder / 'tensorboard')
    _validate(folder)
    assert savedmodel.load(folder).tensorboard == {}


# -- damaged folders -----------------------------------------------------------------

def test_missing_file(folder):
    (folder / 'history.tsv').unlink()
    with pytest.raises(ValidationError, match='history.tsv'):
        _validate(folder)
    with pytest.raises(ModelFileError, match=r'lacks history\.tsv'):
        savedmodel.load(folder)


def test_missing_weights(folder):
    (folder / 'model.pt').unlink()
    with pytest.raises(ValidationError, match='model.pt'):
        _validate(folder)


def test_bad_json(folder):
    (folder / 'config.json').write_text('{"task": "regression", ')
    with pytest.raises(ValidationError, match='config.json is not valid JSON'):
        _validate(folder)
    with pytest.raises(ModelFileError, match='not valid JSON'):
        savedmodel.load(folder)


def test_config_that_is_not_an_object(folder):
    (folder / 'config.json').write_text('[1, 2, 3]')
    with pytest.raises(ValidationError, match='must hold a JSON object'):
        _validate(folder)


def test_unknown_format_version(folder):
    _edit_config(folder, lambda c: c.update(format_version=99))
    with pytest.raises(ValidationError, match=r'format_version 99.*reads version 1'):
        _validate(folder)


def test_config_task_must_match_the_type(folder):
    with pytest.raises(ValidationError) as raised:
        qiime2.Artifact.import_data('AAMModel[AAMClassifier]', str(folder))
    message = str(raised.value)
    assert 'AAMModel[AAMClassifier]' in message
    assert "'regression'" in message and "'classification'" in message
    with pytest.raises(ValidationError, match="holds a 'regression' model, not 'encoder'"):
        qiime2.Artifact.import_data('AAMModel[AAMEncoder]', str(folder))


def test_loaded_artifact_is_validated_against_its_type():
    saved = encoder().view(SavedModel)
    with pytest.raises(ValidationError, match="holds a 'encoder' model"):
        qiime2.Artifact.import_data('AAMModel[AAMRegressor]', saved)


def test_weights_that_do_not_match_the_config(folder):
    _edit_config(folder, lambda c: c['model'].update(embedding_dim=32))
    with pytest.raises(ValidationError,
                       match='model.pt does not match the architecture in config.json'):
        _validate(folder)
    with pytest.raises(ValidationError, match='wrongly shaped'):
        qiime2.Artifact.import_data('AAMModel[AAMRegressor]', str(folder))
    with pytest.raises(ModelFileError, match='wrongly shaped'):
        savedmodel.load(folder)


def test_weights_with_missing_tensors(folder):
    state = torch.load(folder / 'model.pt', weights_only=True)
    state.pop('target_head.0.weight')
    torch.save(state, folder / 'model.pt')
    with pytest.raises(ValidationError, match=r'1 missing \(e\.g\. target_head\.0\.weight\)'):
        _validate(folder)


def test_weights_file_that_is_not_torch(folder):
    (folder / 'model.pt').write_bytes(b'not a zip archive at all')
    with pytest.raises(ValidationError, match='not a torch weights file'):
        _validate(folder)


class _WritesMarker:
    """Unpickling this runs open(marker, 'w'): a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_model_file_with_pickled_code_is_refused_without_running_it(folder, tmp_path):
    # the payload really runs code when unpickled the unsafe way...
    proof = tmp_path / 'proof-that-the-payload-works'
    torch.save({'x': torch.zeros(1), 'evil': _WritesMarker(proof)}, tmp_path / 'probe.pt')
    torch.load(tmp_path / 'probe.pt', weights_only=False)
    assert proof.exists()

    # ...but a model folder holding it is refused, and the code never runs
    marker = tmp_path / 'marker-written-by-unpickling'
    state = torch.load(folder / 'model.pt', weights_only=True)
    state['evil'] = _WritesMarker(marker)
    torch.save(state, folder / 'model.pt')
    with pytest.raises(ValidationError, match='never runs code from a model file'):
        _validate(folder)
    with pytest.raises(ValidationError, match='could not be read as plain weights'):
        qiime2.Artifact.import_data('AAMModel[AAMRegressor]', str(folder))
    with pytest.raises(ModelFileError, match='could not be read as plain weights'):
        savedmodel.load(folder)
    assert not marker.exists()


def test_model_file_with_a_plain_pickle_is_refused(folder, tmp_path):
    marker = tmp_path / 'marker'
    with open(folder / 'model.pt', 'wb') as fh:
        pickle.dump({'w': _WritesMarker(marker)}, fh)
    with pytest.raises(ValidationError):
        _validate(folder)
    with pytest.raises(ModelFileError):
        savedmodel.load(folder)
    assert not marker.exists()


def test_model_file_with_non_tensor_values_is_refused(folder):
    state = torch.load(folder / 'model.pt', weights_only=True)
    state['note'] = 'a string, not a tensor'
    torch.save(state, folder / 'model.pt')
    with pytest.raises(ValidationError, match='mapping of parameter names to tensors'):
        _validate(folder)


# -- a config.json that says anything: every field checked, named, before allocation ---

def _set_model(**changes):
    return lambda c: c['model'].update(changes)


def _set(**changes):
    return lambda c: c.update(changes)


@pytest.mark.parametrize('edit, message', [
    (_set_model(attention_heads=0), 'attention_heads must be at least 1, not 0'),
    (_set_model(attention_heads=-2), 'attention_heads must be at least 1, not -2'),
    (_set_model(attention_heads=3), 'must be a multiple of attention_heads'),
    (_set_model(dropout=5), 'dropout must be a number from 0 up to'),
    (_set_model(dropout='high'), "dropout must be a number from 0 up to .*'high'"),
    (_set_model(embedding_dim=32.0), 'embedding_dim must be a whole number, not 32.0'),
    (_set_model(attention_layers=True), 'attention_layers must be a whole number, not True'),
    (_set_model(nucleotide_layers=-1), 'nucleotide_layers must be at least 0, not -1'),
    (_set_model(vocab_size=9), 'vocab_size must be 8'),
    (_set(max_asvs='abc'), "max_asvs must be a whole number of at least 1, not 'abc'"),
    (_set(max_asvs=0), 'max_asvs must be a whole number of at least 1, not 0'),
    (_set(max_bp=-5), 'max_bp must be a whole number of at least 1, not -5'),
    (_set(target_std=None), 'a regressor needs a finite number target_std, not None'),
    (_set(target_std=0.0), 'target_std must be above 0, not 0.0'),
    (_set(target_mean='NaN'), "finite number target_mean, not 'NaN'"),
    (_set(ensemble_size=10 ** 9), r'describes 1000000000 model\(s\) of [\d,]+ parameters'),
    (_set_model(attention_layers=10 ** 6), r'describes 1 model\(s\) of [\d,]+ parameters'),
])
def test_every_config_field_is_checked_and_named(folder, edit, message):
    _edit_config(folder, edit)
    with pytest.raises(ValidationError, match=message):
        _validate(folder)


def test_absurd_sizes_are_refused_before_anything_is_allocated(folder):
    import resource
    _edit_config(folder, _set_model(attention_layers=10 ** 6, embedding_dim=1024,
                                    attention_heads=4))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValidationError, match='Nothing was allocated'):
        _validate(folder)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200


def test_classifier_labels_must_be_unique_strings(tmp_path):
    folder = model_folder(classifier(), tmp_path / 'classifier')
    config = json.loads((folder / 'config.json').read_text())
    n = len(config['labels'])
    _edit_config(folder, _set(labels=['same'] * n))
    with pytest.raises(ValidationError, match=r"labels must be unique, but \['same'\]"):
        _validate(folder)
    _edit_config(folder, _set(labels=list(range(n))))
    with pytest.raises(ValidationError, match='each a string'):
        _validate(folder)


@pytest.mark.parametrize('name', ['history.tsv', 'validation.tsv'])
def test_binary_bytes_in_a_table_are_a_validation_error(folder, name):
    (folder / name).write_bytes(b'epoch\tx\n\xff\xfe\x00\x81garbage\n')
    with pytest.raises(ValidationError, match=f'{name} is not'):
        _validate(folder)


def _retyped(artifact, path, new_type):
    """The artifact saved with its type changed by hand in both metadata.yaml files (and a
    new UUID, so that no process caches it under the old one)."""
    import uuid
    import zipfile
    original = path.with_suffix('.original.qza')
    artifact.save(str(original))
    old, old_id, new_id = str(artifact.type).encode(), str(artifact.uuid), str(uuid.uuid4())
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(path, 'w') as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith('metadata.yaml') and old in data:
                data = data.replace(old, new_type.encode()).replace(old_id.encode(),
                                                                    new_id.encode())
            dst.writestr(item.filename.replace(old_id, new_id, 1), data)
    return qiime2.Artifact.load(str(path))


def _skip_where_views_are_copies():
    """The check reads metadata.yaml beside the data folder an action is given; a QIIME 2
    that handed actions a copy elsewhere would leave it nothing to read (and the check off)."""
    if classifier().view(SavedModel).declared_task is None:
        pytest.skip('this QIIME 2 gives views outside the artifact\'s folder: the declared '
                    'type cannot be read, so the check is off here')


def test_a_model_knows_the_type_its_artifact_declares(tmp_path):
    _skip_where_views_are_copies()
    assert classifier().view(SavedModel).declared_task == 'classification'
    assert regressor().view(SavedModel).declared_task == 'regression'
    # a folder that is not inside an artifact declares nothing
    folder = model_folder(regressor(), tmp_path / 'exported')
    from q2_aam._transformers import declared_task
    assert declared_task(folder) is None
    (tmp_path / 'metadata.yaml').write_text('uuid: someone-else\ntype: AAMModel[AAMEncoder]\n')
    assert declared_task(folder) is None


def test_predict_refuses_an_artifact_whose_type_was_edited_by_hand(tmp_path):
    """An AAMRegressor holding a classifier: QIIME 2 types the output by the input's type,
    so it would write class labels as regressor predictions."""
    from qiime2.plugins.aam.methods import predict, predict_probabilities
    from plugin_fixtures import split
    _skip_where_views_are_copies()
    fake = _retyped(classifier(), tmp_path / 'fake.qza', 'AAMModel[AAMRegressor]')
    assert str(fake.type) == 'AAMModel[AAMRegressor]'
    _, _, test_table, test_seqs = split()
    message = ('This model artifact is typed as a regression model, but its config.json '
               'holds a classification model: its metadata.yaml was changed by hand. Nothing '
               'was predicted.')
    with pytest.raises(ValueError) as e:
        predict(model=fake, table=test_table, sequences=test_seqs)
    assert message in str(e.value)
    swapped = _retyped(regressor(), tmp_path / 'fake2.qza', 'AAMModel[AAMClassifier]')
    with pytest.raises(ValueError, match='typed as a classification model, but its '
                                         'config.json holds a regression model'):
        predict_probabilities(model=swapped, table=test_table, sequences=test_seqs)


# -- the stack and the tree member ---------------------------------------------------

def test_a_missing_or_unused_tree_file_is_refused(folder):
    tree = (folder / 'tree.npz').read_bytes()
    (folder / 'tree.npz').unlink()
    with pytest.raises(ModelFileError, match=r"stack weighs a tree member, but tree\.npz is "
                                             "missing"):
        savedmodel.load(folder)

    def without_tree(config):
        stack = config['stack']
        keep = [i for i, m in enumerate(stack['members']) if m != 'tree']
        total = sum(stack['weights'][i] for i in keep)
        stack.update(members=[stack['members'][i] for i in keep],
                     weights=[stack['weights'][i] / total for i in keep])
    _edit_config(folder, without_tree)
    savedmodel.load(folder)                        # a stack without a tree needs no file
    (folder / 'tree.npz').write_bytes(tree)
    with pytest.raises(ModelFileError, match=r"tree\.npz is present, but config\.json's "
                                             "stack has no tree member"):
        savedmodel.load(folder)


@pytest.mark.parametrize('damage, message', [
    (lambda b: b[:len(b) // 2], r'tree\.npz cannot be read as arrays'),
    (lambda b: b'PK\x03\x04' + b'\0' * 40, r'tree\.npz cannot be read as arrays'),
])
def test_a_damaged_tree_file_is_refused(folder, damage, message):
    path = folder / 'tree.npz'
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ModelFileError, match=message):
        savedmodel.load(folder)
    with pytest.raises(ValidationError, match=message):
        _validate(folder)


def test_a_tree_file_with_pickled_objects_or_bad_nodes_is_refused(folder):
    import numpy as np
    with np.load(folder / 'tree.npz') as arrays:
        parts = {k: arrays[k] for k in arrays.files}
    bad = dict(parts, sequences=np.array([object()], dtype=object))
    with open(folder / 'tree.npz', 'wb') as fh:
        np.savez(fh, **bad)                       # an object array needs pickle to load
    with pytest.raises(ModelFileError, match=r'tree\.npz cannot be read as arrays'):
        savedmodel.load(folder)
    left = parts['left'].copy()
    left[left >= 0] = 0                           # every child points at the first node
    with open(folder / 'tree.npz', 'wb') as fh:
        np.savez(fh, **dict(parts, left=left))
    with pytest.raises(ModelFileError, match=r"tree\.npz does not describe a forest: a "
                                             "node's child is not a later node"):
        savedmodel.load(folder)


@pytest.mark.parametrize('edit, message', [
    (lambda s: s.update(weights=[0.9, 0.9, 0.9]), 'summing to 1'),
    (lambda s: s.update(members=['transformer', 'linear', 'boost']), 'distinct names'),
    (lambda s: s.update(weights=None), 'a list of numbers "weights"'),
])
def test_a_damaged_stack_is_refused(folder, edit, message):
    _edit_config(folder, lambda c: edit(c['stack']))
    with pytest.raises(ModelFileError, match="config.json: the stack is not usable: .*"
                                             + message):
        savedmodel.load(folder)


def test_another_token_vocabulary_is_refused(folder):
    _edit_config(folder, lambda c: c['vocabulary'].update(A=4, T=1))
    with pytest.raises(ModelFileError, match='the token vocabulary .* is not the one this '
                                             'q2-aam reads'):
        savedmodel.load(folder)


@pytest.mark.parametrize('damage', [lambda b: b[:len(b) // 2],
                                    lambda b: b[:200] + bytes(len(b) - 200)])
def test_a_truncated_or_corrupted_weight_file_is_refused(folder, damage):
    path = folder / 'model.pt'
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ModelFileError, match=r'model\.pt could not be read as plain weights'):
        savedmodel.load(folder)
