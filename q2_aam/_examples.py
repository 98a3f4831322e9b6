"""Usage examples for every action, built from the bundled moving-pictures data.

They run for real (q2galaxy turns them into tool tests, `--example-data` writes their
inputs), so the models are tiny and train for two epochs.
"""
import importlib.resources

import qiime2

DATA = 'moving-pictures'
TINY = dict(epochs=2, batch_size=8, embedding_dim=16, attention_heads=2, attention_layers=1,
            max_asvs=64, random_seed=1)


def _path(name):
    return importlib.resources.files('q2_aam') / 'data' / DATA / name


def _artifact(name):
    def factory():
        with importlib.resources.as_file(_path(name)) as path:
            return qiime2.Artifact.load(str(path))
    return factory


def _metadata():
    with importlib.resources.as_file(_path('metadata.tsv')) as path:
        return qiime2.Metadata.load(str(path))


def _inputs(use):
    table = use.init_artifact('table', _artifact('table.qza'))
    sequences = use.init_artifact('rep_seqs', _artifact('rep-seqs.qza'))
    return table, sequences


def _pretrained(use, table, sequences):
    distances = use.init_artifact('unweighted_unifrac', _artifact('unweighted-unifrac.qza'))
    encoder, = use.action(
        use.UsageAction('aam', 'pretrain'),
        use.UsageInputs(table=table, sequences=sequences, distance_matrix=distances, **TINY),
        use.UsageOutputNames(model='encoder'))
    return encoder


def _classifier(use, table, sequences, encoder):
    metadata = use.init_metadata('sample_metadata', _metadata)
    body_site = use.get_metadata_column('body_site', 'body-site', metadata)
    tiny = {k: v for k, v in TINY.items()
            if k not in ('embedding_dim', 'attention_heads', 'attention_layers')}
    classifier, = use.action(
        use.UsageAction('aam', 'fit'),
        use.UsageInputs(table=table, sequences=sequences, metadata=body_site,
                        pretrained=encoder, **tiny),
        use.UsageOutputNames(model='classifier'))
    return classifier


def pretrain(use):
    table, sequences = _inputs(use)
    encoder = _pretrained(use, table, sequences)
    encoder.assert_output_type('AAMModel[AAMEncoder]')


def fit(use):
    table, sequences = _inputs(use)
    classifier = _classifier(use, table, sequences, _pretrained(use, table, sequences))
    classifier.assert_output_type('AAMModel[AAMClassifier]')


def predict(use):
    table, sequences = _inputs(use)
    classifier = _classifier(use, table, sequences, _pretrained(use, table, sequences))
    predictions, = use.action(
        use.UsageAction('aam', 'predict'),
        use.UsageInputs(model=classifier, table=table, sequences=sequences),
        use.UsageOutputNames(predictions='predictions'))
    predictions.assert_output_type('SampleData[ClassifierPredictions]')


def predict_probabilities(use):
    table, sequences = _inputs(use)
    classifier = _classifier(use, table, sequences, _pretrained(use, table, sequences))
    probabilities, = use.action(
        use.UsageAction('aam', 'predict_probabilities'),
        use.UsageInputs(model=classifier, table=table, sequences=sequences),
        use.UsageOutputNames(probabilities='probabilities'))
    probabilities.assert_output_type('SampleData[Probabilities]')


def plot_validation(use):
    table, sequences = _inputs(use)
    classifier = _classifier(use, table, sequences, _pretrained(use, table, sequences))
    use.action(
        use.UsageAction('aam', 'plot_validation'),
        use.UsageInputs(model=classifier),
        use.UsageOutputNames(visualization='classifier_validation'))
