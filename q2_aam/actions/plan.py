"""A run's settings plan: the action's arguments resolved once into one immutable record.

Why one record: what a checkpoint folder fingerprints, what a resume compares, and what the
artifact's training record writes must be the same thing, or a changed command resumes and
writes false provenance. The plan holds every setting as the run will use it (the
architecture of the encoder started from, the ensemble size of the model continued, max_bp,
freeze_encoder) and the identity of the models a run starts from. Nothing changes it after
``make_plan``; a derived plan is a new one (``Plan.replace``).
"""
import dataclasses
import types

from ..engine import optim, savedmodel
from ..engine.model import AAMConfig, parameter_count
from ..engine.runstate import fingerprint_state
from ..engine.runtime import resolve_device
from ..engine.trainer import TrainSettings

# The defaults, in one place: the actions' signatures, plugin_setup's help and the
# pipelines read them here. A small model that trains in minutes on two CPU cores for a
# few hundred samples (the public AAM's 128 x 4 heads x 4 layers is a
# `--p-embedding-dim 128 --p-attention-layers 4` away, for a GPU).
DEFAULTS = dict(
    epochs=60, batch_size=16, learning_rate=3e-3, weight_decay=0.01, optimizer='adamw',
    scheduler='warmup_cosine', scheduler_params='{}', warmup_fraction=0.1, patience=10,
    max_grad_norm=1.0, validation_size=0.2, max_asvs=128, max_bp=150, embedding_dim=32,
    attention_heads=4, attention_layers=1, nucleotide_layers=1, dropout=0.1, kmer_size=6,
    nuc_mask_ratio=0.15,
    unifrac_weight=1.0, nuc_weight=1.0, target_weight=1.0, regression_loss='mse',
    random_seed=0, device='auto', threads=0, tensorboard_dir='', checkpoint_dir='',
    histogram_frequency=50, processes=1, compile=False,
    ensemble_size=5,
    rarefy_depth=2000, blend='stacked', transformer_weight=1.0, linear_weight=1.0,
    tree_weight=1.0, kmer_weight=1.0,
)
D = DEFAULTS
# fitting leaves the masked-nucleotide loss to pretraining (it costs time, the target pays)
FIT_NUC_WEIGHT = 0.0
# fitting uses every sample for every epoch: early stopping on a fifth of the training
# subjects stopped members far too early on small studies
FIT_VALIDATION_SIZE = 0.0
# fitting from scratch reads each ASV through its k-mer profile alone: without pretraining
# to train it, the nucleotide transformer cost most of a fit's time and raised no score
FIT_NUCLEOTIDE_LAYERS = 0
ARCHITECTURE = ('embedding_dim', 'attention_heads', 'attention_layers', 'nucleotide_layers',
                'dropout', 'kmer_size')
# what fit builds when neither the user nor a pretrained encoder sets a value
FIT_ARCHITECTURE = {**{k: DEFAULTS[k] for k in ARCHITECTURE},
                    'nucleotide_layers': FIT_NUCLEOTIDE_LAYERS}
# settings that change where or how fast a run goes, not what it computes: a resumed run
# may change them
NOT_FINGERPRINTED = ('checkpoint_dir', 'tensorboard_dir', 'threads', 'device',
                     'histogram_frequency', 'processes', 'compile')


@dataclasses.dataclass(frozen=True)
class Plan:
    """``settings``: every parameter of the action as the run uses it (read as
    ``plan['epochs']``); ``starts_from``: a digest of the weights of the pretrained encoder
    and of the model continued (None where there is none)."""
    action: str
    settings: types.MappingProxyType
    starts_from: types.MappingProxyType

    def __getitem__(self, name):
        return self.settings[name]

    def get(self, name, default=None):
        return self.settings.get(name, default)

    def replace(self, **settings):
        return Plan(self.action, types.MappingProxyType({**self.settings, **settings}),
                    self.starts_from)

    def fingerprint(self):
        """What a checkpoint folder compares before it resumes: every setting that changes
        the result, and the models started from."""
        return {'action': self.action, **dict(self.starts_from),
                **{k: v for k, v in sorted(self.settings.items())
                   if k not in NOT_FINGERPRINTED}}

    def record(self):
        """The artifact's training record (config.json 'training'); the actions add which
        models the run started from."""
        return {**dict(self.settings), 'scheduler_params': optim.parse_scheduler_params(
            self.settings['scheduler_params'])}


def _digest(model):
    return None if model is None else fingerprint_state(model.state_dict)


def make_plan(action, arguments, pretrained=None, continue_from=None, distances=True):
    """The plan of ``pretrain`` or ``fit`` from its arguments, checked before any data is
    read. ``distances``: whether a UniFrac source was given (without one the UniFrac loss
    is 0, and the plan says so)."""
    settings = dict(arguments)
    start = pretrained if continue_from is None else continue_from
    if action == 'pretrain' and start is None:
        arch, max_bp = {k: settings[k] for k in ARCHITECTURE}, settings['max_bp']
    elif action == 'pretrain':
        # explicit settings that differ from the defaults must match the encoder's
        given = {k: settings[k] for k in ARCHITECTURE + ('max_bp',) if settings[k] != D[k]}
        arch, max_bp = architecture({'max_bp': None, **given}, start)
    else:
        arch, max_bp = architecture(settings, start,
                                    kind='encoder' if continue_from is None else 'fitted')
        if continue_from is not None:
            settings['ensemble_size'] = continue_from.ensemble_size
    settings.update(arch, max_bp=max_bp)
    if not distances:
        settings['unifrac_weight'] = 0.0
    check_size(arch, max_bp, settings.get('ensemble_size', 1))
    plan = Plan(action, types.MappingProxyType(settings), types.MappingProxyType(
        {'pretrained': _digest(pretrained), 'continue_from': _digest(continue_from)}))
    train_settings(plan)                 # every setting is checked before any work
    return plan


def architecture(settings, start, kind='encoder'):
    """The run's architecture and max_bp: the starting model's (a pretrained encoder, or a
    fitted model to continue), which explicit settings must match; else the defaults."""
    if start is None:
        return {k: (FIT_ARCHITECTURE[k] if settings.get(k) is None else settings[k])
                for k in ARCHITECTURE}, \
            (D['max_bp'] if settings.get('max_bp') is None else settings['max_bp'])
    if kind == 'encoder' and start.task != 'encoder':
        raise ValueError(f'The pretrained model is a {start.task} model; start a fit '
                         'from an encoder made by `qiime aam pretrain`.')
    # an encoder saved before nucleotide_layers existed read bases with attention_layers
    base = {'nucleotide_layers': None, **start.config['model']}
    effective = {**base, 'nucleotide_layers': AAMConfig(**base).asv_layers}
    effective['max_bp'] = start.config['max_bp']
    clashes = [f'{k}={settings[k]} (encoder: {effective[k]})'
               for k in ARCHITECTURE + ('max_bp',)
               if settings.get(k) is not None and k != 'dropout' and settings[k] != effective[k]]
    if clashes:
        raise ValueError('These settings differ from the pretrained encoder\'s and cannot be '
                         f'changed when starting from it: {", ".join(clashes)}. Leave them '
                         'unset to use the encoder\'s.')
    arch = {k: base[k] for k in ARCHITECTURE}
    if settings.get('dropout') is not None:
        arch['dropout'] = settings['dropout']
    return arch, start.config['max_bp']


def check_size(arch, max_bp, members=1):
    """Refuse, before reading any data, a model too large to hold: each setting is within
    its range, but 48 layers of width 1024 times 20 members is not."""
    try:
        cfg = AAMConfig(max_bp=max_bp, **arch)
    except ValueError as e:
        raise ValueError(f'These model settings do not describe a model: {e}') from None
    each = parameter_count(cfg)
    if each * members > savedmodel.MAX_PARAMETERS:
        raise ValueError(
            f'These settings ask for {members} model(s) of {each:,} parameters, '
            f'{each * members:,} in all, more than the {savedmodel.MAX_PARAMETERS:,} q2-aam '
            'trains. Lower embedding_dim, attention_layers, nucleotide_layers or ensemble_size.')


def threads(value):
    """0 or 'auto' (newer QIIME 2's Threads) leave torch's own choice."""
    return None if value in (0, 'auto', None) else int(value)


def read_floor(plan):
    """The relative abundance below which a fitted model's predictions leave an ASV out:
    one read in ``rarefy_depth``, what an epoch's subsample seldom showed it (0: training
    read whole samples, and so does prediction)."""
    depth = plan.get('rarefy_depth') or 0
    return 1.0 / depth if depth else 0.0


def train_settings(plan, **run):
    """The engine's TrainSettings for this plan; ``run`` adds what belongs to one run, not
    to the plan (its TensorBoard folder, a regressor's target scale)."""
    resolve_device(plan['device'])                  # 'cuda' without a GPU fails here
    params = optim.parse_scheduler_params(plan['scheduler_params'])
    optim._check_params(plan['scheduler'], params)  # unknown keys fail before training
    fitting = {k: plan[k] for k in ('freeze_encoder', 'target_weight', 'regression_loss',
                                    'rarefy_depth') if k in plan.settings}
    return TrainSettings(
        epochs=plan['epochs'], batch_size=plan['batch_size'],
        learning_rate=plan['learning_rate'], weight_decay=plan['weight_decay'],
        optimizer=plan['optimizer'], scheduler=plan['scheduler'], scheduler_params=params,
        warmup_fraction=plan['warmup_fraction'], patience=plan['patience'],
        max_grad_norm=plan['max_grad_norm'] or None, nuc_mask_ratio=plan['nuc_mask_ratio'],
        unifrac_weight=plan['unifrac_weight'], nuc_weight=plan['nuc_weight'],
        random_seed=plan['random_seed'], device=plan['device'],
        threads=threads(plan['threads']), histogram_frequency=plan['histogram_frequency'],
        compile='inductor' if plan.get('compile') else None, **fitting,
        **{'quiet': False, **run})
