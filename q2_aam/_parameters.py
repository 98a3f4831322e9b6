"""Every parameter of the plugin, declared once: its QIIME 2 type (with the closed range
Galaxy shows) and its description, grouped by meaning and spread into each action by
plugin_setup.py, as q2-sample-classifier does."""
import qiime2.plugin
from qiime2.plugin import Bool, Categorical, Choices, Float, Int, MetadataColumn, Range, Str

from .actions.pipelines import FIT_PASSED
from .actions.plan import DEFAULTS, FIT_ARCHITECTURE
from .engine.optim import OPTIMIZERS, SCHEDULERS

# Newer QIIME 2 has a Threads type (an integer or 'auto'); 2022.11 does not.
Threads = getattr(qiime2.plugin, 'Threads', Int % Range(0, None))
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
    'kmer_weight': _upto(0.0, 1000.0, Float),
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
             'regression), a random forest, and a penalised linear model on each sample\'s 5-mer '
             'profile (its ASVs\' 5-mers weighted by abundance, so a new strain is read through '
             'its relatives). stacked (recommended): every member predicts '
             'each training sample once from a fit that did not see it (the transformer '
             'members are cross-fitted, one fold each; with groups, whole groups per fold), '
             'and those out-of-fold predictions choose non-negative weights summing to 1 '
             '(a classifier\'s members and blend are calibrated on them too). The fit log, the model and plot-validation '
             'show each member\'s out-of-fold score and weight. fixed: the weights are '
             'transformer_weight, linear_weight, tree_weight and kmer_weight, scaled to sum '
             'to 1, and every transformer member fits every training sample.',
    'transformer_weight': 'With blend fixed, the transformer ensemble\'s weight (relative '
                          'to the others). The transformer is always part of the model.',
    'linear_weight': 'With blend fixed, the linear member\'s weight (relative to the '
                     'others). 0 leaves the linear member out, with either blend.',
    'tree_weight': 'With blend fixed, the random forest\'s weight (relative to the others). '
                   '0 leaves the forest out, with either blend.',
    'kmer_weight': 'With blend fixed, the k-mer member\'s weight (relative to the others). '
                   '0 leaves the k-mer member out, with either blend.',
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
