"""The q2-aam plugin: types, formats, transformers and actions.

Parameters are declared once, grouped by meaning, and spread into each action, so
that one setting has one type and one description everywhere (as q2-sample-classifier
does).
"""
import importlib

import qiime2.plugin
from qiime2.plugin import (Bool, Categorical, Choices, Citations, Float, Int, MetadataColumn,
                           Numeric, Plugin, Range, Str, TypeMap)
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
from .actions.pipelines import (FIT_PASSED, classify_samples, classify_samples_ncv,
                                regress_samples, regress_samples_ncv)
from .actions.predict import feature_importance, predict, predict_probabilities
from .actions.pretrain import pretrain
from .actions.plan import DEFAULTS, FIT_ARCHITECTURE
from ._formats import (AAMConfigFormat, AAMModelDirFmt, AAMTableFormat, AAMTreeFormat,
                       AAMWeightsFormat, TensorBoardEventsFormat)
from ._types import AAMClassifier, AAMEncoder, AAMModel, AAMRegressor
from ._visualizers import accuracy_report, plot_validation
from .engine.optim import OPTIMIZERS, SCHEDULERS

# Newer QIIME 2 has a Threads type (an integer or 'auto'); 2022.11 does not.
Threads = getattr(qiime2.plugin, 'Threads', Int % Range(0, None))

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

D = DEFAULTS


def _upto(low, high, kind=Int):
    """A closed range: every size and rate has an upper bound, so that an absurd value
    (10⁵ layers, a learning rate of 1e300) fails before any work, and Galaxy can show it."""
    return kind % Range(low, high, inclusive_end=True)


LOSS_WEIGHT = _upto(0.0, 1000.0, Float)

# -- parameters, grouped by meaning --------------------------------------------------
training = {
    'epochs': _upto(1, 100_000),
    'batch_size': _upto(2, 100_000),
    'learning_rate': Float % Range(0.0, 10.0, inclusive_start=False, inclusive_end=True),
    'weight_decay': _upto(0.0, 10.0, Float),
    'optimizer': Str % Choices(list(OPTIMIZERS)),
    'scheduler': Str % Choices(list(SCHEDULERS)),
    'scheduler_params': Str,
    'warmup_fraction': _upto(0.0, 1.0, Float),
    'patience': _upto(1, 100_000),
    'max_grad_norm': _upto(0.0, 1e6, Float),
    'validation_size': _upto(0.0, 0.5, Float),
    'nuc_mask_ratio': _upto(0.0, 0.5, Float),
    'unifrac_weight': LOSS_WEIGHT,
    'nuc_weight': LOSS_WEIGHT,
    'random_seed': _upto(0, 2 ** 31 - 1),
    'device': Str % Choices(['auto', 'cpu', 'cuda']),
    'threads': Threads,
    'tensorboard_dir': Str,
    'histogram_frequency': _upto(0, 100_000),
    'checkpoint_dir': Str,
    'max_asvs': _upto(1, 100_000),
    'processes': _upto(1, 64),
    'compile': Bool,
}
architecture = {
    'max_bp': _upto(10, 1024),
    'embedding_dim': _upto(8, 1024),
    'attention_heads': _upto(1, 64),
    'attention_layers': _upto(1, 48),
    'nucleotide_layers': _upto(0, 48),
    'dropout': Float % Range(0.0, 1.0),
    'kmer_size': _upto(0, 8),
}
fitting = {
    'freeze_encoder': Bool,
    'target_weight': LOSS_WEIGHT,
    'regression_loss': Str % Choices(['mse', 'huber']),
    'ignore_missing_samples': Bool,
    'ensemble_size': _upto(1, 20),
    'rarefy_depth': _upto(0, 10 ** 9),
    'blend': Str % Choices(['stacked', 'fixed']),
    'transformer_weight': Float % Range(0.0, 1000.0, inclusive_start=False,
                                        inclusive_end=True),
    'linear_weight': _upto(0.0, 1000.0, Float),
    'tree_weight': _upto(0.0, 1000.0, Float),
}
prediction = {
    'batch_size': _upto(1, 100_000),
    'device': training['device'],
    'threads': Threads,
}

descriptions = {
    'epochs': 'Most passes over the training samples. With validation samples, training '
              'stops earlier when their loss has not improved for `patience` epochs.',
    'batch_size': 'Samples per training step. UniFrac pairs are formed within a batch, so '
                  'it must be at least 2.',
    'learning_rate': 'Peak learning rate of the optimizer.',
    'weight_decay': 'Decoupled weight decay (regularisation) of weight matrices.',
    'optimizer': 'Optimizer: adamw (recommended), adam, sgd (momentum 0.9) or lion '
                 '(use a 3-10x smaller learning rate).',
    'scheduler': 'Learning-rate schedule: warmup_cosine (linear warm-up, cosine decay), '
                 'cosine, plateau (halve when validation stalls), onecycle, constant '
                 '(warm-up, then flat) or polynomial.',
    'scheduler_params': 'Extra schedule settings as a JSON object, e.g. '
                        '\'{"min_lr_ratio": 0.1}\'. Unknown keys are refused by name.',
    'warmup_fraction': 'Fraction of all training steps used to warm the learning rate up; '
                       'never longer than the run.',
    'patience': 'Epochs without improvement of the validation loss before training stops; '
                'the best epoch\'s weights are kept.',
    'max_grad_norm': 'Clip the gradient to this norm (0 = no clipping).',
    'validation_size': 'Fraction of samples held out to report on and to stop early '
                       'on: the weights of the epoch with the lowest validation loss are '
                       'kept (stratified by class for classifiers). 0 = none: every sample '
                       'trains for every epoch and the epoch with the lowest training loss '
                       'is kept.',
    'nuc_mask_ratio': 'Fraction of bases hidden and predicted (masked-nucleotide loss).',
    'unifrac_weight': 'Weight of the UniFrac loss (distances between sample vectors '
                      'against the distance matrix).',
    'nuc_weight': 'Weight of the masked-nucleotide loss (0 = off).',
    'random_seed': 'Seed of the split, the initial weights, the batches and masking; the '
                   'same seed on CPU gives the same model.',
    'device': 'Where to compute: auto (a CUDA GPU if there is one), cpu or cuda.',
    'threads': 'CPU threads for torch (0 = torch\'s default, all cores).',
    'tensorboard_dir': 'Optional folder for live TensorBoard logs while training: each run '
                       'writes into a new subfolder of its own. The run\'s logs are always '
                       'inside the model artifact too. In Galaxy, leave it empty.',
    'checkpoint_dir': 'Optional folder that keeps the run resumable: while training it holds '
                      'the best model so far, the last epoch\'s full state, the validation '
                      'figure (PNG) of every epoch that improved and the live TensorBoard '
                      'logs. Running the same command again after an interruption resumes '
                      'from it and ends with the same model as an uninterrupted run; a folder '
                      'of a run with other settings or data is refused. In Galaxy, leave it '
                      'empty.',
    'histogram_frequency': 'Write histograms of the weights and gradients to the TensorBoard '
                           'logs every this many epochs (0 = never). They cost little time '
                           'and make the logs larger.',
    'max_asvs': 'Keep each sample\'s most abundant ASVs, at most this many.',
    'max_bp': 'Read at most this many bases of each sequence; longer ones are truncated '
              'with a warning.',
    'embedding_dim': 'Width of the model\'s vectors.',
    'attention_heads': 'Attention heads per transformer layer (must divide embedding_dim).',
    'attention_layers': 'Transformer layers in the sample encoder (which reads a sample\'s '
                        'ASVs).',
    'nucleotide_layers': 'Transformer layers reading each ASV\'s bases. 0 = none: an ASV '
                         'is read as its k-mer profile alone (kmer_size), about five times '
                         'faster, and there is no masked-nucleotide loss. The model still '
                         'reads sequences, so new ASVs are still predicted.',
    'dropout': 'Dropout rate while training.',
    'kmer_size': 'Length of the k-mers whose profile is added to each ASV\'s vector '
                 '(0 = off). It tells ASVs apart from the start of training and keeps '
                 'related sequences close.',
    'processes': 'Train on this many processes at once through torchrun (torch\'s own '
                 'launcher), one per GPU when there are GPUs: each global batch of '
                 'batch_size samples is split between them, and the UniFrac loss still counts '
                 'every pair of the batch. The result is the model one process trains, within '
                 'float rounding. On CPUs it only pays with cores to spare for each process. '
                 'Not with checkpoint_dir. For several machines, see the README.',
    'compile': 'Compile the model\'s training steps with torch.compile (any batch shape). '
               'The first epoch then takes up to a minute longer, and on CPUs it may not '
               'pay at all (the README has figures): measure it on your GPU before long '
               'runs.',
    'freeze_encoder': 'Keep the pretrained encoder\'s weights fixed and train only the '
                      'prediction head (faster; needs `pretrained`).',
    'target_weight': 'Weight of the prediction loss.',
    'regression_loss': 'Loss on the standardised target: mse, or huber (less sensitive to '
                       'outliers).',
    'ensemble_size': 'Train this many models, each with its own seed (random_seed, '
                     'random_seed + 1, ...) and so its own initial weights, batch order '
                     'and read subsampling (with the stacked blend, each on all training '
                     'samples but its own fold), and average their '
                     'predictions. Each model costs a full training run; averaging '
                     'reduces the run-to-run variance that small studies suffer from. 1 = a '
                     'single model (the stacked blend then weighs its members equally).',
    'rarefy_depth': 'Each epoch, subsample every training sample\'s reads to about this '
                    'many (each read kept with probability depth / reads; 0 = off). An '
                    'augmentation: rare ASVs come and go between epochs, so the model '
                    'cannot lean on any one of them. Samples with fewer reads are used '
                    'whole; validation and prediction read every read.',
    'blend': 'How the members of the model are combined: its transformer ensemble, a '
             'penalised linear model on log relative abundance (ridge or logistic '
             'regression) and a random forest. stacked (recommended): every member predicts '
             'each training sample once from a fit that did not see it (the transformer '
             'members are cross-fitted, one fold each; with groups, whole groups per fold), '
             'and those out-of-fold predictions choose non-negative weights summing to 1 '
             '(a classifier\'s members and blend are calibrated on them too). The fit log, the model and plot-validation '
             'show each member\'s out-of-fold score and weight. fixed: the weights are '
             'transformer_weight, linear_weight and tree_weight, scaled to sum to 1, and '
             'every transformer member fits every training sample.',
    'transformer_weight': 'With blend fixed, the transformer ensemble\'s weight (relative '
                          'to the others). The transformer is always part of the model.',
    'linear_weight': 'With blend fixed, the linear member\'s weight (relative to the '
                     'others). 0 leaves the linear member out, with either blend.',
    'tree_weight': 'With blend fixed, the random forest\'s weight (relative to the others). '
                   '0 leaves the forest out, with either blend.',
    'ignore_missing_samples': 'Leave out table samples missing from the distance matrix '
                              '(with a note) instead of stopping with an error.',
}
IMPORTANCE_DESCRIPTION = (
    'One row per ASV: "importance" (the blend\'s) first, then each member\'s '
    '(transformer, linear, tree), sorted by the blend\'s; q2-sample-classifier\'s heatmap '
    'reads it.')
GROUPS_DESCRIPTION = (
    'Optional categorical column naming each sample\'s subject (a person, a mouse, a site '
    'sampled repeatedly). Folds then keep all samples of a subject on one side, so the '
    'stack is weighed on how well members predict new subjects, not how well they recognise '
    'known ones. Give it whenever subjects repeat. Every sample needs a value.')
fit_architecture_descriptions = {
    k: descriptions[k] + ' Default: the pretrained encoder\'s, else ' +
    str(FIT_ARCHITECTURE.get(k, D[k])) + '.' for k in architecture}
for k in ('embedding_dim', 'attention_heads', 'attention_layers', 'nucleotide_layers',
          'max_bp', 'kmer_size'):
    fit_architecture_descriptions[k] += ' Cannot differ from a pretrained encoder\'s.'

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
                         'samples the model was fitted on.'},
    name='Fit an AAM regressor or classifier to a metadata column',
    description='Trains the model to predict a metadata column from each sample\'s ASV '
                'sequences and abundances, optionally starting from a pretrained encoder. '
                'By default every sample trains for every epoch; with validation_size '
                'above 0 the held-out samples choose the epoch whose weights are kept. '
                'Each prediction blends the transformer ensemble\'s with a penalised linear '
                'model\'s and a random forest\'s, weighed by how well each predicted the '
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
                'member by the forest\'s impurity importance, the transformers by how far '
                'a sample\'s prediction moves when the ASV is taken out of it (the first '
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

pipeline_parameters = {
    'groups': MetadataColumn[Categorical],
    'test_size': Float % Range(0.0, 1.0, inclusive_start=False, inclusive_end=False),
    'cv': _upto(2, 100),
    'random_state': _upto(0, 2 ** 31 - 1),
    'stratify': Bool,
    'missing_samples': Str % Choices(['error', 'ignore']),
    **{k: (fitting if k in fitting else training)[k] for k in FIT_PASSED},
}
pipeline_descriptions = {
    'groups': GROUPS_DESCRIPTION + ' Every split keeps a group on one side.',
    'test_size': 'Fraction of the samples to test on (with groups: of the groups, so the '
                 'share of samples is near it, not exact).',
    'cv': 'Folds: every sample is predicted once, by a model fitted on the other folds '
          '(whole groups per fold with groups).',
    'random_state': 'Seed of the split and of fit (fit\'s random_seed).',
    'stratify': 'Regressors: keep the target\'s quintiles in proportion on each side '
                '(classifiers always stratify by class).',
    'missing_samples': 'Table samples without a metadata value: error stops, ignore leaves '
                       'them out with a note.',
    **{k: descriptions[k] for k in FIT_PASSED},
}
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
