"""A trained model on disk: config.json + model.pt + history.tsv + validation.tsv + tensorboard/,
and linear.tsv / tree.npz / kmers.npz when the model has a linear / tree / k-mer member
(engine/linear.py, engine/trees.py, engine/kmers.py).

``SavedModel`` is the one in-memory object the QIIME 2 artifact converts to and from.
Loading never unpickles code: ``model.pt`` is read with ``torch.load(weights_only=True)``
and must be a flat mapping of names to tensors that matches the config's architecture.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .kmers import KmerModel, check_kmers
from .linear import PSEUDO_ABUNDANCE, LinearModel
from .stack import check_stack_config
from .trees import TreeModel, check_trees
from .model import AAM, AAMConfig, parameter_count
from .runtime import read_files
from .tokens import VOCAB

FORMAT_VERSION = 1
# the most parameters a model file may describe, all ensemble members together (4 GB of
# float32): far above any trained model, far below what crashes a machine while allocating
MAX_PARAMETERS = 10 ** 9
FILES = ('config.json', 'model.pt', 'history.tsv', 'validation.tsv')
TENSORBOARD_DIR = 'tensorboard'
LINEAR_FILE = 'linear.tsv'
TREE_FILE = 'tree.npz'
TREE_ARRAYS = ('sequences', 'roots', 'left', 'right', 'feature', 'threshold', 'value')
KMER_FILE = 'kmers.npz'
KMER_ARRAYS = ('k', 'mean', 'scale', 'coef', 'intercept', 'penalty')


class ModelFileError(ValueError):
    """A model folder that cannot be read back as a model; the message says why."""


@dataclass
class SavedModel:
    """Everything a fitted model needs to predict, explain itself and be trained further.

    ``config`` is the content of config.json: ``model`` (the AAMConfig as a dict),
    ``task``, ``labels`` (classifier), ``target_mean``/``target_std`` (regressor),
    ``max_asvs``, ``max_bp``, ``vocabulary``, ``training`` (the settings used),
    ``versions`` and ``linear`` (the linear half's weight, penalty and intercept, or None).
    ``linear`` holds that half's coefficients, one row per sequence (linear.tsv);
    ``stack`` (fitted since stacking) the members' weights and calibrations, and ``tree``
    the tree member's nodes (tree.npz), ``kmers`` the k-mer member's coefficients
    (kmers.npz). ``read_floor`` (fitted since it was added): the
    relative abundance below which prediction leaves a sample's ASV out (absent: none).
    """
    config: dict
    state_dict: dict
    history: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({'epoch': []}))
    validation: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        {'truth': [], 'prediction': []}, index=pd.Index([], name='sample-id')))
    tensorboard: dict = field(default_factory=dict)   # relative path -> bytes
    linear: LinearModel = None
    tree: TreeModel = None
    kmers: KmerModel = None
    # the task its container says it holds (a QIIME 2 artifact's type), where known; not saved
    declared_task: str = None

    @property
    def task(self):
        return self.config['task']

    @property
    def model_config(self):
        return AAMConfig.from_dict(self.config['model'])

    @property
    def ensemble_size(self):
        return ensemble_size(self.config)

    def member_states(self):
        """One state dict per fitted model (one, unless fit trained an ensemble)."""
        return unpack_members(self.state_dict, self.ensemble_size)

    def build_models(self):
        """Torch models with these weights, in eval mode: one per ensemble member."""
        models = []
        for state in self.member_states():
            model = AAM(self.model_config)
            model.load_state_dict(state)
            models.append(model.eval())
        return models


MEMBER_PREFIX = 'members.'


def ensemble_size(config):
    """Models whose predictions a saved model averages (config.json's ensemble_size)."""
    return int(config.get('ensemble_size', 1))


def pack_members(states):
    """Several state dicts -> the one flat mapping model.pt holds.

    A single model keeps its plain parameter names, so a one-model file reads as before;
    member i of an ensemble is stored under 'members.<i>.<name>'.
    """
    if len(states) == 1:
        return dict(states[0])
    return {f'{MEMBER_PREFIX}{i}.{name}': tensor
            for i, state in enumerate(states) for name, tensor in state.items()}


def unpack_members(state, size):
    """The inverse of pack_members."""
    if size == 1:
        return [state]
    members = [{} for _ in range(size)]
    for key, tensor in state.items():
        index, name = key[len(MEMBER_PREFIX):].split('.', 1)
        members[int(index)][name] = tensor
    return members


def make_config(model_config: AAMConfig, max_asvs, max_bp, training=None, labels=None,
                target_mean=None, target_std=None, extra=None):
    """The config.json content of a model; versions are filled in here."""
    from .. import __version__
    config = {
        'format_version': FORMAT_VERSION,
        'task': model_config.task,
        'model': model_config.to_dict(),
        'max_asvs': int(max_asvs),
        'max_bp': int(max_bp),
        'vocabulary': dict(VOCAB),
        'labels': None if labels is None else [str(x) for x in labels],
        'target_mean': target_mean,
        'target_std': target_std,
        'training': dict(training or {}),
        'versions': {'q2-aam': __version__, 'torch': torch.__version__.split('+')[0]},
    }
    config.update(extra or {})
    return config


def save(saved: SavedModel, directory):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / 'config.json').write_text(json.dumps(saved.config, indent=2, sort_keys=True))
    torch.save({k: v.detach().cpu().contiguous() for k, v in saved.state_dict.items()},
               directory / 'model.pt')
    saved.history.to_csv(directory / 'history.tsv', sep='\t', index=False)
    validation = saved.validation.copy()
    validation.index.name = 'sample-id'
    validation.to_csv(directory / 'validation.tsv', sep='\t')
    if saved.linear is not None:
        write_linear(saved.linear, saved.config, directory / LINEAR_FILE)
    if saved.tree is not None:
        write_tree(saved.tree, directory / TREE_FILE)
    if saved.kmers is not None:
        write_kmers(saved.kmers, directory / KMER_FILE)
    tb = directory / TENSORBOARD_DIR
    tb.mkdir(exist_ok=True)
    for relative, content in saved.tensorboard.items():
        target = tb / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def read_config(directory):
    """config.json, checked: valid JSON, a known format version, a readable architecture."""
    path = Path(directory) / 'config.json'
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelFileError(f'config.json is not valid JSON ({e.msg} at line {e.lineno}); '
                             'the model folder is damaged: train the model again.') from None
    if not isinstance(config, dict):
        raise ModelFileError('config.json must hold a JSON object.')
    version = config.get('format_version')
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f'config.json has format_version {version!r}, but this q2-aam reads version '
            f'{FORMAT_VERSION}. Use the q2-aam release that wrote this model, or train again.')
    missing = [k for k in ('task', 'model', 'max_asvs', 'max_bp') if k not in config]
    if missing:
        raise ModelFileError(f'config.json lacks {", ".join(missing)}.')
    try:
        model_config = AAMConfig.from_dict(config['model'])
    except (TypeError, ValueError) as e:
        raise ModelFileError(f'config.json describes no valid model: {e}') from None
    if model_config.task != config['task']:
        raise ModelFileError(f"config.json says task {config['task']!r} but its model "
                             f'settings say {model_config.task!r}.')
    size = config.get('ensemble_size', 1)
    for name, value in (('max_asvs', config['max_asvs']), ('max_bp', config['max_bp']),
                        ('ensemble_size', size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelFileError(f'config.json: {name} must be a whole number of at least 1, '
                                 f'not {value!r}.')
    parameters = parameter_count(model_config)
    if parameters * size > MAX_PARAMETERS:
        raise ModelFileError(
            f'config.json describes {size} model(s) of {parameters:,} parameters each, '
            f'{parameters * size:,} in all, more than the {MAX_PARAMETERS:,} q2-aam loads; '
            'the file is damaged or not a q2-aam model. Nothing was allocated.')
    if size > 1 and config['task'] not in ('regression', 'classification'):
        raise ModelFileError(f"config.json: only a regressor or classifier can be an "
                             f"ensemble, but this {config['task']!r} model has "
                             f'ensemble_size {size}.')
    if config['task'] == 'classification':
        labels = config.get('labels')
        if not isinstance(labels, list) or len(labels) != model_config.n_outputs or \
                not all(isinstance(x, str) for x in labels):
            raise ModelFileError('config.json: a classifier needs one label per output '
                                 f'({model_config.n_outputs}), each a string; found {labels!r}.')
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ModelFileError(f'config.json: labels must be unique, but {twice} '
                                 'appear more than once.')
    if config.get('vocabulary', VOCAB) != dict(VOCAB):
        raise ModelFileError(f'config.json: the token vocabulary {config.get("vocabulary")!r} '
                             f'is not the one this q2-aam reads ({dict(VOCAB)!r}); the model '
                             'would misread every sequence. Use the q2-aam release that wrote '
                             'it, or train again.')
    if config['task'] == 'regression':
        _check_target_scale(config.get('target_mean'), config.get('target_std'))
    floor = config.get('read_floor', 0.0)
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or \
            not 0.0 <= floor < 1.0:
        raise ModelFileError(f'config.json: read_floor must be a relative abundance in '
                             f'[0, 1), not {floor!r}.')
    _check_calibration(config.get('calibration'), config['task'], model_config.n_outputs)
    _check_linear_config(config.get('linear'), config['task'])
    if config.get('stack') is not None:
        if config['task'] not in ('regression', 'classification'):
            raise ModelFileError(f"config.json: only a regressor or classifier has a stack, "
                                 f"but this {config['task']!r} model has one.")
        try:
            check_stack_config(config['stack'], config['task'], model_config.n_outputs)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f'config.json: the stack is not usable: {e}') from None
        if 'linear' in config['stack']['members'] and config.get('linear') is None:
            raise ModelFileError('config.json: the stack weighs a linear member, but the '
                                 'model has no linear half.')
    return config


def _check_target_scale(mean, std):
    """A regressor's predictions are outputs * target_std + target_mean: both must be
    finite numbers, and the scale positive, or every prediction is wrong."""
    for name, value in (('target_mean', mean), ('target_std', std)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise ModelFileError(f'config.json: a regressor needs a finite number {name}, '
                                 f'not {value!r}.')
    if std <= 0:
        raise ModelFileError(f'config.json: target_std must be above 0, not {std!r}.')


def _check_calibration(calibration, task, n_outputs):
    """A classifier's calibration: a positive finite temperature, one bias per class."""
    if calibration is None:
        return
    if task != 'classification':
        raise ModelFileError(f'config.json: only a classifier is calibrated, but this {task!r} '
                             'model has a calibration.')
    try:
        temperature = float(calibration['temperature'])
        bias = [float(b) for b in calibration['bias']]
    except (KeyError, TypeError, ValueError):
        raise ModelFileError('config.json: calibration needs a number "temperature" and a '
                             f'list of numbers "bias"; found {calibration!r}.') from None
    if not (math.isfinite(temperature) and temperature > 0) or len(bias) != n_outputs or \
            not all(math.isfinite(b) for b in bias):
        raise ModelFileError(f'config.json: calibration needs a positive temperature and '
                             f'{n_outputs} finite biases (one per class); found temperature '
                             f'{temperature} and {len(bias)} biases.')


def linear_config(linear, weight):
    """config.json's record of a linear half: its share of each prediction and the
    numbers that are not per sequence (linear.tsv holds those)."""
    return {'weight': float(weight), 'features': len(linear.sequences),
            'penalty': linear.penalty if math.isfinite(linear.penalty) else None,
            'intercept': [float(b) for b in linear.intercept],
            'pseudo_abundance': PSEUDO_ABUNDANCE}


def _output_names(config):
    return ['coefficient'] if config['task'] == 'regression' else list(config['labels'])


def write_linear(linear, config, path):
    table = pd.DataFrame(linear.coef, columns=_output_names(config),
                         index=pd.Index(linear.sequences, name='sequence'))
    table.to_csv(path, sep='\t', float_format='%.17g')


def _check_linear_config(linear, task):
    """config.json's ``linear``: a weight in [0, 1], finite intercepts, a feature count."""
    if linear is None:
        return
    if task not in ('regression', 'classification'):
        raise ModelFileError(f'config.json: only a regressor or classifier has a linear half, '
                             f'but this {task!r} model has one.')
    try:
        weight, features = float(linear['weight']), linear['features']
        intercept = [float(b) for b in linear['intercept']]
        pseudo = float(linear['pseudo_abundance'])
    except (KeyError, TypeError, ValueError):
        raise ModelFileError('config.json: linear needs a number "weight", a whole number '
                             '"features", a list of numbers "intercept" and a number '
                             f'"pseudo_abundance"; found {linear!r}.') from None
    if not 0 <= weight <= 1:
        raise ModelFileError(f'config.json: linear weight must be between 0 and 1, not {weight}.')
    if not isinstance(features, int) or isinstance(features, bool) or features < 0:
        raise ModelFileError(f'config.json: linear features must be a whole number, not '
                             f'{features!r}.')
    if not all(math.isfinite(b) for b in intercept) or not (math.isfinite(pseudo) and
                                                            pseudo > 0):
        raise ModelFileError('config.json: the linear half\'s intercept and pseudo_abundance '
                             f'must be finite (and pseudo_abundance above 0); found {linear!r}.')


def write_tree(tree, path):
    """tree.npz: plain arrays (no pickled objects), read back with allow_pickle=False."""
    with open(path, 'wb') as fh:
        np.savez_compressed(fh, sequences=np.asarray(tree.sequences, dtype=str),
                            roots=tree.roots, left=tree.left, right=tree.right,
                            feature=tree.feature, threshold=tree.threshold, value=tree.value,
                            importance=tree.importance)


def _member_file(directory, name, wanted, described, unused):
    """The path of a member's file, or None when the config wants none; a file the config
    describes but lacks, or holds without describing, is refused by name."""
    path = Path(directory) / name
    if not wanted:
        if path.exists():
            raise ModelFileError(f'{name} is present, but {unused}; the model folder is '
                                 'inconsistent.')
        return None
    if not path.is_file():
        raise ModelFileError(f'{described}, but {name} is missing; the model folder is '
                             'damaged: train the model again.')
    return path


def _read_arrays(path, required, optional=()):
    """A member's .npz as {name: array}, without unpickling: every ``required`` array, and
    each ``optional`` one it holds; a missing array or an unreadable file is refused by
    the file's name."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in required if k not in arrays.files]
            if missing:
                raise ModelFileError(f'{path.name} lacks the arrays {", ".join(missing)}.')
            return {k: arrays[k] for k in tuple(required) + tuple(optional)
                    if k in arrays.files}
    except ModelFileError:
        raise
    except Exception as e:        # a truncated zip, bad bytes, object arrays refused
        raise ModelFileError(f'{path.name} cannot be read as arrays ({type(e).__name__}: '
                             f'{e}); the model folder is damaged: train the model again.') \
            from None


def read_tree(directory, config):
    """tree.npz back as a TreeModel, checked: the arrays of a forest whose every node and
    feature index is in range, present exactly when the stack weighs a tree member."""
    path = _member_file(directory, TREE_FILE,
                        'tree' in ((config.get('stack') or {}).get('members') or []),
                        "config.json's stack weighs a tree member",
                        "config.json's stack has no tree member to use it")
    if path is None:
        return None
    a = _read_arrays(path, TREE_ARRAYS, optional=('importance',))
    try:
        tree = TreeModel(config['task'], [str(x) for x in a['sequences'].ravel()],
                         *(a[k].astype(np.int64, casting='safe') for k in
                           ('roots', 'left', 'right', 'feature')),
                         a['threshold'].astype(np.float64, casting='safe'),
                         np.atleast_2d(a['value'].astype(np.float64, casting='safe')),
                         a['importance'].astype(np.float64, casting='safe')
                         if 'importance' in a else None)
        outputs = 1 if config['task'] == 'regression' else len(config['labels'])
        check_trees(tree, outputs)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f'{TREE_FILE} does not describe a forest: {e}') from None
    return tree


def write_kmers(kmers, path):
    """kmers.npz: plain arrays (no pickled objects), read back with allow_pickle=False."""
    with open(path, 'wb') as fh:
        np.savez_compressed(fh, k=np.int64(kmers.k), mean=kmers.mean, scale=kmers.scale,
                            coef=kmers.coef, intercept=kmers.intercept,
                            penalty=np.float64(kmers.penalty))


def read_kmers(directory, config):
    """kmers.npz back as a KmerModel, checked: shapes that agree with k and the outputs,
    finite numbers; present exactly when the stack weighs a k-mer member."""
    path = _member_file(directory, KMER_FILE,
                        'kmers' in ((config.get('stack') or {}).get('members') or []),
                        "config.json's stack weighs a k-mer member",
                        "config.json's stack has no k-mer member to use it")
    if path is None:
        return None
    a = _read_arrays(path, KMER_ARRAYS)
    try:
        k = int(a['k'].astype(np.int64, casting='safe'))
        if not 1 <= k <= 8:
            raise ValueError(f'k must be 1 to 8, not {k}.')
        kmers = KmerModel(config['task'], k,
                          *(a[n].astype(np.float64, casting='safe') for n in
                            ('mean', 'scale', 'coef', 'intercept')),
                          float(a['penalty']))
        check_kmers(kmers, 1 if config['task'] == 'regression' else len(config['labels']))
    except (TypeError, ValueError) as e:
        raise ModelFileError(f'{KMER_FILE} does not describe a k-mer member: {e}') from None
    return kmers


def read_linear(directory, config):
    """linear.tsv back as a LinearModel, checked against config.json: one row per sequence,
    one finite coefficient per output."""
    meta = config.get('linear')
    path = _member_file(directory, LINEAR_FILE, meta is not None,
                        'config.json describes a linear half',
                        'config.json describes no linear half to use it')
    if path is None:
        return None
    table = _read_tsv(path, index_col=0)
    names = _output_names(config)
    if [str(c) for c in table.columns] != names or table.index.name != 'sequence':
        raise ModelFileError(f'{LINEAR_FILE} must have the columns sequence, '
                             f'{", ".join(names)}; found {table.index.name}, '
                             f'{", ".join(map(str, table.columns))}.')
    if len(table) != meta['features'] or len(meta['intercept']) != len(names):
        raise ModelFileError(f'{LINEAR_FILE} holds {len(table)} sequences and config.json '
                             f'{len(meta["intercept"])} intercepts, but config.json says '
                             f'{meta["features"]} sequences and {len(names)} outputs.')
    sequences = [str(s) for s in table.index]
    if table.index.hasnans or len(set(sequences)) != len(sequences):
        raise ModelFileError(f'{LINEAR_FILE}: every row needs its own sequence; some are empty '
                             'or repeated.')
    try:
        coef = table.to_numpy(np.float64)
    except (TypeError, ValueError):
        coef = np.array([np.nan])
    if not np.isfinite(coef).all():
        raise ModelFileError(f'{LINEAR_FILE}: every coefficient must be a finite number.')
    penalty = meta.get('penalty')
    return LinearModel(config['task'], sequences, coef.reshape(len(table), len(names)),
                       np.asarray(meta['intercept'], np.float64),
                       float('nan') if penalty is None else float(penalty))


def read_state_dict(path):
    """Tensors only: anything else in model.pt (pickled code or objects) is refused."""
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:   # weights_only raises UnpicklingError for any other object
        raise ModelFileError(f'model.pt could not be read as plain weights ({type(e).__name__}: '
                             f'{str(e).splitlines()[0] if str(e) else ""}). q2-aam loads only '
                             'tensors and never runs code from a model file.') from None
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelFileError('model.pt must hold a mapping of parameter names to tensors.')
    return state


def check_weights(config, state):
    """Refuse weights that do not fit the architecture config.json describes."""
    single = AAM(AAMConfig.from_dict(config['model'])).state_dict()
    size = ensemble_size(config)
    expected = pack_members([single] * size)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, names in (('missing', missing), ('unexpected', unexpected),
                             ('wrongly shaped', wrong)):
            if names:
                parts.append(f'{len(names)} {label} (e.g. {", ".join(names[:3])})')
        raise ModelFileError('model.pt does not match the architecture in config.json: '
                             + '; '.join(parts) + '. The model folder is inconsistent: '
                             'train the model again.')


def _read_tsv(path, index_col=None):
    try:   # round_trip: the 17 digits written read back as the same float64
        return pd.read_csv(path, sep='\t', index_col=index_col, encoding='utf-8',
                           float_precision='round_trip')
    except pd.errors.EmptyDataError:
        raise ModelFileError(f'{Path(path).name} is empty; it needs at least a header line.') \
            from None
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as e:
        raise ModelFileError(f'{Path(path).name} is not a readable tab-separated text file '
                             f'({type(e).__name__}); the model folder is damaged: train the '
                             'model again.') from None


def validate(directory, check_weights_too=True):
    """Raise ModelFileError naming the first problem of a model folder."""
    directory = Path(directory)
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        raise ModelFileError(f'The model folder lacks {", ".join(missing)}; a q2-aam model '
                             f'holds {", ".join(FILES)} and a {TENSORBOARD_DIR}/ folder.')
    config = read_config(directory)
    for name in ('history.tsv', 'validation.tsv'):
        _read_tsv(directory / name)
    read_linear(directory, config)
    read_tree(directory, config)
    read_kmers(directory, config)
    if check_weights_too:
        check_weights(config, read_state_dict(directory / 'model.pt'))
    return config


def load(directory):
    directory = Path(directory)
    config = validate(directory, check_weights_too=False)
    state = read_state_dict(directory / 'model.pt')
    check_weights(config, state)
    history = _read_tsv(directory / 'history.tsv')
    validation = _read_tsv(directory / 'validation.tsv', index_col=0)
    validation.index = validation.index.astype(str)
    validation.index.name = 'sample-id'
    tb = directory / TENSORBOARD_DIR
    tensorboard = read_files(tb) if tb.is_dir() else {}
    return SavedModel(config, state, history, validation, tensorboard,
                      linear=read_linear(directory, config), tree=read_tree(directory, config),
                      kmers=read_kmers(directory, config))
