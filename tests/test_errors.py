"""Bad input gets one clear paragraph: it names the problem, counts what is affected,
shows a few IDs and says what to do. Almost every case here fails before training."""
import re

import biom
import numpy as np
import pandas as pd
import pytest
import qiime2
import skbio
import torch
from qiime2.plugin import ValidationError

from q2_aam.actions import fit as fit_module, inputs as _inputs, predict as predict_module
from q2_aam.actions import pretrain as pretrain_module
from q2_aam.engine.savedmodel import SavedModel

from plugin_fixtures import (TINY, TINY_TRAIN, biom_table, body_site, classifier, days,
                             distances, encoder, regressor, rep_seqs, sequences_series, table,
                             table_artifact)

from qiime2.plugins.aam.methods import fit, predict, predict_probabilities, pretrain


def _ids_shown(message, ids):
    """Every one of ``ids`` appears quoted in the message."""
    return all(repr(str(i)) in message for i in ids)


def _column(values, name='target', categorical=False):
    series = pd.Series(values, index=pd.Index(list(biom_table().ids('sample')),
                                              name='sample-id'), name=name)
    if categorical:
        return qiime2.CategoricalMetadataColumn(series.astype(object))
    return qiime2.NumericMetadataColumn(series.astype(float))


# -- sequences -----------------------------------------------------------------------

def test_table_features_without_a_sequence():
    seqs = sequences_series()
    # plain str: numpy 2 reprs its strings as np.str_('…'), the message shows 'L4S63'
    features = [str(f) for f in biom_table().ids('observation')]
    dropped = features[:7]
    partial = qiime2.Artifact.import_data('FeatureData[Sequence]', seqs.drop(dropped))
    with pytest.raises(ValueError) as raised:
        pretrain(table=table(), sequences=partial, distance_matrix=distances(), **TINY)
    message = str(raised.value)
    assert f'7 of {len(features)} features in the table have no sequence' in message
    assert _ids_shown(message, dropped[:5])
    assert repr(dropped[5]) not in message and '…' in message      # a few IDs, not all
    assert 'filter-seqs' in message or 'filter-features' in message
    for action in (lambda: fit(table=table(), sequences=partial, metadata=days(), **TINY),
                   lambda: predict(model=regressor(), table=table(), sequences=partial)):
        with pytest.raises(ValueError, match='7 of 485 features in the table have no sequence'):
            action()


def test_sequences_that_are_not_dna(tmp_path):
    # QIIME 2's own DNAFASTAFormat already refuses letters that are not IUPAC DNA...
    fasta = tmp_path / 'bad.fasta'
    fasta.write_text('>f1\nACGTXX\n>f2\nACGT\n')
    with pytest.raises(ValidationError, match="Invalid character 'X'"):
        qiime2.Artifact.import_data('FeatureData[Sequence]', str(fasta))
    # ...so the engine's own check can only be reached below the artifact layer: through
    # the action functions themselves (as another caller of q2_aam.actions would use them).
    seqs = sequences_series().astype(str)
    bad = list(seqs.index[[3, 10, 11]])
    seqs[bad[0]] = 'ACGTXXACGT'
    seqs[bad[1]] = 'ACGU!'
    seqs[bad[2]] = ''
    with pytest.raises(ValueError) as raised:
        pretrain_module.pretrain(biom_table(), seqs, distances().view(skbio.DistanceMatrix),
                                 **TINY)
    message = str(raised.value)
    assert '3 of 485 sequences are empty or contain characters that are not DNA' in message
    assert _ids_shown(message, bad)
    assert 'FeatureData[Sequence]' in message


# -- distance matrix -----------------------------------------------------------------

@pytest.fixture(scope='module')
def partial_distances():
    full = distances().view(skbio.DistanceMatrix)
    missing = list(full.ids[:3])
    kept = full.filter([i for i in full.ids if i not in missing])
    return qiime2.Artifact.import_data('DistanceMatrix', kept), missing


def test_samples_missing_from_the_distance_matrix(partial_distances):
    matrix, missing = partial_distances
    with pytest.raises(ValueError) as raised:
        pretrain(table=table(), sequences=rep_seqs(), distance_matrix=matrix, **TINY)
    message = str(raised.value)
    assert '3 of 34 samples in the table are missing from the distance matrix' in message
    assert _ids_shown(message, missing)
    assert '--p-ignore-missing-samples' in message
    with pytest.raises(ValueError, match='3 of 34 samples in the table with a metadata value '
                                         'are missing from the distance matrix'):
        fit(table=table(), sequences=rep_seqs(), metadata=days(), distance_matrix=matrix,
            **TINY)


def test_ignore_missing_samples_proceeds_with_a_note(partial_distances, capsys):
    matrix, missing = partial_distances
    capsys.readouterr()
    model, = pretrain(table=table(), sequences=rep_seqs(), distance_matrix=matrix,
                      ignore_missing_samples=True, **TINY)
    out = capsys.readouterr().out
    assert 'left out 3 of 34 samples that are not in the distance matrix' in out
    assert _ids_shown(out, missing)
    saved = model.view(SavedModel)
    assert saved.config['training']['samples'] == 31


def test_alpha_diversity_missing_samples():
    values = pd.Series(np.ones(30), index=list(biom_table().ids('sample'))[:30],
                       name='observed_features')
    alpha = qiime2.Artifact.import_data('SampleData[AlphaDiversity]', values)
    with pytest.raises(ValueError, match=r'4 of 34 samples have no alpha-diversity value: '):
        pretrain(table=table(), sequences=rep_seqs(), distance_matrix=distances(),
                 alpha_diversity=alpha, **TINY)


# -- metadata ------------------------------------------------------------------------

def test_column_with_too_few_samples(capsys):
    values = np.full(34, np.nan)
    values[:4] = [1, 2, 3, 4]
    with pytest.raises(ValueError) as raised:
        fit(table=table(), sequences=rep_seqs(), metadata=_column(values, 'sparse'), **TINY)
    message = str(raised.value)
    assert "Only 4 samples of the table have a value in metadata column 'sparse'" in message
    assert 'at least 5' in message
    assert 'left out 30 of 34 samples' in capsys.readouterr().out


def test_metadata_that_shares_no_sample_with_the_table():
    column = qiime2.NumericMetadataColumn(pd.Series(
        [1.0, 2.0, 3.0], index=pd.Index(['x1', 'x2', 'x3'], name='sample-id'), name='age'))
    with pytest.raises(ValueError, match=r"Only 0 samples of the table have a value in "
                                         r"metadata column 'age'.*sample IDs match"):
        fit(table=table(), sequences=rep_seqs(), metadata=column, **TINY)


def test_a_single_class():
    column = _column(['a'] * 34, 'site', categorical=True)
    with pytest.raises(ValueError) as raised:
        fit(table=table(), sequences=rep_seqs(), metadata=column, **TINY)
    message = str(raised.value)
    assert "Metadata column 'site' has only one class ('a', 34 samples)" in message
    assert 'at least two' in message


def test_a_class_with_one_sample_when_stratifying():
    labels = ['a'] * 17 + ['b'] * 15 + ['rare', 'odd']
    column = _column(labels, 'site', categorical=True)
    with pytest.raises(ValueError) as raised:
        fit(table=table(), sequences=rep_seqs(), metadata=column, **TINY)
    message = str(raised.value)
    assert "2 classes of metadata column 'site' have a single sample" in message
    assert _ids_shown(message, ['rare', 'odd'])
    assert '--p-validation-size 0' in message
    # the advice works: without a validation split the single-sample classes are fine
    model, _ = fit(table=table(), sequences=rep_seqs(), metadata=column,
                   **{**TINY, 'validation_size': 0.0})
    assert model.view(SavedModel).config['labels'] == ['a', 'b', 'odd', 'rare']


# -- tables --------------------------------------------------------------------------

def test_empty_table():
    empty = table_artifact(biom.Table(np.zeros((0, 0)), [], []))
    for action in (
            lambda: pretrain(table=empty, sequences=rep_seqs(), distance_matrix=distances(),
                             **TINY),
            lambda: fit(table=empty, sequences=rep_seqs(), metadata=days(), **TINY),
            lambda: predict(model=regressor(), table=empty, sequences=rep_seqs())):
        with pytest.raises(ValueError, match=r'The feature table is empty \(0 samples, '
                                             r'0 features\)'):
            action()


def test_samples_with_zero_reads():
    t = biom_table()
    counts = t.matrix_data.toarray()
    samples = [str(s) for s in t.ids('sample')]     # not np.str_, whose repr differs
    counts[:, [0, 5]] = 0
    zeroed = table_artifact(biom.Table(counts, t.ids('observation'), samples))
    expected = re.escape(f"2 of 34 samples have no reads: {samples[0]!r}, {samples[5]!r}.")
    for action in (
            lambda: pretrain(table=zeroed, sequences=rep_seqs(), distance_matrix=distances(),
                             **TINY),
            lambda: fit(table=zeroed, sequences=rep_seqs(), metadata=days(), **TINY),
            lambda: predict(model=regressor(), table=zeroed, sequences=rep_seqs())):
        with pytest.raises(ValueError, match=expected + '.*filter-samples'):
            action()


def test_table_of_only_zeros():
    t = biom_table()
    zeros = table_artifact(biom.Table(np.zeros(t.shape), t.ids('observation'), t.ids('sample')))
    with pytest.raises(ValueError, match='34 of 34 samples have no reads'):
        fit(table=zeros, sequences=rep_seqs(), metadata=days(), **TINY)


# -- a model that does not fit the action --------------------------------------------

def test_qiime_types_refuse_a_model_of_the_wrong_kind():
    with pytest.raises(TypeError, match=r"Parameter 'model' requires .*AAMRegressor.*"
                                        r"AAMClassifier.*AAMModel\[AAMEncoder\] was passed"):
        predict(model=encoder(), table=table(), sequences=rep_seqs())
    with pytest.raises(TypeError, match=r'AAMModel\[AAMRegressor\] was passed'):
        predict_probabilities(model=regressor(), table=table(), sequences=rep_seqs())
    with pytest.raises(TypeError, match=r"'pretrained' requires .*AAMEncoder.*"
                                        r"AAMModel\[AAMClassifier\] was passed"):
        fit(table=table(), sequences=rep_seqs(), metadata=body_site(),
            pretrained=classifier(), **TINY_TRAIN)


def test_action_functions_check_the_model_task_too():
    t, s = biom_table(), sequences_series()
    with pytest.raises(ValueError, match='pretrained encoder: it predicts no metadata.*'
                                         'qiime aam fit'):
        predict_module.predict(encoder().view(SavedModel), t, s)
    with pytest.raises(ValueError, match='pretrained encoder: it predicts no metadata'):
        predict_module.predict_probabilities(encoder().view(SavedModel), t, s)
    with pytest.raises(ValueError, match='regressor: it has no class probabilities'):
        predict_module.predict_probabilities(regressor().view(SavedModel), t, s)
    with pytest.raises(ValueError, match='pretrained model is a classification model'):
        fit_module.fit(t, s, body_site(), pretrained=classifier().view(SavedModel),
                       **TINY_TRAIN)


def test_architecture_that_differs_from_the_pretrained_encoder():
    with pytest.raises(ValueError) as raised:
        fit(table=table(), sequences=rep_seqs(), metadata=days(), pretrained=encoder(),
            embedding_dim=32, attention_layers=2, **TINY_TRAIN)
    message = str(raised.value)
    assert 'embedding_dim=32 (encoder: 16)' in message
    assert 'attention_layers=2 (encoder: 1)' in message
    assert 'Leave them unset' in message


def test_freeze_encoder_needs_a_pretrained_encoder():
    with pytest.raises(ValueError, match='freeze_encoder .* no pretrained encoder was given'):
        fit(table=table(), sequences=rep_seqs(), metadata=days(), freeze_encoder=True, **TINY)


# -- settings ------------------------------------------------------------------------

@pytest.mark.parametrize('text', ['{not json', '{"min_lr_ratio": 0.1'])
def test_scheduler_params_that_are_not_json(text):
    with pytest.raises(ValueError, match=r'scheduler settings .* are not valid JSON'):
        pretrain(table=table(), sequences=rep_seqs(), distance_matrix=distances(),
                 scheduler_params=text, **TINY)


def test_scheduler_params_that_are_not_an_object():
    with pytest.raises(ValueError, match='must be a JSON object'):
        fit(table=table(), sequences=rep_seqs(), metadata=days(), scheduler_params='[0.1]',
            **TINY)


def test_scheduler_params_with_unknown_keys():
    with pytest.raises(ValueError) as raised:
        fit(table=table(), sequences=rep_seqs(), metadata=days(), scheduler='cosine',
            scheduler_params='{"min_lr_ratio": 0.1, "warmup": 3}', **TINY)
    message = str(raised.value)
    assert "unknown setting(s) 'warmup' for scheduler 'cosine'" in message
    assert 'allowed: min_lr_ratio' in message


def test_scheduler_params_out_of_range():
    with pytest.raises(ValueError, match=r"'min_lr_ratio' must be in \[0, 1\], got 2"):
        fit(table=table(), sequences=rep_seqs(), metadata=days(),
            scheduler_params='{"min_lr_ratio": 2}', **TINY)


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a CUDA GPU')
def test_cuda_without_a_gpu():
    settings = {**TINY, 'device': 'cuda'}
    for action in (
            lambda: pretrain(table=table(), sequences=rep_seqs(), distance_matrix=distances(),
                             **settings),
            lambda: fit(table=table(), sequences=rep_seqs(), metadata=days(), **settings),
            lambda: predict(model=regressor(), table=table(), sequences=rep_seqs(),
                            device='cuda')):
        with pytest.raises(ValueError, match=r"device 'cuda' was asked for, but torch sees no "
                                             r"CUDA GPU.*Use device 'cpu', or 'auto'"):
            action()


def test_parameter_ranges_are_enforced_by_qiime():
    with pytest.raises(TypeError, match='batch_size'):
        pretrain(table=table(), sequences=rep_seqs(), distance_matrix=distances(),
                 **{**TINY, 'batch_size': 1})
    with pytest.raises(TypeError, match='optimizer'):
        fit(table=table(), sequences=rep_seqs(), metadata=days(),
            **{**TINY, 'optimizer': 'rmsprop'})


def test_preview_shows_a_few_ids():
    assert _inputs.preview(['a', 'b']) == "'a', 'b'"
    assert _inputs.preview([f's{i}' for i in range(9)]) == "'s0', 's1', 's2', 's3', 's4', …"


# -- targets and predictions that would be silently wrong ------------------------------

def test_a_target_too_large_to_scale_is_refused_naming_the_samples():
    ids = [str(s) for s in biom_table().ids('sample')]
    values = np.linspace(1.0, 2.0, len(ids))
    values[3], values[8] = 1e300, -1e300
    with pytest.raises(ValueError) as raised:
        fit_module.fit(biom_table(), sequences_series(), _column(values), **TINY_TRAIN)
    message = str(raised.value)
    assert "Metadata column 'target' cannot be used as a regression target" in message
    assert '2 of 34 values are beyond what training can represent' in message
    assert f'{ids[3]} (1e+300)' in message and f'{ids[8]} (-1e+300)' in message


def test_a_target_far_from_the_rest_is_named_in_a_warning(capsys):
    ids = [str(s) for s in biom_table().ids('sample')]
    values = np.linspace(10.0, 20.0, len(ids))
    values[5] = 1e6
    with pytest.warns(UserWarning, match=r'1 of 34 values of metadata column .target. lie more '
                                         r'than 10 robust standard deviations'):
        model, _ = fit_module.fit(biom_table(), sequences_series(), _column(values),
                                  **{**TINY_TRAIN, 'ensemble_size': 1})
    assert f'{ids[5]} (1e+06)' in capsys.readouterr().out
    assert np.isfinite(model.config['target_std'])


def test_a_numeric_looking_categorical_column_says_so():
    values = [str(v) for v in range(34)]
    values[4] = 'n/a'
    with pytest.warns(UserWarning) as caught:
        fit_module.fit(biom_table(), sequences_series(), _column(values, categorical=True),
                       **{**TINY_TRAIN, 'ensemble_size': 1, 'validation_size': 0.0})
    message = ' '.join(str(w.message) for w in caught)
    assert 'is categorical, so this fit is a classifier with 34 classes' in message
    assert "33 of its 34 values are numbers: 1 values are not ('n/a')" in message
    assert '#q2:types' in message


def test_predict_never_writes_a_non_finite_prediction():
    saved = regressor().view(SavedModel)
    saved.config['target_std'] = float('inf')       # as a damaged or hand-edited model
    with pytest.raises(ValueError, match=r'gave 34 of 34 samples a prediction that is not a '
                                         r'finite number: .*Nothing was written'):
        predict_module.predict(saved, biom_table(), sequences_series())
    saved = classifier().view(SavedModel)
    first = next(k for k in saved.state_dict if k.endswith('target_head.3.bias'))
    saved.state_dict[first] = torch.full_like(saved.state_dict[first], float('nan'))
    with pytest.raises(ValueError, match='not a finite number'):
        predict_module.predict(saved, biom_table(), sequences_series())


def test_parameters_have_upper_bounds_checked_before_any_work():
    for name, value in (('attention_layers', 100000), ('learning_rate', 1e300),
                        ('embedding_dim', 4096), ('ensemble_size', 21), ('epochs', 10 ** 6)):
        with pytest.raises(TypeError, match=name):
            fit(table=table(), sequences=rep_seqs(), metadata=days(), **{**TINY, name: value})


def test_a_model_too_large_to_hold_is_refused_before_reading_data():
    with pytest.raises(ValueError, match=r'ask for 20 model\(s\) of [\d,]+ parameters.*Lower '
                                         'embedding_dim'):
        fit_module.fit(None, None, days(), embedding_dim=1024, attention_heads=4,
                       attention_layers=48, nucleotide_layers=48, ensemble_size=20)
