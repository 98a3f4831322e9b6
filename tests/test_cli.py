"""q2cli: `qiime aam ...` as a user types it, in a subprocess.

q2cli caches every plugin's signature and refreshes that cache only when a package
*version* changes, so a stale cache would test yesterday's signatures. These tests give
q2cli a private, empty config folder (XDG_CONFIG_HOME), so its first call builds a
fresh cache from the code as it is now; the user's own cache is never touched.
"""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import qiime2

from plugin_fixtures import DATA, TINY_CLI, TINY_TRAIN_CLI, held_out_ids, split

QIIME = Path(sys.executable).parent / 'qiime'
pytestmark = pytest.mark.skipif(not QIIME.exists(), reason=f'{QIIME} is not installed')


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    environment = dict(os.environ)
    environment.pop('CONDA_PREFIX', None)      # else q2cli keeps its cache in the env
    environment['XDG_CONFIG_HOME'] = str(tmp_path_factory.mktemp('q2cli-config'))
    environment['OMP_NUM_THREADS'] = '1'       # 2 shared cores: one torch thread is fastest
    return environment


@pytest.fixture(scope='module')
def qiime(env, tmp_path_factory):
    """Runs one q2cli command, each in a TMPDIR of its own: rachis 2026.4 (Python 3.12)
    leaves its cache lock held when a process exits, and the next process in the same
    TMPDIR waited 3 minutes for it."""
    def run(*args, cwd=None, check=True):
        own = dict(env, TMPDIR=str(tmp_path_factory.mktemp('q2cli-tmp')))
        result = subprocess.run([str(QIIME), *map(str, args)], cwd=cwd, env=own,
                                capture_output=True, text=True, timeout=600)
        if check and result.returncode != 0:
            pytest.fail(f'qiime {" ".join(map(str, args))} exited {result.returncode}:\n'
                        f'{result.stdout}\n{result.stderr}')
        return result
    return run


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """The bundled data, plus the training / held-out halves as files."""
    folder = tmp_path_factory.mktemp('cli')
    train_table, train_seqs, test_table, test_seqs = split()
    train_table.save(str(folder / 'train-table.qza'))
    train_seqs.save(str(folder / 'train-seqs.qza'))
    test_table.save(str(folder / 'test-table.qza'))
    test_seqs.save(str(folder / 'test-seqs.qza'))
    return folder


def test_info_lists_aam(qiime):
    out = qiime('info').stdout
    assert 'aam: ' in out


def test_aam_help_lists_the_actions(qiime):
    out = qiime('aam', '--help').stdout
    for command in ('pretrain', 'fit', 'predict', 'predict-probabilities', 'plot-validation',
                    'feature-importance', 'accuracy-report', 'classify-samples',
                    'regress-samples', 'classify-samples-ncv', 'regress-samples-ncv'):
        assert f'  {command} ' in out, command
    assert 'Sequence-aware transformers' in out or 'AAM' in out


def test_classify_samples_speaks_q2_sample_classifiers_options(qiime):
    out = qiime('aam', 'classify-samples', '--help').stdout
    for option in ('--i-table', '--i-sequences', '--m-metadata-file', '--m-metadata-column',
                   '--m-groups-file', '--m-groups-column', '--p-test-size', '--p-random-state',
                   '--p-missing-samples', '--o-model', '--o-predictions', '--o-probabilities',
                   '--o-feature-importance', '--o-accuracy-results', '--o-training-targets',
                   '--o-test-targets'):
        assert option in out, option
    out = qiime('aam', 'regress-samples-ncv', '--help').stdout
    for option in ('--p-cv', '--p-stratify', '--o-predictions', '--o-feature-importance'):
        assert option in out, option
    assert '--o-probabilities' not in out


def test_fit_help(qiime):
    out = qiime('aam', 'fit', '--help').stdout
    for option in ('--i-table', '--i-sequences', '--i-pretrained', '--i-distance-matrix',
                   '--m-metadata-file', '--m-metadata-column', '--p-freeze-encoder',
                   '--p-scheduler-params', '--p-device', '--p-random-seed', '--o-model',
                   '--example-data', '--m-groups-file', '--m-groups-column', '--p-blend'):
        assert option in out, option
    # the metadata column is a real column option, not free text
    assert '--p-metadata ' not in out
    assert 'MetadataColumn[Numeric' in out and 'Categorical' in out


def test_pretrain_fit_predict_plot(qiime, workspace):
    cwd = workspace
    result = qiime('aam', 'pretrain', '--i-table', DATA / 'table.qza',
                   '--i-sequences', DATA / 'rep-seqs.qza',
                   '--i-distance-matrix', DATA / 'unweighted-unifrac.qza',
                   *TINY_CLI, '--o-model', 'encoder.qza', '--verbose', cwd=cwd)
    assert 'q2-aam: training on 27 samples, validating on 7' in result.stdout
    assert 'Saved AAMModel[AAMEncoder] to: encoder.qza' in result.stdout
    assert 'epoch 1/1' in result.stdout + result.stderr         # the per-epoch summary

    result = qiime('aam', 'fit', '--i-table', 'train-table.qza', '--i-sequences',
                   'train-seqs.qza', '--m-metadata-file', DATA / 'metadata.tsv',
                   '--m-metadata-column', 'body-site', '--i-pretrained', 'encoder.qza',
                   *TINY_TRAIN_CLI, '--o-model', 'classifier.qza',
                   '--o-feature-importance', 'importance.qza', cwd=cwd)
    assert 'Saved AAMModel[AAMClassifier] to: classifier.qza' in result.stdout
    # fit explains itself as q2-sample-classifier's fit-classifier does: one row per ASV
    assert 'Saved FeatureData[Importance] to: importance.qza' in result.stdout
    importance = qiime2.Artifact.load(str(cwd / 'importance.qza')).view(pd.DataFrame)
    assert list(importance.columns[:2]) == ['importance', 'transformer']
    assert importance['importance'].is_monotonic_decreasing and len(importance) > 100

    result = qiime('aam', 'fit', '--i-table', 'train-table.qza', '--i-sequences',
                   'train-seqs.qza', '--m-metadata-file', DATA / 'metadata.tsv',
                   '--m-metadata-column', 'days-since-experiment-start',
                   '--i-pretrained', 'encoder.qza', '--p-freeze-encoder',
                   *TINY_TRAIN_CLI, '--output-dir', 'regressor', cwd=cwd)
    assert 'Saved AAMModel[AAMRegressor] to: regressor/model.qza' in result.stdout
    assert 'Saved FeatureData[Importance] to: regressor/feature_importance.qza' in result.stdout

    result = qiime('aam', 'predict', '--i-model', 'classifier.qza', '--i-table',
                   'test-table.qza', '--i-sequences', 'test-seqs.qza', '--p-device', 'cpu',
                   '--o-predictions', 'predictions.qza', cwd=cwd)
    assert 'Saved SampleData[ClassifierPredictions] to: predictions.qza' in result.stdout
    predictions = qiime2.Artifact.load(str(cwd / 'predictions.qza'))
    series = predictions.view(pd.Series)
    assert sorted(series.index) == sorted(held_out_ids())
    assert set(series) <= {'gut', 'left palm', 'right palm', 'tongue'}

    result = qiime('aam', 'plot-validation', '--i-model', 'classifier.qza',
                   '--o-visualization', 'classifier.qzv', cwd=cwd)
    assert 'Saved Visualization to: classifier.qzv' in result.stdout
    exported = cwd / 'classifier-viz'
    qiime2.Visualization.load(str(cwd / 'classifier.qzv')).export_data(str(exported))
    assert {'index.html', 'validation.png', 'losses.png', 'validation.tsv',
            'history.tsv'} <= {p.name for p in exported.iterdir()}


def test_plugin_error_is_printed_and_exits_non_zero(qiime, workspace):
    result = qiime('aam', 'fit', '--i-table', DATA / 'table.qza',
                   '--i-sequences', DATA / 'rep-seqs.qza',
                   '--m-metadata-file', DATA / 'metadata.tsv',
                   '--m-metadata-column', 'days-since-experiment-start',
                   *TINY_CLI, '--p-scheduler-params', '{"min_lr_ratio": 0.1',
                   '--o-model', 'never.qza', '--o-feature-importance', 'never-importance.qza',
                   cwd=workspace, check=False)
    assert result.returncode != 0
    assert 'Plugin error from aam:' in result.stderr
    assert 'scheduler settings' in result.stderr and 'are not valid JSON' in result.stderr
    assert not (workspace / 'never.qza').exists()


def test_example_data(qiime, tmp_path):
    # q2cli 2022.11 has --example-data (checked in test_fit_help); it writes the inputs
    # of every usage example of the action into a folder named after the example.
    target = tmp_path / 'examples'
    result = qiime('aam', 'fit', '--example-data', target)
    folder = target / 'fit-classifier'
    # one action per example: fit's inputs are the data and a tiny encoder from a factory
    assert {'table.qza', 'rep-seqs.qza', 'encoder.qza',
            'sample-metadata.tsv'} <= {p.name for p in folder.iterdir()}, result.stdout
    assert str(qiime2.Artifact.load(str(folder / 'encoder.qza')).type) == \
        'AAMModel[AAMEncoder]'
    assert 'body-site' in (folder / 'sample-metadata.tsv').read_text()
    assert str(qiime2.Artifact.load(str(folder / 'table.qza')).type) == \
        'FeatureTable[Frequency]'
    assert str(qiime2.Artifact.load(str(folder / 'rep-seqs.qza')).type) == \
        'FeatureData[Sequence]'
