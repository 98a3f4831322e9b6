"""pretrain / fit / predict / predict_probabilities / plot_validation through the
QIIME 2 Python API (qiime2.plugins.aam), with tiny models shared across the session."""
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import qiime2
import torch

from q2_aam.engine.savedmodel import SavedModel

from plugin_fixtures import (TINY, TINY_TRAIN, SHARED_DATA, action_yaml, biom_table,
                             body_site, classifier, days, distances, encoder, metadata,
                             observed_features, regressor, regressor_predictions, rep_seqs,
                             sequences_series, split, state_equal, table, held_out_ids)
from plugin_fixtures import SINGLE, _fit, deep_test_table

from qiime2.plugins.aam.methods import (feature_importance, fit, predict,
                                        predict_probabilities, pretrain)
from qiime2.plugins.aam.visualizers import plot_validation

LABELS = ['gut', 'left palm', 'right palm', 'tongue']


def _encoder_part(state):
    return {k: v for k, v in state.items() if not k.startswith('target_head.')}


@pytest.fixture(scope='module')
def classifier_predictions():
    _, _, test_table, test_seqs = split()
    return predict(model=classifier(), table=test_table, sequences=test_seqs).predictions


@pytest.fixture(scope='module')
def classifier_probabilities():
    _, _, test_table, test_seqs = split()
    return predict_probabilities(model=classifier(), table=test_table,
                                 sequences=test_seqs).probabilities


# -- what each action returns --------------------------------------------------------

def test_pretrain_gives_an_encoder():
    model = encoder()
    assert str(model.type) == 'AAMModel[AAMEncoder]'
    saved = model.view(SavedModel)
    assert saved.task == 'encoder'
    assert saved.config['model']['n_outputs'] == 0
    assert saved.config['training']['samples'] == 34
    assert saved.config['training']['alpha_diversity'] is False
    history = saved.history
    assert {'train_unifrac_loss', 'train_nuc_loss', 'val_unifrac_loss'} <= set(history)
    assert 'train_target_loss' not in history


def test_fit_numeric_column_gives_a_regressor():
    model = regressor()
    assert str(model.type) == 'AAMModel[AAMRegressor]'
    saved = model.view(SavedModel)
    assert saved.task == 'regression'
    assert saved.config['training']['target_column'] == 'days-since-experiment-start'
    assert saved.config['training']['pretrained'] is False
    assert saved.config['training']['samples'] == 34 - len(held_out_ids())
    assert 'train_target_loss' in saved.history
    # no distance matrix: no UniFrac loss, and the record says so
    assert 'train_unifrac_loss' not in saved.history
    assert saved.config['training']['unifrac_weight'] == 0.0


def test_fit_categorical_column_gives_a_classifier():
    model = classifier()
    assert str(model.type) == 'AAMModel[AAMClassifier]'
    saved = model.view(SavedModel)
    assert saved.task == 'classification'
    assert saved.config['labels'] == LABELS
    assert saved.config['training']['target_column'] == 'body-site'
    assert saved.config['training']['pretrained'] is True
    # the architecture was taken from the encoder
    assert saved.config['model']['embedding_dim'] == \
        encoder().view(SavedModel).config['model']['embedding_dim']


def test_fit_with_frozen_encoder_keeps_the_pretrained_weights():
    train_table, train_seqs, _, _ = split()
    model, _ = fit(table=train_table, sequences=train_seqs, metadata=body_site(),
                   pretrained=encoder(), freeze_encoder=True, **TINY_TRAIN, **SINGLE)
    pretrained = encoder().view(SavedModel).state_dict
    fitted = model.view(SavedModel).state_dict
    assert state_equal(_encoder_part(fitted), _encoder_part(pretrained))
    assert model.view(SavedModel).config['training']['freeze_encoder'] is True
    # the head did train: it differs from a fresh head with the same seed
    fresh = classifier().view(SavedModel).state_dict
    assert any(not torch.equal(fitted[k], fresh[k]) for k in fitted
               if k.startswith('target_head.'))


def test_fit_returns_the_importances_of_its_training_samples():
    """fit's second output is what feature-importance gives for the model on the table it
    was fitted on: one row per ASV of those samples, the blend's column first."""
    train_table, train_seqs, _, _ = split()
    model, importance = fit(table=train_table, sequences=train_seqs, metadata=body_site(),
                            **{**TINY, 'ensemble_size': 2})
    assert str(importance.type) == 'FeatureData[Importance]'
    got = importance.view(pd.DataFrame)
    again, = feature_importance(model=model, table=train_table, sequences=train_seqs)
    pd.testing.assert_frame_equal(got, again.view(pd.DataFrame))
    assert list(got.columns) == ['importance', 'transformer', 'linear', 'tree', 'kmers']
    used = train_table.view(biom_table().__class__).ids('observation')
    assert set(got.index) <= set(used) and len(got) > 100
    assert got['importance'].is_monotonic_decreasing


def test_fit_from_an_encoder_starts_from_its_weights():
    """With a vanishing learning rate the unfrozen encoder barely moves from the
    pretrained weights, while a fit from scratch starts elsewhere."""
    train_table, train_seqs, _, _ = split()
    model, _ = fit(table=train_table, sequences=train_seqs, metadata=days(),
                   pretrained=encoder(), **{**TINY_TRAIN, **SINGLE, 'learning_rate': 1e-12})
    pretrained = _encoder_part(encoder().view(SavedModel).state_dict)
    fitted = _encoder_part(model.view(SavedModel).state_dict)
    assert set(fitted) == set(pretrained)
    assert all(torch.allclose(fitted[k], pretrained[k], atol=1e-6) for k in pretrained)
    scratch = _encoder_part(regressor().view(SavedModel).state_dict)
    shared = set(scratch) & set(pretrained)     # a fit from scratch reads no bases
    assert shared and not all(torch.allclose(scratch[k], pretrained[k], atol=1e-3)
                              for k in shared)


def test_fit_from_scratch_reads_kmers_and_from_an_encoder_keeps_its_nucleotide_layers():
    scratch = regressor().view(SavedModel)
    assert scratch.config['model']['nucleotide_layers'] == 0
    assert not any(k.startswith('asv_encoder.transformer') for k in scratch.state_dict)
    train_table, train_seqs, _, _ = split()
    model, _ = fit(table=train_table, sequences=train_seqs, metadata=days(),
                   pretrained=encoder(), **{**TINY_TRAIN, **SINGLE})
    config = model.view(SavedModel).config['model']
    assert config['nucleotide_layers'] == encoder().view(SavedModel).config['model'][
        'nucleotide_layers'] == 1
    with pytest.raises(ValueError, match=r'nucleotide_layers=0 \(encoder: 1\)'):
        fit(table=train_table, sequences=train_seqs, metadata=days(), pretrained=encoder(),
            nucleotide_layers=0, **{**TINY_TRAIN, **SINGLE})


def test_predict_classifier(classifier_predictions):
    assert str(classifier_predictions.type) == 'SampleData[ClassifierPredictions]'
    series = classifier_predictions.view(pd.Series)
    _, _, test_table, _ = split()
    assert sorted(series.index) == sorted(test_table.view(pd.DataFrame).index)
    assert len(series) == len(held_out_ids()) == 7
    assert set(series) <= set(LABELS)


def test_predict_regressor():
    predictions = regressor_predictions()
    assert str(predictions.type) == 'SampleData[RegressorPredictions]'
    series = predictions.view(pd.Series)
    assert sorted(series.index) == sorted(held_out_ids())
    assert series.dtype.kind == 'f'
    assert np.isfinite(series.to_numpy()).all()
    # back on the days scale (mean of training days +/- a few std), not standardised
    config = regressor().view(SavedModel).config
    assert abs(series.mean() - config['target_mean']) < 3 * config['target_std']


def test_predict_probabilities(classifier_probabilities, classifier_predictions):
    assert str(classifier_probabilities.type) == 'SampleData[Probabilities]'
    frame = classifier_probabilities.view(pd.DataFrame)
    assert list(frame.columns) == LABELS
    assert sorted(frame.index) == sorted(held_out_ids())
    np.testing.assert_allclose(frame.sum(axis=1), 1.0, atol=1e-6)
    assert ((frame >= 0) & (frame <= 1)).all().all()
    # the predicted class is the most probable one
    predicted = classifier_predictions.view(pd.Series)
    assert (frame.idxmax(axis=1).reindex(predicted.index) == predicted).all()


def test_predict_on_asvs_the_model_never_saw():
    train_table, train_seqs, test_table, test_seqs = split()
    seen = set(train_seqs.view(pd.Series).index)
    test_features = set(test_table.view(pd.DataFrame).columns)
    unseen = test_features - seen
    assert len(unseen) > 10                              # the premise of the test
    assert not unseen & set(train_table.view(pd.DataFrame).columns)
    for model in (regressor(), classifier()):
        series = predict(model=model, table=test_table, sequences=test_seqs).predictions \
            .view(pd.Series)
        assert len(series) == len(held_out_ids())
    # a table with only ASVs that none of the training samples had
    only_unseen = biom_table().filter(sorted(unseen), axis='observation', inplace=False)
    only_unseen = only_unseen.filter(list(held_out_ids()), axis='sample', inplace=False)
    only_unseen.remove_empty(axis='sample')
    series = predict(model=regressor(), table=qiime2.Artifact.import_data(
        'FeatureTable[Frequency]', only_unseen), sequences=test_seqs).predictions \
        .view(pd.Series)
    assert len(series) == only_unseen.shape[1] > 0
    assert np.isfinite(series.to_numpy()).all()


def test_predict_on_another_study(tmp_path):
    """A moving-pictures model applied to mouse samples of another study: every ASV is new."""
    folder = SHARED_DATA / 'sleep-apnea-10422'
    if not (folder / 'table.qza').exists():
        pytest.skip(f'{folder} is not on this machine')
    other_table = qiime2.Artifact.load(str(folder / 'table.qza'))
    other_seqs = qiime2.Artifact.load(str(folder / 'rep-seqs.qza'))
    assert not set(other_seqs.view(pd.Series).index) & set(sequences_series().index)
    series = predict(model=classifier(), table=other_table, sequences=other_seqs) \
        .predictions.view(pd.Series)
    assert len(series) == other_table.view(pd.DataFrame).shape[0]
    assert set(series) <= set(LABELS)


def test_predict_needs_no_metadata_and_covers_the_whole_table():
    series = predict(model=classifier(), table=table(), sequences=rep_seqs()) \
        .predictions.view(pd.Series)
    assert sorted(series.index) == sorted(table().view(pd.DataFrame).index)


# -- pretraining extras, left-out samples, provenance, determinism --------------------

def test_alpha_diversity_adds_a_pretraining_target():
    alpha = qiime2.Artifact.import_data('SampleData[AlphaDiversity]', observed_features())
    model, = pretrain(table=table(), sequences=rep_seqs(), distance_matrix=distances(),
                      alpha_diversity=alpha, **TINY)
    saved = model.view(SavedModel)
    assert saved.task == 'encoder'
    assert saved.config['model']['n_outputs'] == 1
    assert saved.config['training']['alpha_diversity'] is True
    assert saved.config['target_mean'] > 0
    assert {'train_target_loss', 'val_target_loss', 'train_unifrac_loss'} <= set(saved.history)
    assert any(k.startswith('target_head.') for k in saved.state_dict)
    # the alpha head is not carried into a fit: a 4-class head replaces it
    train_table, train_seqs, _, _ = split()
    fitted, _ = fit(table=train_table, sequences=train_seqs, metadata=body_site(),
                    pretrained=model, **TINY_TRAIN, **SINGLE)
    assert fitted.view(SavedModel).state_dict['target_head.3.weight'].shape[0] == 4


def test_samples_without_a_value_are_left_out_with_a_note(capsys):
    train_table, train_seqs, _, _ = split()
    values = days().to_series().copy()
    train_ids = list(train_table.view(pd.DataFrame).index)
    blank = sorted(train_ids)[:3]
    values[blank] = np.nan
    column = qiime2.NumericMetadataColumn(values.rename('days'))
    capsys.readouterr()
    model, _ = fit(table=train_table, sequences=train_seqs, metadata=column, **TINY)
    out = capsys.readouterr().out
    assert (f'left out 3 of {len(train_ids)} samples that have no value in metadata column '
            "'days'") in out
    for sample in blank:
        assert repr(sample) in out
    saved = model.view(SavedModel)
    assert saved.config['training']['samples'] == len(train_ids) - 3
    assert not set(blank) & set(saved.validation.index)


def test_provenance_records_every_parameter_and_the_seed(tmp_path):
    path = str(tmp_path / 'regressor.qza')
    regressor().save(path)
    text = action_yaml(path)
    assert 'action: fit' in text
    for name in qiime2.sdk.PluginManager().plugins['aam'].actions['fit'].signature.parameters:
        assert f'-   {name}:' in text, name
    assert '-   random_seed: 1' in text
    assert '-   epochs: 1' in text
    training = regressor().view(SavedModel).config['training']
    assert training['random_seed'] == 1
    assert training['epochs'] == 1 and training['max_asvs'] == 32


def test_same_seed_same_model_and_predictions(tmp_path):
    """Refit the shared regressor with identical settings: bit-identical weights and
    predictions. The live TensorBoard folder is written where asked, and changes nothing."""
    train_table, train_seqs, test_table, test_seqs = split()
    live = tmp_path / 'live-logs'
    again, _ = fit(table=train_table, sequences=train_seqs, metadata=days(),
                   **{**TINY, **SINGLE, 'tensorboard_dir': str(live)})
    assert state_equal(again.view(SavedModel).state_dict, regressor().view(SavedModel).state_dict)
    first = regressor_predictions().view(pd.Series)
    second = predict(model=again, table=test_table, sequences=test_seqs).predictions \
        .view(pd.Series)
    pd.testing.assert_series_equal(first, second)
    assert list(live.rglob('events.out.tfevents.*'))
    # another seed gives another model
    other, _ = fit(table=train_table, sequences=train_seqs, metadata=days(),
                   **{**TINY, **SINGLE, 'random_seed': 2})
    assert not state_equal(other.view(SavedModel).state_dict,
                           regressor().view(SavedModel).state_dict)


def test_tensorboard_dir_gets_a_fresh_folder_per_run_and_the_artifact_only_its_files(tmp_path):
    train_table, train_seqs, _, _ = split()
    shared = tmp_path / 'logs'
    (shared / 'docs').mkdir(parents=True)
    (shared / 'docs' / 'notes.txt').write_text('not a log')
    models = [fit(table=train_table, sequences=train_seqs, metadata=days(),
                  **{**TINY, **SINGLE, 'tensorboard_dir': str(shared)}).model
              for _ in range(2)]
    runs = [p for p in shared.iterdir() if p.name.startswith('q2-aam-')]
    assert len(runs) == 2                          # one fresh folder per run
    on_disk = [sorted(p.relative_to(run).as_posix() for p in run.rglob('*') if p.is_file())
               for run in runs]
    carried = [sorted(model.view(SavedModel).tensorboard) for model in models]
    for files in carried:                          # each artifact: exactly one run's files
        assert files and not any('notes.txt' in path for path in files)
        assert on_disk.count(files) == 1
    assert carried[0] != carried[1]
    assert (shared / 'docs' / 'notes.txt').read_text() == 'not a log'


def test_tensorboard_dir_that_is_a_file_is_refused_by_name(tmp_path):
    path = tmp_path / 'a-file'
    path.write_text('x')
    with pytest.raises(ValueError, match=r"tensorboard_dir '.*a-file' is a file, not a folder"):
        fit(table=table(), sequences=rep_seqs(), metadata=days(),
            **{**TINY, **SINGLE, 'tensorboard_dir': str(path)})
    with pytest.raises(ValueError, match=r"checkpoint_dir '.*a-file' is a file, not a folder"):
        fit(table=table(), sequences=rep_seqs(), metadata=days(),
            **{**TINY, **SINGLE, 'checkpoint_dir': str(path)})


def test_rarefy_depth_thins_training_reads_and_is_recorded():
    plain = _fit(days(), rarefy_depth=0).view(SavedModel)
    deeper = _fit(days(), rarefy_depth=10_000).view(SavedModel)   # above every sample's reads
    assert state_equal(deeper.state_dict, plain.state_dict)         # (at most 6,770): unchanged
    thinned = _fit(days(), rarefy_depth=500).view(SavedModel)
    assert (plain.config['training']['rarefy_depth'],
            thinned.config['training']['rarefy_depth']) == (0, 500)
    # prediction's read floor follows: none without rarefying, one read in 500 with
    assert 'read_floor' not in plain.config
    assert thinned.config['read_floor'] == pytest.approx(1 / 500)
    assert not state_equal(thinned.state_dict, plain.state_dict)


# -- ensembles: ensemble_size models, predictions averaged ---------------------------

@pytest.fixture(scope='module')
def regressor_ensemble():
    """Three regressors of days, seeds 1, 2 and 3 (TINY's random_seed is 1), each fitted on
    every training sample (a fixed blend: no cross-fitting)."""
    return _fit(days(), ensemble_size=3, blend='fixed')


def _predictions(model):
    _, _, test_table, test_seqs = split()
    return predict(model=model, table=test_table, sequences=test_seqs).predictions \
        .view(pd.Series)


def test_ensemble_members_are_the_fits_of_consecutive_seeds(regressor_ensemble):
    saved = regressor_ensemble.view(SavedModel)
    assert str(regressor_ensemble.type) == 'AAMModel[AAMRegressor]'
    assert saved.ensemble_size == 3 and saved.config['training']['ensemble_size'] == 3
    assert len(saved.config['best_epoch']) == len(saved.config['epochs_run']) == 3
    first, _, third = saved.member_states()
    assert state_equal(first, regressor().view(SavedModel).state_dict)
    # member 2 is the model of seed 3 trained on the split of seed 1
    assert not state_equal(third, first)
    assert not state_equal(third, _fit(days(), random_seed=3).view(SavedModel).state_dict)
    # every member's epochs and validation rows, told apart by member
    assert saved.history['member'].tolist() == [0, 1, 2]          # one epoch each
    by_member = saved.validation.groupby('member')
    assert sorted(by_member.groups) == [0, 1, 2]
    splits = {frozenset(rows.index) for _, rows in by_member}
    assert len(splits) == 1, 'the members share the validation split of random_seed'
    predictions = [rows['prediction'].to_numpy() for _, rows in by_member]
    assert not np.allclose(predictions[0], predictions[1])
    assert {path.split('/')[0] for path in saved.tensorboard} == \
        {'member-0', 'member-1', 'member-2'}


def test_ensemble_announces_its_split_once_and_each_member(capsys):
    _fit(days(), ensemble_size=2)
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith('q2-aam: ')]
    assert sum('training on' in line for line in lines) == 1, lines
    assert [line for line in lines if 'ensemble member' in line] == [
        'q2-aam: ensemble member 1 of 2 (seed 1)', 'q2-aam: ensemble member 2 of 2 (seed 2)']


def _member_artifact(ensemble, member):
    """One member of an ensemble artifact as a single-model artifact of its own (with the
    ensemble's linear half: the mean of the members' blends is the ensemble's blend)."""
    saved = ensemble.view(SavedModel)
    config = {**saved.config, 'ensemble_size': 1, 'best_epoch': saved.config['best_epoch'][member],
              'epochs_run': saved.config['epochs_run'][member]}
    single = SavedModel(config, saved.member_states()[member], linear=saved.linear,
                        tree=saved.tree, kmers=saved.kmers)
    return qiime2.Artifact.import_data(str(ensemble.type), single)


def test_ensemble_predicts_the_mean_of_its_members(regressor_ensemble):
    members = [_member_artifact(regressor_ensemble, m) for m in range(3)]
    assert state_equal(members[0].view(SavedModel).state_dict,
                       regressor().view(SavedModel).state_dict)
    expected = pd.concat([_predictions(m) for m in members], axis=1).mean(axis=1)
    got = _predictions(regressor_ensemble)
    assert sorted(got.index) == sorted(held_out_ids())
    pd.testing.assert_series_equal(got, expected.rename('prediction'), rtol=1e-5,
                                   check_index_type=False)
    # and it is not simply one of them
    assert not np.allclose(got, _predictions(members[0]))


def test_classifier_ensemble_averages_probabilities():
    _, _, test_table, test_seqs = split()
    ensemble = _fit(body_site(), ensemble_size=2)
    members = [_member_artifact(ensemble, m) for m in (0, 1)]
    probabilities = [predict_probabilities(model=m, table=test_table, sequences=test_seqs)
                     .probabilities.view(pd.DataFrame) for m in [ensemble] + members]
    averaged = (probabilities[1] + probabilities[2]) / 2
    pd.testing.assert_frame_equal(probabilities[0], averaged, rtol=1e-5)
    labels = predict(model=ensemble, table=test_table, sequences=test_seqs).predictions \
        .view(pd.Series)
    assert (labels == averaged.idxmax(axis=1).reindex(labels.index)).all()


def test_plot_validation_of_an_ensemble(regressor_ensemble, tmp_path):
    visualization, = plot_validation(model=regressor_ensemble)
    visualization.export_data(str(tmp_path))
    html = (tmp_path / 'index.html').read_text()
    assert '<tr><th>ensemble members</th><td>3</td></tr>' in html
    assert "(the 3 ensemble members' predictions averaged)" in html
    n_val = round(0.2 * (34 - len(held_out_ids())))
    assert f'<tr><th>validation samples</th><td>{n_val}</td></tr>' in html
    by_member = pd.read_csv(tmp_path / 'validation-by-member.tsv', sep='\t', index_col=0)
    assert len(by_member) == 3 * n_val
    shown = pd.read_csv(tmp_path / 'validation.tsv', sep='\t', index_col=0)
    assert len(shown) == n_val
    expected = by_member.groupby(level=0)['prediction'].mean()
    np.testing.assert_allclose(shown['prediction'], expected.reindex(shown.index), rtol=1e-6)
    # the r2 in the summary is the averaged prediction's
    from q2_aam.engine.metrics import regression_metrics
    r2 = regression_metrics(shown['truth'].to_numpy(), shown['prediction'].to_numpy())['r2']
    assert f'<tr><th>r2</th><td>{r2:.4f}</td></tr>' in html


def test_ensemble_validation_of_a_classifier_averages_probabilities():
    from q2_aam._visualizers import ensemble_validation
    config = {'task': 'classification', 'labels': ['a', 'b'], 'ensemble_size': 2}
    table = pd.DataFrame({'truth': ['a', 'a', 'b', 'b'], 'prediction': ['a', 'b', 'b', 'a'],
                          'prob:a': [0.9, 0.4, 0.2, 0.6], 'prob:b': [0.1, 0.6, 0.8, 0.4],
                          'member': [0, 1, 0, 1]},
                         index=pd.Index(['s1', 's1', 's2', 's2'], name='sample-id'))
    combined = ensemble_validation(SavedModel(config, {}, validation=table))
    assert list(combined.index) == ['s1', 's2']
    assert combined['truth'].tolist() == ['a', 'b']
    np.testing.assert_allclose(combined['prob:a'], [0.65, 0.4])
    assert combined['prediction'].tolist() == ['a', 'b']


# -- the stacked blend: cross-fitted members, out-of-fold weights --------------------

@pytest.fixture(scope='module')
def stacked():
    """Three members and no validation split: each transformer member fits two of three
    folds; the linear and tree members are fitted per fold too."""
    return _fit(body_site(), ensemble_size=3, validation_size=0.0)


def _probabilities(model, table, seqs):
    return predict_probabilities(model=model, table=table, sequences=seqs) \
        .probabilities.view(pd.DataFrame)


def _members(model, table, seqs):
    from q2_aam.actions.predict import member_predictions
    return member_predictions(model.view(SavedModel), table.view(biom_table().__class__),
                              seqs.view(pd.Series))


def test_stacked_members_predict_the_fold_each_did_not_fit(stacked):
    saved = stacked.view(SavedModel)
    n_train = 34 - len(held_out_ids())
    stack = saved.config['stack']
    assert stack['members'] == ['transformer', 'linear', 'tree', 'kmers']
    assert all(w >= 0 for w in stack['weights']) and sum(stack['weights']) == pytest.approx(1)
    assert stack['out_of_fold']['samples'] == n_train and stack['out_of_fold']['folds'] == 3
    # the validation rows are the out-of-fold predictions: every training sample once
    rows = saved.validation
    train_ids = set(metadata().get_ids()) - set(held_out_ids())
    assert rows.index.is_unique and set(rows.index) == train_ids
    sizes = rows['fold'].value_counts()
    assert sorted(sizes.index) == [0, 1, 2] and sizes.max() - sizes.min() <= 1
    # each transformer row is what the member that did not fit it predicts for that sample
    train_table, train_seqs, _, _ = split()
    for m in range(3):
        mine = rows[rows['fold'] == m]
        _, got = _members(_member_artifact(stacked, m), train_table, train_seqs)
        ids = list(train_table.view(pd.DataFrame).index)
        got = pd.DataFrame(got['transformer'], index=ids, columns=LABELS)
        np.testing.assert_allclose(got.loc[mine.index].to_numpy(),
                                   mine[[f'prob:transformer:{c}' for c in LABELS]].to_numpy(),
                                   rtol=1e-4, atol=1e-6)
    # and the blend's row is the stack applied to the members' out-of-fold rows
    from q2_aam.engine.stack import Stack, apply_stack
    blend = apply_stack(Stack.from_config(stack, 'classification'), {
        m: rows[[f'prob:{m}:{c}' for c in LABELS]].to_numpy() for m in stack['members']})
    np.testing.assert_allclose(rows[[f'prob:{c}' for c in LABELS]].to_numpy(), blend,
                               rtol=1e-6)
    assert stack['out_of_fold']['scores']['blend']['accuracy'] == pytest.approx(
        (rows['truth'] == rows['prediction']).mean())


@pytest.fixture
def trained_samples(monkeypatch):
    """The sample IDs each training run of an action fits, one set per run."""
    from q2_aam.actions import runs as actions
    seen, real_train = [], actions.train

    def recording_train(model, data, train_rows, val_rows, settings, **kwargs):
        seen.append(set(data.sample_ids[train_rows]))
        return real_train(model, data, train_rows, val_rows, settings, **kwargs)
    monkeypatch.setattr(actions, 'train', recording_train)
    return seen


def test_each_member_trains_without_its_fold(trained_samples):
    seen = trained_samples
    saved = _fit(body_site(), ensemble_size=3, validation_size=0.0).view(SavedModel)
    rows = saved.validation
    every = set(rows.index)
    assert len(seen) == 3
    for m, fitted in enumerate(seen):
        assert fitted == every - set(rows.index[rows['fold'] == m]), m


def _calibrated(p, cal):
    from q2_aam.engine.calibration import log_softmax
    p = np.maximum(p, 1e-4)
    p = np.log(p / p.sum(1, keepdims=True))
    return np.exp(log_softmax(log_softmax(p) / cal['temperature'] + np.array(cal['bias'])))


def test_predictions_are_the_stack_of_the_members(stacked):
    """Each member calibrated (the transformers model by model, then averaged, as their
    out-of-fold outputs were one model's), weighed, and the blend calibrated."""
    _, _, test_table, test_seqs = split()
    saved = stacked.view(SavedModel)
    ids, members = _members(stacked, test_table, test_seqs)
    from q2_aam.actions.predict import member_predictions
    from q2_aam.engine.calibration import log_softmax
    _, each = member_predictions(saved, test_table.view(biom_table().__class__),
                                 test_seqs.view(pd.Series), each_model=True)
    assert each['transformer'].shape == (3,) + members['transformer'].shape
    np.testing.assert_allclose(each['transformer'].mean(0), members['transformer'], rtol=1e-9)
    stack = saved.config['stack']
    assert stack['calibrate_each_model'] is True
    parts = []
    for m, w in zip(stack['members'], stack['weights']):
        cal = stack['calibration'][m]
        if m == 'transformer':
            parts.append(w * np.mean([_calibrated(p, cal) for p in each[m]], axis=0))
        else:
            parts.append(w * _calibrated(members[m], cal))
    blend = np.log(np.maximum(sum(parts), 1e-4))
    cal = stack['blend_calibration']
    expected = np.exp(log_softmax(log_softmax(blend) / cal['temperature'] + np.array(cal['bias'])))
    got = _probabilities(stacked, test_table, test_seqs)
    np.testing.assert_allclose(got.loc[list(ids)].to_numpy(), expected, rtol=1e-9)
    np.testing.assert_allclose(got.sum(axis=1), 1.0)
    assert (_predictions(stacked) == got.idxmax(axis=1)).all()


def test_a_stacked_regressor_is_the_weighted_sum_of_its_members():
    model = _fit(days(), ensemble_size=2, validation_size=0.0)
    saved = model.view(SavedModel)
    _, _, test_table, test_seqs = split()
    ids, members = _members(model, test_table, test_seqs)
    stack = saved.config['stack']
    expected = sum(w * members[m] for m, w in zip(stack['members'], stack['weights']))
    np.testing.assert_allclose(_predictions(model).loc[list(ids)].to_numpy(), expected,
                               rtol=1e-12)
    assert stack['calibration'] is None and stack['blend_calibration'] is None
    assert {'prediction:transformer', 'prediction:linear', 'prediction:tree'} <= \
        set(saved.validation.columns)


def test_the_fit_log_names_each_members_score_and_weight(capsys):
    saved = _fit(days(), ensemble_size=2, validation_size=0.0).view(SavedModel)
    out = capsys.readouterr().out
    n_train = 34 - len(held_out_ids())
    line, = [x for x in out.splitlines() if 'stacked blend' in x]
    assert line.startswith(f'q2-aam: stacked blend from {n_train} out-of-fold predictions '
                           '(2 folds): ')
    stack = saved.config['stack']
    for m, w in zip(stack['members'], stack['weights']):
        r2 = stack['out_of_fold']['scores'][m]['r2']
        assert f'{m}: out-of-fold r2 {r2:.3f}, mse ' in line and f'weight {w:.2f}' in line
    assert 'linear member: ridge regression on ' in out
    assert 'k-mer member: ridge regression on 1024 5-mer frequencies, penalty alpha ' in out
    assert 'tree member: an ExtraTrees forest of 500 trees on ' in out


def test_one_transformer_gets_equal_weights_and_says_why(capsys):
    saved = _fit(days()).view(SavedModel)       # ensemble_size 1
    assert saved.config['stack']['weights'] == pytest.approx([1 / 4] * 4)
    assert ('equal weights for transformer, linear, tree, kmers: an ensemble of one '
            'transformer has no out-of-fold predictions') in capsys.readouterr().out


def test_a_fixed_blend_weighs_as_told_and_members_can_be_left_out():
    _, _, test_table, test_seqs = split()
    old_style = _fit(days(), ensemble_size=2, blend='fixed', transformer_weight=1,
                     linear_weight=3, tree_weight=0, kmer_weight=0)
    saved = old_style.view(SavedModel)
    assert saved.config['stack']['members'] == ['transformer', 'linear']
    assert saved.config['stack']['weights'] == [0.25, 0.75] and saved.tree is None
    assert saved.kmers is None
    ids, members = _members(old_style, test_table, test_seqs)
    np.testing.assert_allclose(_predictions(old_style).loc[list(ids)].to_numpy(),
                               0.25 * members['transformer'] + 0.75 * members['linear'],
                               rtol=1e-12)
    no_linear = _fit(days(), ensemble_size=2, linear_weight=0).view(SavedModel)
    assert no_linear.config['stack']['members'] == ['transformer', 'tree', 'kmers']
    assert no_linear.linear is None and no_linear.config['linear'] is None
    three = _fit(days(), ensemble_size=2, kmer_weight=0).view(SavedModel)   # the old stack
    assert three.config['stack']['members'] == ['transformer', 'linear', 'tree']
    assert three.kmers is None
    with pytest.raises(TypeError, match='transformer_weight'):
        _fit(days(), transformer_weight=0)


def test_plot_validation_shows_each_members_out_of_fold_score(stacked, tmp_path):
    visualization, = plot_validation(model=stacked)
    visualization.export_data(str(tmp_path))
    html = (tmp_path / 'index.html').read_text()
    n_train = 34 - len(held_out_ids())
    assert f'<tr><th>out-of-fold samples</th><td>{n_train}</td></tr>' in html
    assert 'Confusion matrix of the out-of-fold predictions' in html
    stack = stacked.view(SavedModel).config['stack']
    for m, w in zip(stack['members'], stack['weights']):
        accuracy = stack['out_of_fold']['scores'][m]['accuracy']
        assert f'<tr><td>{m}</td><td>{w:.3f}</td><td>{accuracy:.3f}</td>' in html
    blend = stack['out_of_fold']['scores']['blend']['accuracy']
    assert f'<tr><td>the blend</td><td>1.000</td><td>{blend:.3f}</td>' in html
    assert (tmp_path / 'validation.png').is_file()


# -- groups: whole subjects on one side ----------------------------------------------

def _subjects():
    return qiime2.CategoricalMetadataColumn(metadata().get_column('subject').to_series())


def test_grouped_folds_keep_each_subject_on_one_side(trained_samples):
    saved = _fit(body_site(), ensemble_size=2, validation_size=0.0,
                 groups=_subjects()).view(SavedModel)
    subject = metadata().get_column('subject').to_series()
    rows = saved.validation
    for f in (0, 1):
        held = set(subject[rows.index[rows['fold'] == f]])
        fitted = set(subject[list(trained_samples[f])])
        assert held and not held & fitted, f
    assert saved.config['stack']['out_of_fold']['grouped'] is True
    assert saved.config['training']['groups'] == 'subject'


def test_groups_are_refused_when_a_sample_has_none_or_there_are_too_few():
    series = metadata().get_column('subject').to_series().copy()
    missing = [i for i in series.index if i not in held_out_ids()][:2]
    series[missing] = np.nan
    with pytest.raises(ValueError, match=f"2 of {34 - len(held_out_ids())} samples have no "
                                         f"value in the groups column 'subject': "
                                         f"'{missing[0]}', '{missing[1]}'"):
        _fit(body_site(), ensemble_size=2, validation_size=0.0,
             groups=qiime2.CategoricalMetadataColumn(series))
    with pytest.raises(ValueError, match='one fold per ensemble member \\(3\\), keeping '
                                         'groups whole: 3 folds need at least 3 groups; '
                                         'there are 2'):
        _fit(body_site(), ensemble_size=3, validation_size=0.0, groups=_subjects())


# -- models fitted before stacking --------------------------------------------------

LEGACY = Path(__file__).parent / 'data' / 'legacy-models'


@pytest.mark.parametrize('name, kind, predictions', [
    ('regressor', 'AAMModel[AAMRegressor]', 'regressor-predictions.tsv'),
    ('classifier', 'AAMModel[AAMClassifier]', 'classifier-probabilities.tsv')])
def test_a_model_saved_before_stacking_predicts_as_it_did(name, kind, predictions):
    model = qiime2.Artifact.import_data(kind, str(LEGACY / name))
    assert 'stack' not in model.view(SavedModel).config
    _, _, test_table, test_seqs = split()
    expected = pd.read_csv(LEGACY / predictions, sep='\t', index_col=0,
                           float_precision='round_trip')
    # Bit-identical on a CPU like the one that wrote them; on another, the BLAS kernel's
    # summation order moves the last bits of the float64 linear half (4e-11 relative on an
    # AMD EPYC), so the check is 1e-9 relative: far below any change of code path.
    if name == 'regressor':
        got = _predictions(model)
        np.testing.assert_allclose(got.loc[expected.index].to_numpy(),
                                   expected['prediction'].to_numpy(), rtol=1e-9, atol=0)
    else:
        got = _probabilities(model, test_table, test_seqs)
        np.testing.assert_allclose(got.loc[expected.index, expected.columns].to_numpy(),
                                   expected.to_numpy(), rtol=1e-9, atol=1e-15)


def test_a_calibrated_stack_saved_before_per_model_calibration_predicts_as_it_did():
    """A stacked classifier written before 2026-12-07 (its three transformers calibrated as
    their average) predicts as it did; the same model marked as calibrating model by model
    predicts otherwise, so this test sees which rule a model is read with."""
    from q2_aam.actions.predict import predict_probabilities as predict_action
    model = qiime2.Artifact.import_data('AAMModel[AAMClassifier]',
                                        str(LEGACY / 'calibrated-stacked-classifier'))
    saved = model.view(SavedModel)
    assert saved.ensemble_size == 3 and saved.config['stack']['calibration']
    assert 'calibrate_each_model' not in saved.config['stack']
    _, _, test_table, test_seqs = split()
    expected = pd.read_csv(LEGACY / 'calibrated-stacked-classifier-probabilities.tsv',
                           sep='\t', index_col=0, float_precision='round_trip')
    got = _probabilities(model, test_table, test_seqs)
    np.testing.assert_allclose(got.loc[expected.index, expected.columns].to_numpy(),
                               expected.to_numpy(), rtol=1e-9, atol=1e-15)
    saved.config['stack']['calibrate_each_model'] = True
    other = predict_action(saved, test_table.view(biom_table().__class__),
                           test_seqs.view(pd.Series))
    assert np.abs(other.loc[expected.index, expected.columns].to_numpy()
                  - expected.to_numpy()).max() > 1e-3


@pytest.mark.parametrize('deep, predictions', [
    (False, 'stacked-classifier-probabilities.tsv'),
    (True, 'stacked-classifier-deep-probabilities.tsv')])
def test_a_model_saved_before_the_read_floor_reads_every_asv_as_it_did(deep, predictions):
    """A stacked classifier (fixed blend, so the transformers count) written at 77f1c85,
    before fit recorded a read floor: on a deep table, where a floor of 1 / 2000 would
    leave most ASVs out, it predicts as it did."""
    model = qiime2.Artifact.import_data('AAMModel[AAMClassifier]',
                                        str(LEGACY / 'stacked-classifier'))
    assert 'read_floor' not in model.view(SavedModel).config
    _, _, test_table, test_seqs = split()
    expected = pd.read_csv(LEGACY / predictions, sep='\t', index_col=0,
                           float_precision='round_trip')
    got = _probabilities(model, deep_test_table() if deep else test_table, test_seqs)
    np.testing.assert_allclose(got.loc[expected.index, expected.columns].to_numpy(),
                               expected.to_numpy(), rtol=1e-9, atol=1e-15)


def test_predictions_leave_out_the_asvs_training_subsamples_seldom_showed():
    """fit records one read in rarefy_depth as the model's read floor; predict reads a
    sample's ASVs above it, as the engine does given that floor; without the floor (a
    model from before it) the same deep samples read every ASV and predict otherwise."""
    from q2_aam.actions import inputs
    from q2_aam.engine.predict import predict as engine_predict
    saved = regressor().view(SavedModel)
    assert saved.config['read_floor'] == pytest.approx(1 / 2000)
    _, _, _, test_seqs = split()
    deep = deep_test_table()
    index, floored = _members(regressor(), deep, test_seqs)
    counts, ids, features = inputs.table_parts(deep.view(biom_table().__class__))
    seqs = inputs.sequences_for(features, test_seqs.view(pd.Series))
    data = inputs.build_data(counts, ids, features, seqs, saved.config['max_asvs'],
                             saved.config['max_bp'], read_floor=1 / 2000)
    assert (data.asvs_per_sample() > [len(data.read_whole(i)[0]) for i in range(len(data))]
            ).all()                                    # every deep sample loses ASVs
    raw = engine_predict(saved.build_models()[0], data)['prediction'][:, 0]
    expected = raw * saved.config['target_std'] + saved.config['target_mean']
    np.testing.assert_allclose(floored['transformer'], expected, rtol=1e-6)
    before = dataclasses.replace(saved, config={k: v for k, v in saved.config.items()
                                                if k != 'read_floor'})
    _, whole = _members(qiime2.Artifact.import_data('AAMModel[AAMRegressor]', before),
                        deep, test_seqs)
    assert not np.allclose(whole['transformer'], floored['transformer'], rtol=1e-3)
    np.testing.assert_array_equal(whole['linear'], floored['linear'])   # members unchanged


# -- plot_validation and q2-sample-classifier's visualizers --------------------------

@pytest.mark.parametrize('make, title, metrics, column', [
    (encoder, 'encoder', ['r2', 'mae', 'rmse'], None),
    (regressor, 'regression', ['r2', 'mae', 'rmse'], 'days-since-experiment-start'),
    (classifier, 'classification', ['accuracy', 'precision', 'recall', 'f1', 'auroc'],
     'body-site'),
])
def test_plot_validation(make, title, metrics, column, tmp_path):
    visualization, = plot_validation(model=make())
    assert str(visualization.type) == 'Visualization'
    out = tmp_path / 'viz'
    visualization.export_data(str(out))
    for name in ('index.html', 'validation.png', 'validation.svg', 'losses.png',
                 'losses.svg', 'validation.tsv', 'history.tsv'):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    html = (out / 'index.html').read_text()
    assert f'q2-aam {title} model' in html
    assert 'best epoch' in html
    assert 'lowest validation loss' in html and 'held no samples out' not in html
    for metric in metrics:
        assert f'<th>{metric}</th>' in html, metric
    if column:
        assert f'<tr><th>metadata column</th><td>{column}</td></tr>' in html
    assert 'Training and validation loss per epoch' in html
    assert '<img src="validation.png"' in html and '<img src="losses.png"' in html
    history = pd.read_csv(out / 'history.tsv', sep='\t')
    assert list(history['epoch']) == [1]
    validation = pd.read_csv(out / 'validation.tsv', sep='\t', index_col=0)
    assert len(validation) > 0
    assert (out / 'validation.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_sample_classifier_confusion_matrix_accepts_predictions(
        classifier_predictions, classifier_probabilities, tmp_path):
    from qiime2.plugins.sample_classifier.visualizers import confusion_matrix
    truth = metadata().filter_ids(held_out_ids()).get_column('body-site')
    visualization, = confusion_matrix(predictions=classifier_predictions,
                                      probabilities=classifier_probabilities, truth=truth)
    visualization.export_data(str(tmp_path / 'cm'))
    assert (tmp_path / 'cm' / 'index.html').is_file()
    assert (tmp_path / 'cm' / 'predictive_accuracy.tsv').is_file()


def test_sample_classifier_scatterplot_accepts_predictions(tmp_path):
    from qiime2.plugins.sample_classifier.visualizers import scatterplot
    truth = metadata().filter_ids(held_out_ids()).get_column('days-since-experiment-start')
    visualization, = scatterplot(predictions=regressor_predictions(), truth=truth)
    visualization.export_data(str(tmp_path / 'sc'))
    assert (tmp_path / 'sc' / 'index.html').is_file()


def test_fit_with_distances_and_without_validation(tmp_path, capsys):
    """A distance matrix keeps the UniFrac loss on while fitting; fit's default,
    validation_size 0, trains on every sample, and plot_validation of a fixed blend (no
    out-of-fold predictions) then shows the loss curves and says why there is no
    validation figure."""
    settings = {k: v for k, v in TINY.items() if k != 'validation_size'}
    model, _ = fit(table=table(), sequences=rep_seqs(), metadata=body_site(),
                   distance_matrix=distances(), blend='fixed', **settings)
    saved = model.view(SavedModel)
    assert saved.config['training']['validation_size'] == 0.0
    assert ('q2-aam: training on 34 samples, no validation split (every sample, every '
            'epoch)') in capsys.readouterr().out
    assert {'train_unifrac_loss', 'train_target_loss'} <= set(saved.history)
    assert not any(c.startswith('val_') for c in saved.history)
    assert len(saved.validation) == 0
    assert saved.config['training']['samples'] == 34
    assert saved.config['training']['unifrac_weight'] == 1.0
    visualization, = plot_validation(model=model)
    out = tmp_path / 'viz'
    visualization.export_data(str(out))
    names = {p.name for p in out.iterdir()}
    assert {'index.html', 'losses.png', 'history.tsv', 'validation.tsv'} <= names
    assert 'validation.png' not in names
    html = (out / 'index.html').read_text()
    assert '<tr><th>validation samples</th><td>0</td></tr>' in html
    assert 'This model held no samples out for validation' in html
    assert '--p-validation-size 0.2' in html
    # fit's default is an ensemble: without validation its members differ by seed alone
    from q2_aam.actions.plan import DEFAULTS
    assert saved.ensemble_size == DEFAULTS['ensemble_size'] > 1
    assert f"<tr><th>ensemble members</th><td>{DEFAULTS['ensemble_size']}</td></tr>" in html


# -- checkpoint_dir: resume an interrupted run ------------------------------------------

class Interrupted(Exception):
    pass


def _interrupt_at(monkeypatch, member_folder_name, epoch):
    """Stop the run right after the trainer saved ``epoch`` in that member's folder."""
    from q2_aam.engine import trainer as trainer_module
    original = trainer_module.save_resume

    def save_then_stop(path, model, optimizer, scheduler, state):
        original(path, model, optimizer, scheduler, state)
        if str(path.parent).endswith(member_folder_name) and state['epoch'] == epoch:
            raise Interrupted
    monkeypatch.setattr(trainer_module, 'save_resume', save_then_stop)


def test_an_interrupted_fit_resumes_to_the_same_model(tmp_path, monkeypatch):
    settings = dict(epochs=4, ensemble_size=2, validation_size=0.2)
    whole = _fit(days(), **settings).view(SavedModel)
    folder = tmp_path / 'checkpoints'
    _interrupt_at(monkeypatch, 'member-1', 2)
    with pytest.raises(Interrupted):
        _fit(days(), checkpoint_dir=str(folder), **settings)
    monkeypatch.undo()
    assert (folder / 'member-0' / 'finished.pt').is_file()        # member 0 was done
    assert (folder / 'member-1' / 'last_checkpoint.pt').is_file()
    assert not (folder / 'member-1' / 'finished.pt').exists()
    pngs = sorted(p.name for p in (folder / 'member-0').glob('validation-epoch-*.png'))
    assert pngs and pngs[0] == 'validation-epoch-1.png'
    assert list((folder / 'member-1' / 'tensorboard').rglob('events.out.tfevents.*'))
    resumed = _fit(days(), checkpoint_dir=str(folder), **settings).view(SavedModel)
    assert state_equal(resumed.state_dict, whole.state_dict)
    assert resumed.config['best_epoch'] == whole.config['best_epoch']
    pd.testing.assert_frame_equal(resumed.history, whole.history)
    pd.testing.assert_frame_equal(resumed.validation, whole.validation)   # via finished.pt


def test_a_checkpoint_dir_of_another_run_is_refused_naming_the_differences(tmp_path):
    folder = tmp_path / 'checkpoints'
    _fit(days(), epochs=1, checkpoint_dir=str(folder))
    with pytest.raises(ValueError, match=r"holds a run with other settings or data \(1 differ: "
                                         r"learning_rate: 0.003 then, 0.01 now\)"):
        _fit(days(), epochs=1, learning_rate=0.01, checkpoint_dir=str(folder))
    with pytest.raises(ValueError, match=r'\(1 differ: data: '):
        _fit(body_site(), epochs=1, checkpoint_dir=str(folder))
    again = _fit(days(), epochs=1, checkpoint_dir=str(folder))      # same run: taken as is
    assert again.view(SavedModel).config['epochs_run'] == 1


def test_an_interrupted_pretraining_resumes_to_the_same_encoder(tmp_path, monkeypatch):
    from plugin_fixtures import _pretrain
    whole = _pretrain(epochs=3).view(SavedModel)
    folder = tmp_path / 'pre'
    _interrupt_at(monkeypatch, 'pre', 1)
    with pytest.raises(Interrupted):
        _pretrain(epochs=3, checkpoint_dir=str(folder))
    monkeypatch.undo()
    resumed = _pretrain(epochs=3, checkpoint_dir=str(folder)).view(SavedModel)
    assert state_equal(resumed.state_dict, whole.state_dict)


# -- continuing a model as a study grows -------------------------------------------------

def test_fit_continues_a_fitted_model_keeping_its_scale_and_members():
    first = _fit(days(), ensemble_size=2).view(SavedModel)
    previous = _fit(days(), ensemble_size=2)
    continued = fit(table=table(), sequences=rep_seqs(), metadata=days(),
                    continue_from=previous, **{**TINY_TRAIN, 'ensemble_size': 2,
                                               'learning_rate': 1e-12}).model.view(SavedModel)
    assert continued.config['training']['continued'] is True and continued.ensemble_size == 2
    # the scale of the model it continues, not of the 34 samples it now sees
    assert continued.config['target_mean'] == first.config['target_mean']
    assert continued.config['target_std'] == first.config['target_std']
    for a, b in zip(continued.member_states(), first.member_states()):
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)   # went on from them


def test_continuing_needs_the_same_kind_and_known_classes():
    regressor_model = _fit(days())
    with pytest.raises(ValueError, match='continue_from is a regression model, but the '
                                         'metadata column gives a classification'):
        fit(table=table(), sequences=rep_seqs(), metadata=body_site(),
            continue_from=regressor_model, **TINY_TRAIN)
    column = body_site().to_series()
    column[column == 'gut'] = 'stool'
    renamed = qiime2.CategoricalMetadataColumn(column)
    with pytest.raises(ValueError, match=r"1 classes the model to continue does not know: "
                                         r"'stool'"):
        fit(table=table(), sequences=rep_seqs(), metadata=renamed,
            continue_from=classifier(), **TINY_TRAIN)
    with pytest.raises(ValueError, match='either pretrained .* or continue_from'):
        fit(table=table(), sequences=rep_seqs(), metadata=days(), pretrained=encoder(),
            continue_from=regressor_model, **TINY_TRAIN)


def test_pretrain_continues_an_encoder():
    base = encoder()
    more, = pretrain(table=table(), sequences=rep_seqs(), distance_matrix=distances(),
                     pretrained=base, **{**TINY_TRAIN, 'learning_rate': 1e-12})
    more = more.view(SavedModel)
    assert more.config['training']['continued'] is True
    assert more.config['model'] == base.view(SavedModel).config['model']
    start = base.view(SavedModel).state_dict
    assert all(torch.allclose(more.state_dict[k], start[k], atol=1e-6) for k in start)


# -- continuing a fitted model ------------------------------------------------------

def test_a_continued_model_keeps_its_blend(capsys):
    previous = _fit(days(), ensemble_size=2, validation_size=0.0)
    before = previous.view(SavedModel)
    continued = fit(table=table(), sequences=rep_seqs(), metadata=days(),
                    continue_from=previous, **{**TINY_TRAIN, 'ensemble_size': 2,
                                               'linear_weight': 0.2}).model.view(SavedModel)
    assert continued.config['stack'] == before.config['stack']
    assert continued.linear.sequences == before.linear.sequences
    np.testing.assert_array_equal(continued.linear.coef, before.linear.coef)
    np.testing.assert_array_equal(continued.tree.value, before.tree.value)
    np.testing.assert_array_equal(continued.kmers.coef, before.kmers.coef)
    np.testing.assert_array_equal(continued.kmers.mean, before.kmers.mean)
    weights = ', '.join(f'{m} {w:.2f}' for m, w in zip(before.config['stack']['members'],
                                                       before.config['stack']['weights']))
    assert (f'q2-aam: the blend of the model continued is kept as it was (weights {weights}); '
            'a new fit refits it.') in capsys.readouterr().out


def test_a_model_from_before_stacking_continues_with_its_linear_weight(capsys):
    old = qiime2.Artifact.import_data('AAMModel[AAMRegressor]', str(LEGACY / 'regressor'))
    continued = fit(table=table(), sequences=rep_seqs(), metadata=days(), continue_from=old,
                    **{**TINY_TRAIN, 'ensemble_size': 2}).model.view(SavedModel)
    assert 'stack' not in continued.config and continued.config['linear']['weight'] == 0.75
    assert ('the blend of the model continued is kept as it was (linear weight 0.75)'
            in capsys.readouterr().out)


def test_samples_that_share_no_asv_with_the_training_samples_are_named(tmp_path):
    renamed = sequences_series().copy()
    renamed[:] = [s[::-1] for s in renamed]          # every ASV a sequence never seen
    _, _, test_table, _ = split()
    seqs = qiime2.Artifact.import_data('FeatureData[Sequence]', renamed)
    n = test_table.view(pd.DataFrame).shape[0]
    with pytest.warns(UserWarning, match=f'{n} of {n} samples share no ASV \\(by sequence\\) '
                                         'with the samples the model was fitted on'):
        predict(model=regressor(), table=test_table, sequences=seqs)


# -- pretraining from a phylogeny ------------------------------------------------------------

def _balanced_tree(ids):
    """A rooted binary tree over these tips (branch lengths from their order): enough for
    UniFrac to tell samples apart."""
    nodes = [f'{i}:{0.05 + (k % 7) * 0.03:.2f}' for k, i in enumerate(ids)]
    while len(nodes) > 1:
        nodes = [f'({nodes[k]},{nodes[k + 1]}):0.1' if k + 1 < len(nodes) else nodes[k]
                 for k in range(0, len(nodes), 2)]
    import skbio
    return qiime2.Artifact.import_data('Phylogeny[Rooted]',
                                       skbio.TreeNode.read([nodes[0].rsplit(':', 1)[0] + ';']))


def test_pretrain_from_a_phylogeny_computes_each_batch_and_needs_one_source():
    pytest.importorskip('unifrac')
    from q2_aam.engine import unifrac
    tree = _balanced_tree(list(sequences_series().index))
    sizes, real_block = [], unifrac.TreeDistances.block

    def counting(self, rows):
        sizes.append(len(rows))
        return real_block(self, rows)
    unifrac.TreeDistances.block = counting
    try:
        model = pretrain(table=table(), sequences=rep_seqs(), phylogeny=tree,
                         **{**TINY, 'epochs': 1}).model.view(SavedModel)
    finally:
        unifrac.TreeDistances.block = real_block
    assert model.config['training']['distances'].startswith('computed per batch')
    assert np.isfinite(model.history['train_unifrac_loss']).all()
    n_val = len(model.validation.index)            # the validation pairs' table
    assert sizes and max(sizes) <= max(TINY['batch_size'], 7) and n_val > 0
    for given in ({}, {'phylogeny': tree, 'distance_matrix': distances()}):
        with pytest.raises(ValueError, match='give either distance_matrix .* or phylogeny'):
            pretrain(table=table(), sequences=rep_seqs(), **given, **TINY)


# -- several processes ------------------------------------------------------------------------

# deterministic across ranks: no dropout, no masked bases, no read subsampling, and SGD
# (Adam turns float noise in a ~0 gradient into a full step)
SAME_ON_EVERY_RANK = dict(dropout=0.0, nuc_weight=0.0, optimizer='sgd', learning_rate=0.05,
                          scheduler='constant', epochs=2)


def _assert_same_model(a, b, atol=1e-4):
    assert a.config['model'] == b.config['model'] and a.ensemble_size == b.ensemble_size
    for name, value in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[name], value, atol=atol, rtol=1e-3)


def test_pretrain_on_two_processes_gives_the_one_process_encoder(capsys):
    settings = {**TINY, **SAME_ON_EVERY_RANK}
    one = pretrain(table=table(), sequences=rep_seqs(), distance_matrix=distances(),
                   **settings).model.view(SavedModel)
    two = pretrain(table=table(), sequences=rep_seqs(), distance_matrix=distances(),
                   processes=2, **settings).model
    assert str(two.type) == 'AAMModel[AAMEncoder]'
    two = two.view(SavedModel)
    assert two.config['training']['processes'] == 2
    assert one.config['training']['processes'] == 1
    _assert_same_model(one, two)
    np.testing.assert_allclose(two.history['train_unifrac_loss'],
                               one.history['train_unifrac_loss'], rtol=1e-4)
    assert 'q2-aam: training on 2 processes (torchrun)' in capsys.readouterr().out


def test_fit_on_two_processes_gives_the_one_process_model():
    settings = dict(**SAME_ON_EVERY_RANK, ensemble_size=2, rarefy_depth=0)
    one = _fit(days(), **settings)
    two = _fit(days(), processes=2, **settings)
    a, b = one.view(SavedModel), two.view(SavedModel)
    _assert_same_model(a, b)
    np.testing.assert_allclose(a.linear.coef, b.linear.coef, rtol=1e-9, atol=1e-12)
    pd.testing.assert_series_equal(_predictions(one), _predictions(two), rtol=1e-3)


def test_several_processes_cannot_resume_yet(tmp_path):
    with pytest.raises(ValueError, match='a run on several processes cannot be resumed yet'):
        _fit(days(), processes=2, checkpoint_dir=str(tmp_path / 'ck'))


def test_the_launcher_reads_exported_files_and_writes_an_importable_folder(tmp_path, capsys):
    """What a multi-node run does on each node (here one process, without torchrun)."""
    pytest.importorskip('unifrac')
    from q2_aam import launch
    from q2_aam.actions.processes import export as _export
    tree = _balanced_tree(list(sequences_series().index))
    files = {name: _export(name, view, str(tmp_path)) for name, view in (
        ('table', biom_table()), ('sequences', sequences_series()),
        ('phylogeny', tree.view(__import__('skbio').TreeNode)))}
    out = tmp_path / 'encoder'
    launch.run(['pretrain', f'--table={files["table"]}', f'--sequences={files["sequences"]}',
                f'--phylogeny={files["phylogeny"]}', f'--output={out}', '--set', 'epochs=1',
                '--set', 'embedding_dim=16', '--set', 'attention_heads=2', '--set',
                'max_asvs=32', '--set', 'threads=1', '--set', 'device="cpu"'])
    assert (f"import it with qiime tools import --type 'AAMModel[AAMEncoder]' --input-path "
            f'{out}') in capsys.readouterr().out
    artifact = qiime2.Artifact.import_data('AAMModel[AAMEncoder]', str(out))
    saved = artifact.view(SavedModel)
    assert saved.config['training']['processes'] == 1
    assert saved.config['training']['distances'].startswith('computed per batch')
    with pytest.raises(SystemExit, match='write NAME=VALUE'):
        launch.run(['pretrain', '--table=x', '--sequences=y', '--output=z', '--set', 'epochs'])


def test_compile_asks_the_trainer_for_torch_compile(monkeypatch):
    """`compile` becomes the inductor backend for every training run (the engine's test
    trains a compiled model; inductor itself takes a minute to compile, so not here)."""
    from q2_aam.actions import runs as actions
    asked = []

    def recording_train(model, data, train_rows, val_rows, settings, **kwargs):
        asked.append(settings.compile)
        raise KeyboardInterrupt      # the settings are all this test needs
    monkeypatch.setattr(actions, 'train', recording_train)
    for flag, backend in ((True, 'inductor'), (False, None)):
        with pytest.raises(KeyboardInterrupt):
            _fit(days(), compile=flag)
        with pytest.raises(KeyboardInterrupt):
            pretrain(table=table(), sequences=rep_seqs(), distance_matrix=distances(),
                     compile=flag, **TINY)
        assert asked[-2:] == [backend, backend]
