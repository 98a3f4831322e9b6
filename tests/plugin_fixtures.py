"""Shared inputs and tiny trained models for the plugin tests (QIIME 2 layer).

Training is the expensive part, so every model here is trained once per test session
(``functools.lru_cache``) and shared by all plugin test modules, whichever imports it
first. Models are tiny (width 16, 2 heads, 1 layer, 32 ASVs per sample, 1 epoch): the
tests check the plumbing, not accuracy.
"""
import functools
import importlib.resources
import zipfile
from pathlib import Path

import biom
import numpy as np
import pandas as pd
import qiime2
import torch

# The test machines have 2 cores shared by several jobs: torch's default of one thread
# per core spins and runs ~5x slower there than a single thread. Actions run with
# threads=0 (torch's choice) keep this setting.
torch.set_num_threads(1)

DATA = Path(str(importlib.resources.files('q2_aam') / 'data' / 'moving-pictures'))
# the project's shared real data sits beside the checkout (../shared/data) when it exists
SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'

TINY_ARCH = dict(embedding_dim=16, attention_heads=2, attention_layers=1)
# validation_size 0.2 (pretrain's default; fit's is 0) so that tests see validation tables
TINY_TRAIN = dict(epochs=1, batch_size=8, max_asvs=32, random_seed=1, device='cpu',
                  threads=1, validation_size=0.2)
TINY = {**TINY_ARCH, **TINY_TRAIN}
SINGLE = {'ensemble_size': 1}        # fit's default trains an ensemble; most tests want one
# the same settings as q2cli options
TINY_CLI = [f'--p-{k.replace("_", "-")}={v}' for k, v in TINY.items()]
TINY_TRAIN_CLI = [f'--p-{k.replace("_", "-")}={v}' for k, v in TINY_TRAIN.items()]


@functools.lru_cache(maxsize=None)
def table():
    return qiime2.Artifact.load(str(DATA / 'table.qza'))


@functools.lru_cache(maxsize=None)
def rep_seqs():
    return qiime2.Artifact.load(str(DATA / 'rep-seqs.qza'))


@functools.lru_cache(maxsize=None)
def distances():
    return qiime2.Artifact.load(str(DATA / 'unweighted-unifrac.qza'))


@functools.lru_cache(maxsize=None)
def metadata():
    return qiime2.Metadata.load(str(DATA / 'metadata.tsv'))


def body_site():
    return metadata().get_column('body-site')


def days():
    return metadata().get_column('days-since-experiment-start')


@functools.lru_cache(maxsize=None)
def held_out_ids():
    """The bundled held-out samples (7 of 34)."""
    return [line.strip() for line in (DATA / 'test-ids.body-site.txt').read_text().splitlines()
            if line.strip() and line.strip() != 'sample-id']


def biom_table():
    return table().view(biom.Table)


def sequences_series():
    return rep_seqs().view(pd.Series)


def table_artifact(t):
    return qiime2.Artifact.import_data('FeatureTable[Frequency]', t)


def sequences_artifact(series):
    return qiime2.Artifact.import_data('FeatureData[Sequence]', series)


@functools.lru_cache(maxsize=None)
def split():
    """(train table, train sequences, test table, test sequences): the training half is
    filtered to its own features, so the test half has ASVs the models never saw."""
    t = biom_table()
    held_out = set(held_out_ids())
    train = t.filter(lambda v, i, m: i not in held_out, axis='sample', inplace=False)
    train = train.remove_empty(axis='observation', inplace=False)
    test = t.filter(lambda v, i, m: i in held_out, axis='sample', inplace=False)
    test = test.remove_empty(axis='observation', inplace=False)
    seqs = sequences_series()
    train_seqs = seqs[list(train.ids('observation'))]
    test_seqs = seqs[list(test.ids('observation'))]
    return (table_artifact(train), sequences_artifact(train_seqs),
            table_artifact(test), sequences_artifact(test_seqs))


@functools.lru_cache(maxsize=None)
def deep_test_table():
    """The held-out half with each sample's most abundant ASV read 200 times as often: a
    deep sample (about a million reads) whose other ASVs fall below one read in 2,000,
    fit's default rarefy_depth, so the read floor of a fitted model leaves them out."""
    _, _, test_table, _ = split()
    t = test_table.view(biom.Table)
    dense = t.matrix_data.toarray()                                 # features x samples
    top = dense.argmax(axis=0)
    dense[top, np.arange(dense.shape[1])] *= 200
    return table_artifact(biom.Table(dense, t.ids('observation'), t.ids('sample')))


def _pretrain(**kwargs):
    from qiime2.plugins.aam.methods import pretrain
    return pretrain(table=table(), sequences=rep_seqs(), distance_matrix=distances(),
                    **{**TINY, **kwargs}).model


def _fit(column, **kwargs):
    """Fit one model (unless ensemble_size says otherwise) on the training half; from a
    pretrained encoder the architecture is its own."""
    from qiime2.plugins.aam.methods import fit
    train_table, train_seqs, _, _ = split()
    settings = TINY_TRAIN if kwargs.get('pretrained') is not None else TINY
    return fit(table=train_table, sequences=train_seqs, metadata=column,
               **{**settings, **SINGLE, **kwargs}).model


@functools.lru_cache(maxsize=None)
def encoder():
    """AAMModel[AAMEncoder] pretrained on all 34 samples."""
    return _pretrain()


@functools.lru_cache(maxsize=None)
def classifier():
    """AAMModel[AAMClassifier] of body-site, fitted from ``encoder()`` on the training half."""
    return _fit(body_site(), pretrained=encoder())


@functools.lru_cache(maxsize=None)
def regressor():
    """AAMModel[AAMRegressor] of days-since-experiment-start, from scratch, training half."""
    return _fit(days())


@functools.lru_cache(maxsize=None)
def regressor_predictions():
    from qiime2.plugins.aam.methods import predict
    _, _, test_table, test_seqs = split()
    return predict(model=regressor(), table=test_table, sequences=test_seqs,
                   device='cpu').predictions


def model_folder(artifact, directory):
    """Export a model artifact to a plain folder (what `qiime tools export` gives)."""
    directory = Path(directory)
    artifact.export_data(str(directory))
    return directory


def action_yaml(artifact_path):
    """The provenance action.yaml of a saved artifact, as text."""
    with zipfile.ZipFile(artifact_path) as z:
        name, = [n for n in z.namelist()
                 if n.count('/') == 3 and n.endswith('/provenance/action/action.yaml')]
        return z.read(name).decode()


def state_equal(a, b):
    """Same keys and bit-identical tensors."""
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def observed_features():
    """An alpha-diversity vector (number of ASVs per sample)."""
    t = biom_table()
    values = (t.matrix_data > 0).sum(axis=0)
    return pd.Series(np.asarray(values).ravel().astype(float), index=list(t.ids('sample')),
                     name='observed_features')
