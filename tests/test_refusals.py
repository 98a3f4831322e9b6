"""Bad input and faults get a clear refusal, never a wrong model: one test per case that was
once accepted, or failed deep inside a library (NaN and infinite counts, targets beyond
float32, negative and infinite distances, all-N sequences, IDs with non-ASCII letters, a
changed command resumed, a shared checkpoint folder, a full disk)."""
import os
import subprocess
import sys

import biom
import numpy as np
import pandas as pd
import pytest
import qiime2
import skbio

from q2_aam.engine import runstate
from q2_aam.engine.savedmodel import SavedModel

from plugin_fixtures import (TINY, TINY_TRAIN, SINGLE, biom_table, body_site, days, distances,
                             encoder, metadata, sequences_series, state_equal, table, rep_seqs)
from qiime2.plugins.aam.methods import fit, predict, pretrain


def _seqs():
    return qiime2.Artifact.import_data('FeatureData[Sequence]', sequences_series())


def _table_with(value, cell=(0, 0)):
    """The bundled table with one count replaced (sample row, feature column)."""
    t = biom_table()
    dense = t.matrix_data.T.toarray().astype(float)          # samples x features
    dense[cell] = value
    return biom.Table(dense.T, t.ids('observation'), t.ids('sample')), \
        t.ids('sample')[cell[0]], t.ids('observation')[cell[1]]


@pytest.mark.parametrize('value, shown', [(np.nan, 'nan'), (np.inf, 'inf'), (-3.0, '-3.0')])
def test_a_count_that_is_not_a_finite_number_is_refused_by_fit_and_predict(value, shown):
    from q2_aam.actions.fit import fit
    from q2_aam.actions.predict import predict
    bad, sample, feature = _table_with(value)
    message = (f'The feature table holds 1 counts that are not finite numbers of at least 0 '
               f'(NaN, infinite or negative), in 1 samples: {sample} / {feature} ({shown})')
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        fit(table=bad, sequences=sequences_series(), metadata=days(), **TINY, **SINGLE)
    model, _ = fit(table=biom_table(), sequences=sequences_series(), metadata=days(), **TINY,
                   **SINGLE)
    with pytest.raises(ValueError, match='Nothing was trained or predicted'):
        predict(model, bad, sequences_series())


def test_a_target_beyond_float32_is_refused_naming_the_sample():
    values = days().to_series().astype(float).copy()
    values.iloc[3] = 1e150
    column = qiime2.NumericMetadataColumn(values)
    with pytest.raises(ValueError, match=rf"1 of 34 values are beyond what training can "
                                         rf"represent .*: {values.index[3]} \(1e\+150\)"):
        fit(table=table(), sequences=rep_seqs(), metadata=column, **TINY, **SINGLE)


@pytest.mark.parametrize('value', [-0.5, np.inf])
def test_a_negative_or_infinite_distance_is_refused_naming_the_pair(value):
    dm = distances().view(skbio.DistanceMatrix)
    data = dm.data.copy()
    data[2, 5] = data[5, 2] = value
    try:
        bad = skbio.DistanceMatrix(data, dm.ids, validate=False)
    except TypeError:                     # older scikit-bio validates always
        bad = skbio.DistanceMatrix(data, dm.ids)
    artifact = qiime2.Artifact.import_data('DistanceMatrix', bad)
    with pytest.raises(ValueError, match=rf'1 distances that are negative or infinite: '
                                         rf'{dm.ids[2]} - {dm.ids[5]} \({value}\)'):
        pretrain(table=table(), sequences=rep_seqs(), distance_matrix=artifact, **TINY)


def test_a_sequence_with_no_a_c_g_or_t_is_refused_naming_the_feature():
    seqs = sequences_series().copy()
    seqs.iloc[4] = 'N' * 120
    with pytest.raises(ValueError, match=rf"1 of \d+ features in the table have a sequence "
                                         rf"with no A, C, G or T .*'{seqs.index[4]}'"):
        fit(table=table(), sequences=qiime2.Artifact.import_data('FeatureData[Sequence]', seqs),
            metadata=days(), **TINY, **SINGLE)


def test_sample_ids_with_non_ascii_letters_are_read():
    t = biom_table()
    new = {i: (f'{i}-Zürich' if k < 3 else i) for k, i in enumerate(t.ids('sample'))}
    renamed = qiime2.Artifact.import_data('FeatureTable[Frequency]',
                                          t.update_ids(new, axis='sample', inplace=False))
    md = qiime2.Metadata(metadata().to_dataframe().rename(index=new))
    model = fit(table=renamed, sequences=_seqs(), metadata=md.get_column(
        'days-since-experiment-start'), **TINY, **SINGLE).model
    got = predict(model=model, table=renamed, sequences=_seqs()).predictions.view(pd.Series)
    assert {f'{i}-Zürich' for i in list(t.ids('sample'))[:3]} <= set(got.index)
    assert np.isfinite(got).all()


# -- resuming: every setting that changes the result is compared ----------------------

def _resume_refused(folder, name, **changed):
    with pytest.raises(ValueError, match=rf'holds a run with other settings or data \(1 '
                                         rf'differ: {name}: '):
        fit(table=table(), sequences=rep_seqs(), **changed,
            **{**TINY_TRAIN, **SINGLE, 'checkpoint_dir': str(folder)})


@pytest.fixture(scope='module')
def encoder_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp('ck') / 'from-encoder'
    fit(table=table(), sequences=rep_seqs(), metadata=body_site(), pretrained=encoder(),
        **{**TINY_TRAIN, **SINGLE, 'checkpoint_dir': str(folder)})
    return folder


def test_a_resume_with_freeze_encoder_changed_is_refused(encoder_run):
    _resume_refused(encoder_run, 'freeze_encoder', metadata=body_site(),
                    pretrained=encoder(), freeze_encoder=True)


def test_a_resume_from_another_encoder_is_refused(encoder_run):
    other = pretrain(table=table(), sequences=rep_seqs(), distance_matrix=distances(),
                     **{**TINY, 'random_seed': 7}).model
    _resume_refused(encoder_run, 'pretrained', metadata=body_site(), pretrained=other)


def test_a_resume_with_continue_from_added_is_refused(tmp_path):
    folder = tmp_path / 'ck'
    settings = {**TINY, **SINGLE, 'checkpoint_dir': str(folder)}
    first = fit(table=table(), sequences=rep_seqs(), metadata=days(), **settings).model
    with pytest.raises(ValueError, match=r'\(1 differ: continue_from: None then, '):
        fit(table=table(), sequences=rep_seqs(), metadata=days(), continue_from=first,
            **{**TINY_TRAIN, **SINGLE, 'checkpoint_dir': str(folder)})


def test_a_resume_with_max_bp_or_another_setting_changed_is_refused(tmp_path):
    folder = tmp_path / 'ck'
    settings = {**TINY, **SINGLE, 'checkpoint_dir': str(folder)}
    fit(table=table(), sequences=rep_seqs(), metadata=days(), max_bp=100, **settings)
    # max_bp also changes what the data read (the tokens), so two things differ
    with pytest.raises(ValueError, match=r'\(2 differ: data: .*; max_bp: 100 then, 120 now\)'):
        fit(table=table(), sequences=rep_seqs(), metadata=days(),
            **{**settings, 'max_bp': 120})
    for name, value in (('dropout', 0.3), ('tree_weight', 0.0)):
        with pytest.raises(ValueError, match=rf'\(1 differ: {name}: '):
            fit(table=table(), sequences=rep_seqs(), metadata=days(),
                **{'max_bp': 100, **settings, name: value})


def test_max_bp_unlike_the_encoders_is_refused():
    short = pretrain(table=table(), sequences=rep_seqs(), distance_matrix=distances(),
                     max_bp=100, **TINY).model
    with pytest.raises(ValueError, match=r'differ from the pretrained encoder\'s .*max_bp=150 '
                                         r'\(encoder: 100\)'):
        fit(table=table(), sequences=rep_seqs(), metadata=days(), pretrained=short,
            max_bp=150, **TINY_TRAIN, **SINGLE)
    # pretrain's max_bp defaults to 150, so only another value can be told from the default
    with pytest.raises(ValueError, match=r'max_bp=120 \(encoder: 100\)'):
        pretrain(table=table(), sequences=rep_seqs(), distance_matrix=distances(),
                 pretrained=short, max_bp=120, **TINY_TRAIN)


# -- one run per checkpoint folder --------------------------------------------------

def test_a_second_run_on_a_held_folder_is_refused_and_the_first_is_left_intact(tmp_path):
    folder = tmp_path / 'ck'
    first = runstate.lock(folder)                 # a run that is still going
    (folder / 'run.json').write_text('{"theirs": 1}')
    try:
        with pytest.raises(ValueError, match=rf"checkpoint_dir '{folder}' is in use by a run "
                                             rf"that is still going \(process {os.getpid()} "):
            fit(table=table(), sequences=rep_seqs(), metadata=days(),
                **{**TINY, **SINGLE, 'checkpoint_dir': str(folder)})
        assert (folder / 'run.json').read_text() == '{"theirs": 1}'
        assert sorted(p.name for p in folder.iterdir()) == ['run.json', 'run.lock']
    finally:
        first.release()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    folder = tmp_path / 'ck'
    holder = subprocess.Popen([sys.executable, '-c', (
        'import sys, time; from q2_aam.engine import runstate; '
        f'lock = runstate.lock({str(folder)!r}); print("held", flush=True); time.sleep(600)')],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        with pytest.raises(ValueError, match=rf'in use by a run that is still going \(process '
                                             rf'{holder.pid} '):
            runstate.lock(folder)
    finally:
        holder.kill()                               # SIGKILL: no handler runs
        holder.wait()
    model = fit(table=table(), sequences=rep_seqs(), metadata=days(),
                **{**TINY, **SINGLE, 'checkpoint_dir': str(folder)}).model
    assert model.view(SavedModel).task == 'regression'


# -- a full disk ------------------------------------------------------------------------

def test_a_full_disk_is_named_leaves_no_temporary_file_and_the_run_resumes(tmp_path,
                                                                           monkeypatch):
    import torch
    settings = {**TINY, 'epochs': 3, 'ensemble_size': 2, 'blend': 'fixed'}
    whole = fit(table=table(), sequences=rep_seqs(), metadata=days(), **settings).model
    folder = tmp_path / 'ck'
    real_save, calls = torch.save, []

    def filling_save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 4:                       # the disk fills during the 4th write
            with open(f, 'wb') as fh:
                fh.write(b'partial')
            raise RuntimeError('[enforce fail at inline_container.cc:595] . unexpected pos')
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(runstate.torch, 'save', filling_save)
    import shutil
    monkeypatch.setattr(shutil, 'disk_usage', lambda path: type('U', (), {'free': 1000})())
    with pytest.raises(OSError, match=r"Could not write '.*\.pt': the disk is full \(1,000 "
                                      r"bytes free\)\. Nothing half-written was left behind"):
        fit(table=table(), sequences=rep_seqs(), metadata=days(),
            **{**settings, 'checkpoint_dir': str(folder)})
    monkeypatch.undo()
    assert not list(folder.rglob('*.tmp'))
    resumed = fit(table=table(), sequences=rep_seqs(), metadata=days(),
                  **{**settings, 'checkpoint_dir': str(folder)}).model.view(SavedModel)
    assert state_equal(resumed.state_dict, whole.view(SavedModel).state_dict)
