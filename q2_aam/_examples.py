"""Usage examples for every action, built from the bundled moving-pictures data.

They run for real (q2galaxy turns them into tool tests, `--example-data` writes their
inputs), so the models are tiny and train for two epochs. Each example calls exactly one
action; a model it needs comes from a factory that trains a tiny one.
"""
import functools
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


@functools.lru_cache(maxsize=None)
def _tiny_encoder():
    """An encoder trained for two epochs in the factory itself: each example runs one action,
    so that q2galaxy writes one test per tool whose inputs all exist in test-data/."""
    from qiime2.plugins.aam.methods import pretrain
    return pretrain(table=_artifact('table.qza')(), sequences=_artifact('rep-seqs.qza')(),
                    distance_matrix=_artifact('unweighted-unifrac.qza')(), **TINY).model


@functools.lru_cache(maxsize=None)
def _tiny_classifier():
    from qiime2.plugins.aam.methods import fit
    column = _metadata().get_column('body-site')
    return fit(table=_artifact('table.qza')(), sequences=_artifact('rep-seqs.qza')(),
               metadata=column, ensemble_size=1, **TINY).model


def _classifier(use):
    return use.init_artifact('classifier', _tiny_classifier)


def pretrain(use):
    table, sequences = _inputs(use)
    distances = use.init_artifact('unweighted_unifrac', _artifact('unweighted-unifrac.qza'))
    encoder, = use.action(
        use.UsageAction('aam', 'pretrain'),
        use.UsageInputs(table=table, sequences=sequences, distance_matrix=distances, **TINY),
        use.UsageOutputNames(model='encoder'))
    encoder.assert_output_type('AAMModel[AAMEncoder]')


def fit(use):
    table, sequences = _inputs(use)
    encoder = use.init_artifact('encoder', _tiny_encoder)
    metadata = use.init_metadata('sample_metadata', _metadata)
    body_site = use.get_metadata_column('body_site', 'body-site', metadata)
    tiny = {k: v for k, v in TINY.items()      # the architecture is the encoder's
            if k not in ('embedding_dim', 'attention_heads', 'attention_layers')}
    classifier, importance = use.action(
        use.UsageAction('aam', 'fit'),
        use.UsageInputs(table=table, sequences=sequences, metadata=body_site,
                        pretrained=encoder, ensemble_size=1, **tiny),
        use.UsageOutputNames(model='classifier', feature_importance='importance'))
    classifier.assert_output_type('AAMModel[AAMClassifier]')
    importance.assert_output_type('FeatureData[Importance]')


def predict(use):
    table, sequences = _inputs(use)
    predictions, = use.action(
        use.UsageAction('aam', 'predict'),
        use.UsageInputs(model=_classifier(use), table=table, sequences=sequences),
        use.UsageOutputNames(predictions='predictions'))
    predictions.assert_output_type('SampleData[ClassifierPredictions]')


def predict_probabilities(use):
    table, sequences = _inputs(use)
    probabilities, = use.action(
        use.UsageAction('aam', 'predict_probabilities'),
        use.UsageInputs(model=_classifier(use), table=table, sequences=sequences),
        use.UsageOutputNames(probabilities='probabilities'))
    probabilities.assert_output_type('SampleData[Probabilities]')


def plot_validation(use):
    use.action(
        use.UsageAction('aam', 'plot_validation'),
        use.UsageInputs(model=_classifier(use)),
        use.UsageOutputNames(visualization='classifier_validation'))


def feature_importance(use):
    table, sequences = _inputs(use)
    importance, = use.action(
        use.UsageAction('aam', 'feature_importance'),
        use.UsageInputs(model=_classifier(use), table=table, sequences=sequences),
        use.UsageOutputNames(feature_importance='importance'))
    importance.assert_output_type('FeatureData[Importance]')


@functools.lru_cache(maxsize=None)
def _tiny_predictions():
    from qiime2.plugins.aam.methods import predict
    return predict(model=_tiny_classifier(), table=_artifact('table.qza')(),
                   sequences=_artifact('rep-seqs.qza')()).predictions


def accuracy_report(use):
    predictions = use.init_artifact('predictions', _tiny_predictions)
    metadata = use.init_metadata('sample_metadata', _metadata)
    body_site = use.get_metadata_column('body_site', 'body-site', metadata)
    use.action(
        use.UsageAction('aam', 'accuracy_report'),
        use.UsageInputs(predictions=predictions, truth=body_site),
        use.UsageOutputNames(visualization='accuracy'))


# the pipelines fit two tiny members (the stack needs two folds); with a study of many
# subjects, pass groups=subject to keep each subject on one side (this one has two)
PIPELINE = dict(epochs=2, ensemble_size=2, max_asvs=64, random_state=1)


def _pipeline(use, action, column, ncv):
    table, sequences = _inputs(use)
    metadata = use.init_metadata('sample_metadata', _metadata)
    target = use.get_metadata_column(column.replace('-', '_'), column, metadata)
    classifier_ = column == 'body-site'
    names = dict(predictions='predictions', feature_importance='importance',
                 accuracy_results='accuracy_results')
    if classifier_:
        names['probabilities'] = 'probabilities'
    if not ncv:
        names.update(model='model', training_targets='training_targets',
                     test_targets='test_targets')
    extra = dict(cv=2) if ncv else dict(test_size=0.5)
    results = use.action(
        use.UsageAction('aam', action),
        use.UsageInputs(table=table, sequences=sequences, metadata=target, **PIPELINE,
                        **extra),
        use.UsageOutputNames(**names))
    results.predictions.assert_output_type(
        'SampleData[ClassifierPredictions]' if classifier_ else 'SampleData[RegressorPredictions]')


def classify_samples(use):
    _pipeline(use, 'classify_samples', 'body-site', ncv=False)


def regress_samples(use):
    _pipeline(use, 'regress_samples', 'days-since-experiment-start', ncv=False)


def classify_samples_ncv(use):
    _pipeline(use, 'classify_samples_ncv', 'body-site', ncv=True)


def regress_samples_ncv(use):
    _pipeline(use, 'regress_samples_ncv', 'days-since-experiment-start', ncv=True)
