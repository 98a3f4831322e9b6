"""The q2-aam plugin: types, formats, transformers and actions.

Registration only. Parameters are declared once in _parameters.py, grouped by meaning,
and spread into each action here, so that one setting has one type and one description
everywhere (as q2-sample-classifier does).
"""
import importlib

from qiime2.plugin import (Categorical, Citations, MetadataColumn, Numeric, Plugin, TypeMap)
from q2_types.distance_matrix import DistanceMatrix
from q2_types.feature_data import FeatureData, Sequence
from q2_types.feature_table import FeatureTable, Frequency
from q2_types.sample_data import AlphaDiversity, SampleData
from q2_types.tree import Phylogeny, Rooted
from q2_sample_classifier import (ClassifierPredictions, Importance, Probabilities,
                                  RegressorPredictions, TrueTargets)
from qiime2.plugin import Visualization

from . import __version__, _examples
from .actions.fit import fit
from .actions.pipelines import (classify_samples, classify_samples_ncv, regress_samples,
                                regress_samples_ncv)
from .actions.predict import feature_importance, predict, predict_probabilities
from .actions.pretrain import pretrain
from ._formats import (AAMConfigFormat, AAMModelDirFmt, AAMTableFormat, AAMTreeFormat,
                       AAMWeightsFormat, TensorBoardEventsFormat)
from ._types import AAMClassifier, AAMEncoder, AAMModel, AAMRegressor
from ._visualizers import accuracy_report, plot_validation
from ._parameters import (GROUPS_DESCRIPTION, IMPORTANCE_DESCRIPTION, architecture,
                          descriptions, fit_architecture_descriptions, fitting,
                          pipeline_descriptions, pipeline_parameters, prediction, training)

citations = Citations.load('citations.bib', package='q2_aam')
ENGINE_CITATIONS = [citations['cantrell_aam'], citations['vaswani2017attention'],
                    citations['paszke2019pytorch']]

plugin = Plugin(
    name='aam',
    version=__version__,
    website='https://github.com/q2-aam/q2-aam',
    package='q2_aam',
    citations=[citations['bolyen2019qiime2']],
    description=(
        'AAM ("Attention All Microbes") is a transformer that reads the DNA sequence of every '
        'ASV in a sample together with its abundance and summarises the sample as one vector. '
        'Pretrain it on UniFrac distances without metadata, fit it to predict a metadata '
        'column (regression or classification), and apply it to new samples, including '
        'samples with ASVs it never saw.'),
    short_description='Sequence-aware transformers that predict sample metadata.',
)

inputs_common = {'table': FeatureTable[Frequency], 'sequences': FeatureData[Sequence]}
input_descriptions_common = {
    'table': 'Feature table of raw read counts.',
    'sequences': 'The DNA sequence of every feature in the table (e.g. DADA2 or Deblur '
                 'representative sequences).',
}
model_description = ('The trained model with its configuration, training history, '
                     'validation predictions and TensorBoard logs.')

# -- actions -------------------------------------------------------------------------
plugin.methods.register_function(
    function=pretrain,
    inputs={**inputs_common, 'distance_matrix': DistanceMatrix, 'phylogeny': Phylogeny[Rooted],
            'alpha_diversity': SampleData[AlphaDiversity], 'pretrained': AAMModel[AAMEncoder]},
    parameters={**training, **architecture,
                'ignore_missing_samples': fitting['ignore_missing_samples']},
    outputs=[('model', AAMModel[AAMEncoder])],
    input_descriptions={
        **input_descriptions_common,
        'distance_matrix': 'Distances between the samples (unweighted or weighted UniFrac, '
                           'Bray-Curtis, ...): the model learns to reproduce them. Give this '
                           'or phylogeny.',
        'phylogeny': 'Instead of distance_matrix: the rooted tree of the ASVs. Each '
                     'batch\'s unweighted UniFrac distances are computed from it when the '
                     'batch is drawn (Striped UniFrac, as q2-diversity computes them), so no '
                     'matrix of all samples is ever built: memory grows with the table, not '
                     'with the square of its samples. For studies too large for a matrix.',
        'alpha_diversity': 'Optional per-sample alpha diversity (e.g. Faith PD) to predict '
                           'as an extra pretraining target.',
        'pretrained': 'Optional encoder to go on training (e.g. on more samples as a study '
                      'grows): its architecture and weights are the start.'},
    parameter_descriptions={k: descriptions[k] for k in
                            {**training, **architecture, 'ignore_missing_samples': 0}},
    output_descriptions={'model': 'A pretrained encoder. ' + model_description},
    name='Pretrain an AAM encoder on sample distances',
    description='Self-supervised pretraining: the distance between two samples\' vectors '
                'learns to match their distance in the matrix, while masked bases of each '
                'ASV are predicted. No metadata is needed. Use the result as `pretrained` '
                'in `fit`.',
    citations=ENGINE_CITATIONS + [citations['lozupone2005unifrac']],
    examples={'pretrain': _examples.pretrain},
)

# The type variable sits inside MetadataColumn[...] (not around it) so that q2cli still
# recognises a metadata column and offers --m-metadata-file/--m-metadata-column.
T_column, T_model = TypeMap({
    Numeric: AAMModel[AAMRegressor],
    Categorical: AAMModel[AAMClassifier],
})

plugin.methods.register_function(
    function=fit,
    inputs={**inputs_common, 'pretrained': AAMModel[AAMEncoder],
            'distance_matrix': DistanceMatrix,
            'continue_from': AAMModel[AAMRegressor | AAMClassifier]},
    parameters={'metadata': MetadataColumn[T_column], 'groups': MetadataColumn[Categorical],
                **training, **architecture, **fitting},
    outputs=[('model', T_model), ('feature_importance', FeatureData[Importance])],
    input_descriptions={
        **input_descriptions_common,
        'pretrained': 'An encoder from `pretrain` to start from (its architecture is '
                      'used). Optional: it pays most when labels are scarce and it was '
                      'pretrained on every sample of the study, labelled or not.',
        'distance_matrix': 'Optional distances between samples: keeps the UniFrac loss on '
                           'while fitting.',
        'continue_from': 'Optional fitted model of the same kind to train further, e.g. on '
                         'a study that has grown: every member goes on from its weights, a '
                         'regressor keeps its target scale and a classifier its classes (new '
                         'samples may only have classes it knows).'},
    parameter_descriptions={
        'metadata': 'The metadata column to predict: a numeric column gives a regressor, a '
                    'categorical column a classifier. Samples without a value are left '
                    'out with a note.',
        'groups': GROUPS_DESCRIPTION,
        **{k: descriptions[k] for k in training},
        'validation_size': descriptions['validation_size'] + ' fit\'s default is 0: on '
                           'small studies, early stopping on a fifth of the samples stops '
                           'too early and predicts worse; pretrain\'s is 0.2. With groups, '
                           'whole groups are held out.',
        **fit_architecture_descriptions,
        **{k: descriptions[k] for k in fitting}},
    output_descriptions={'model': 'A fitted regressor or classifier. ' + model_description,
                         'feature_importance': IMPORTANCE_DESCRIPTION + ' Measured over the '
                         'samples of the table fit was given (those without a metadata '
                         'value too).'},
    name='Fit an AAM regressor or classifier to a metadata column',
    description='Trains the model to predict a metadata column from each sample\'s ASV '
                'sequences and abundances, optionally starting from a pretrained encoder. '
                'By default every sample trains for every epoch; with validation_size '
                'above 0 the held-out samples choose the epoch whose weights are kept. '
                'Each prediction blends the transformer ensemble\'s with a penalised linear '
                'model\'s, a random forest\'s and a penalised linear model\'s on the '
                'samples\' 5-mer profiles, weighed by how well each predicted the '
                'training samples it did not see (blend).',
    citations=ENGINE_CITATIONS,
    examples={'fit_classifier': _examples.fit},
)

T_fitted, T_predictions = TypeMap({
    AAMModel[AAMRegressor]: SampleData[RegressorPredictions],
    AAMModel[AAMClassifier]: SampleData[ClassifierPredictions],
})
prediction_descriptions = {
    'batch_size': 'Samples per prediction step (more is faster and uses more memory).',
    'device': descriptions['device'], 'threads': descriptions['threads']}

plugin.methods.register_function(
    function=predict,
    inputs={'model': T_fitted, **inputs_common},
    parameters=prediction,
    outputs=[('predictions', T_predictions)],
    input_descriptions={'model': 'A model from `fit`.', **input_descriptions_common},
    parameter_descriptions=prediction_descriptions,
    output_descriptions={'predictions': 'One prediction per sample (use `qiime '
                                        'sample-classifier scatterplot` or '
                                        '`confusion-matrix` to compare with the truth).'},
    name='Predict a metadata column for new samples',
    description='Applies a fitted model to a table. Samples may contain ASVs the model '
                'never saw: it reads their sequences.',
    citations=ENGINE_CITATIONS,
    examples={'predict': _examples.predict},
)

plugin.methods.register_function(
    function=predict_probabilities,
    inputs={'model': AAMModel[AAMClassifier], **inputs_common},
    parameters=prediction,
    outputs=[('probabilities', SampleData[Probabilities])],
    input_descriptions={'model': 'A classifier from `fit`.', **input_descriptions_common},
    parameter_descriptions=prediction_descriptions,
    output_descriptions={'probabilities': 'Each sample\'s probability of every class.'},
    name='Predict class probabilities for new samples',
    description='Applies a fitted classifier to a table and reports the probability of '
                'every class (for ROC curves or `qiime metadata tabulate`).',
    citations=ENGINE_CITATIONS,
    examples={'predict_probabilities': _examples.predict_probabilities},
)

plugin.visualizers.register_function(
    function=plot_validation,
    inputs={'model': AAMModel[AAMEncoder | AAMRegressor | AAMClassifier]},
    parameters={},
    input_descriptions={'model': 'Any q2-aam model.'},
    name='Plot a model\'s validation results and training curves',
    description='Shows the best epoch\'s validation figure (predicted against true values '
                'with a fit line, R² and 1:1 line; a confusion matrix with accuracy, '
                'precision, recall and F1; or predicted against true UniFrac distances), the '
                'training and validation loss per epoch, and the metrics, with '
                'validation.tsv and history.tsv to download.',
    citations=[],
    examples={'plot_validation': _examples.plot_validation},
)

plugin.methods.register_function(
    function=feature_importance,
    inputs={'model': AAMModel[AAMRegressor | AAMClassifier], **inputs_common},
    parameters={},
    outputs=[('feature_importance', FeatureData[Importance])],
    input_descriptions={'model': 'A model from `fit`.',
                        'table': 'The samples to explain the model over: its training '
                                 'samples, to read what it learnt.',
                        'sequences': input_descriptions_common['sequences']},
    parameter_descriptions={},
    output_descriptions={'feature_importance': IMPORTANCE_DESCRIPTION},
    name='How much each ASV matters to each member of a model',
    description='Ranks the ASVs of a table by how much the model leans on them: the '
                'linear member by its coefficients on standardised log abundance, the tree '
                'member by the forest\'s impurity importance, the k-mer member by how much '
                'each ASV\'s 5-mers move its output across the samples, the transformers by '
                'how far a sample\'s prediction moves when the ASV is taken out of it (the first '
                'member, averaged over the samples), and the blend (column '
                '"importance") by the members\' importances, each scaled to sum to 1, '
                'weighed by the stack\'s weights. These rank what the model uses; they are '
                'not causes, and correlated ASVs share credit unevenly.',
    citations=ENGINE_CITATIONS,
    examples={'feature_importance': _examples.feature_importance},
)

plugin.visualizers.register_function(
    function=accuracy_report,
    inputs={'predictions': SampleData[ClassifierPredictions | RegressorPredictions],
            'baseline_predictions': SampleData[ClassifierPredictions | RegressorPredictions],
            'probabilities': SampleData[Probabilities],
            'baseline_probabilities': SampleData[Probabilities],
            'training_targets': SampleData[TrueTargets]},
    parameters={'truth': MetadataColumn[Numeric | Categorical],
                'groups': MetadataColumn[Categorical]},
    input_descriptions={
        'predictions': 'q2-aam\'s predictions of test samples.',
        'baseline_predictions': 'Optional predictions of the same samples by another model '
                                '(the pipelines give q2-sample-classifier\'s default random '
                                'forest, fitted on the same training samples).',
        'probabilities': 'Optional class probabilities of q2-aam (for the ROC curves).',
        'baseline_probabilities': 'Optional class probabilities of the other model.',
        'training_targets': 'Optional training samples (to count groups on each side).'},
    parameter_descriptions={
        'truth': 'The true values of the predicted samples.',
        'groups': 'Optional subjects: intervals then resample whole subjects, and the '
                  'report counts them on each side.'},
    name='Accuracy of predictions, beside a random forest on the same split',
    description='Scores test predictions (accuracy and AUROC, or R² and MAE) with 95 % '
                'bootstrap intervals, beside a second model\'s on the same samples, with '
                'the paired difference, confusion matrices or predicted-against-true plots, '
                'ROC curves and, for grouped splits, how many groups are on each side.',
    citations=[],
    examples={'accuracy_report': _examples.accuracy_report},
)

pipeline_inputs = {**inputs_common, 'pretrained': AAMModel[AAMEncoder]}
pipeline_input_descriptions = {
    **input_descriptions_common,
    'pretrained': 'Optional encoder from `pretrain` for every fit (see `fit`).'}
common_outputs = {
    'feature_importance': IMPORTANCE_DESCRIPTION,
    'accuracy_results': 'The test scores of q2-aam and of q2-sample-classifier\'s default '
                        'random forest on the same split, with 95 % intervals.',
    'training_targets': 'The true values of the training samples.',
    'test_targets': 'The true values of the test samples.'}


def _register_pipeline(function, task, ncv):
    classifier_ = task == 'classification'
    predictions = SampleData[ClassifierPredictions if classifier_ else RegressorPredictions]
    outputs = ([] if ncv else [('model', AAMModel[AAMClassifier if classifier_
                                                  else AAMRegressor])])
    outputs.append(('predictions', predictions))
    if classifier_:
        outputs.append(('probabilities', SampleData[Probabilities]))
    outputs += [('feature_importance', FeatureData[Importance]),
                ('accuracy_results', Visualization)]
    if not ncv:
        outputs += [('training_targets', SampleData[TrueTargets]),
                    ('test_targets', SampleData[TrueTargets])]
    params = {k: v for k, v in pipeline_parameters.items()
              if not (k == 'stratify' and classifier_) and k != ('test_size' if ncv else 'cv')}
    params['metadata'] = MetadataColumn[Categorical if classifier_ else Numeric]
    word = 'classifier' if classifier_ else 'regressor'
    how = ('every sample is predicted once by a model fitted on the other folds' if ncv else
           'the samples are split into training and test samples')
    plugin.pipelines.register_function(
        function=function, inputs=pipeline_inputs, parameters=params, outputs=outputs,
        input_descriptions=pipeline_input_descriptions,
        parameter_descriptions={
            'metadata': f'The {"categorical" if classifier_ else "numeric"} metadata column '
                        'to predict.',
            **{k: pipeline_descriptions[k] for k in params if k != 'metadata'}},
        output_descriptions={k: v for k, v in {
            'model': f'The q2-aam {word} fitted on the training samples.',
            'predictions': ('Out-of-fold predictions of every sample.' if ncv else
                            'Predictions of the test samples.'),
            'probabilities': 'Class probabilities of the same samples.',
            **common_outputs}.items() if k in dict(outputs)},
        name=(f'Predict {"categories" if classifier_ else "a number"} with q2-aam, '
              f'{"every sample predicted out of fold" if ncv else "split, fit, test"}'),
        description=(f'q2-sample-classifier\'s {function.__name__.replace("_", "-")} '
                     f'workflow with q2-aam\'s fit: {how}'
                     f'{"" if ncv else " (stratified by class)" if classifier_ else ""}; with '
                     '`groups`, whole subjects stay on one side, so the score is that of new '
                     'subjects. The report puts q2-sample-classifier\'s default random forest, '
                     'fitted on the same training samples, beside it.'),
        citations=ENGINE_CITATIONS,
        examples={function.__name__: getattr(_examples, function.__name__)},
    )


for _function, _task, _ncv in ((classify_samples, 'classification', False),
                               (regress_samples, 'regression', False),
                               (classify_samples_ncv, 'classification', True),
                               (regress_samples_ncv, 'regression', True)):
    _register_pipeline(_function, _task, _ncv)

# -- types, formats, transformers -----------------------------------------------------
plugin.register_semantic_types(AAMModel, AAMEncoder, AAMRegressor, AAMClassifier)
plugin.register_formats(AAMConfigFormat, AAMWeightsFormat, AAMTableFormat, AAMTreeFormat,
                        TensorBoardEventsFormat, AAMModelDirFmt)
for _variant in (AAMEncoder, AAMRegressor, AAMClassifier):
    if hasattr(plugin, 'register_artifact_class'):
        plugin.register_artifact_class(AAMModel[_variant], directory_format=AAMModelDirFmt)
    else:
        plugin.register_semantic_type_to_format(AAMModel[_variant],
                                                directory_format=AAMModelDirFmt)
importlib.import_module('q2_aam._transformers')
importlib.import_module('q2_aam._validators')
