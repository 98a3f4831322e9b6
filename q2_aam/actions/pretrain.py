"""`qiime aam pretrain`: an encoder whose sample vectors reproduce UniFrac distances."""
import pandas as pd
import skbio
from q2_types.feature_table import BIOMV210Format

from . import inputs, runs
from .plan import ARCHITECTURE, D, make_plan, train_settings
from .processes import on_processes
from ..engine import runstate
from ..engine.model import AAM, AAMConfig
from ..engine.runtime import seed_everything
from ..engine.savedmodel import SavedModel
from ..engine.unifrac import TreeDistances


def pretrain(
        table: BIOMV210Format, sequences: pd.Series, distance_matrix: skbio.DistanceMatrix = None,
        phylogeny: skbio.TreeNode = None,
        alpha_diversity: pd.Series = None, pretrained: SavedModel = None,
        ignore_missing_samples: bool = False,
        max_bp: int = D['max_bp'], embedding_dim: int = D['embedding_dim'],
        attention_heads: int = D['attention_heads'],
        attention_layers: int = D['attention_layers'],
        nucleotide_layers: int = D['nucleotide_layers'], dropout: float = D['dropout'],
        kmer_size: int = D['kmer_size'],
        epochs: int = D['epochs'], batch_size: int = D['batch_size'],
        learning_rate: float = D['learning_rate'], weight_decay: float = D['weight_decay'],
        optimizer: str = D['optimizer'], scheduler: str = D['scheduler'],
        scheduler_params: str = D['scheduler_params'],
        warmup_fraction: float = D['warmup_fraction'], patience: int = D['patience'],
        max_grad_norm: float = D['max_grad_norm'], validation_size: float = D['validation_size'],
        max_asvs: int = D['max_asvs'], nuc_mask_ratio: float = D['nuc_mask_ratio'],
        unifrac_weight: float = D['unifrac_weight'], nuc_weight: float = D['nuc_weight'],
        random_seed: int = D['random_seed'], device: str = D['device'],
        threads: int = D['threads'], tensorboard_dir: str = D['tensorboard_dir'],
        checkpoint_dir: str = D['checkpoint_dir'],
        histogram_frequency: int = D['histogram_frequency'],
        processes: int = D['processes'], compile: bool = D['compile']) -> SavedModel:
    views = dict(table=table, sequences=sequences, distance_matrix=distance_matrix,
                 phylogeny=phylogeny, alpha_diversity=alpha_diversity, pretrained=pretrained)
    arguments = {k: v for k, v in locals().items() if k not in views and k != 'views'}
    if (distance_matrix is None) == (phylogeny is None):
        raise ValueError('Pretraining learns UniFrac distances: give either distance_matrix '
                         '(a UniFrac DistanceMatrix of these samples) or phylogeny (the rooted '
                         'tree of these ASVs, from which each batch\'s distances are computed '
                         'as needed; memory then grows with the table, not its square), '
                         f"not {'both' if phylogeny is not None else 'neither'}.")
    if processes > 1:
        return on_processes('pretrain', views, arguments)
    plan = make_plan('pretrain', arguments, pretrained=pretrained)
    runs.check_folders(plan)
    settings = train_settings(plan, tensorboard_dir=runs.run_folder(plan['tensorboard_dir']))
    seed_everything(plan['random_seed'])
    counts, sample_ids, feature_ids = inputs.table_parts(table)
    seqs = inputs.sequences_for(feature_ids, sequences)
    if distance_matrix is not None:
        keep = inputs.distances_for(sample_ids, distance_matrix, ignore_missing_samples)
        counts, sample_ids = inputs.select_samples(counts, sample_ids, keep)
    if len(sample_ids) < inputs.MIN_SAMPLES:
        raise ValueError(f'Only {len(sample_ids)} samples are in both the table and the '
                         f'distance matrix; pretraining needs at least {inputs.MIN_SAMPLES}.')
    targets = None if alpha_diversity is None else inputs.alpha_values(alpha_diversity,
                                                                       sample_ids)
    distances = (inputs.distance_array(distance_matrix, sample_ids)
                 if distance_matrix is not None else
                 TreeDistances(counts, feature_ids, phylogeny))
    data = inputs.build_data(counts, sample_ids, feature_ids, seqs, plan['max_asvs'],
                             plan['max_bp'], distances, targets)
    cfg = AAMConfig(task='encoder', n_outputs=0 if targets is None else 1,
                    max_bp=plan['max_bp'], **{k: plan[k] for k in ARCHITECTURE})
    if not cfg.asv_layers and plan['nuc_weight'] > 0:
        inputs.note('no masked-nucleotide loss: with nucleotide_layers 0 the encoder reads '
                    'each ASV as its k-mer profile and has no bases to predict.')
    lock = runs.start_checkpoints(plan, data)
    model = AAM(cfg)
    if pretrained is not None:
        if (pretrained.model_config.n_outputs > 0) != (targets is not None):
            raise ValueError('The encoder to continue was pretrained '
                             f"{'with' if targets is None else 'without'} alpha diversity; "
                             f"continue it {'with' if targets is None else 'without'} "
                             'alpha_diversity too.')
        model.load_state_dict(pretrained.state_dict)
    with runstate.held(lock):
        rows = runs.validation_split(data, plan['validation_size'], plan['random_seed'])
        result = runs.train_member(model, data, rows, settings, plan)
    return runs.saved_model(cfg, plan, [result], len(sample_ids),
                            extra={'alpha_diversity': alpha_diversity is not None,
                                   'continued': pretrained is not None,
                                   'distances': 'matrix' if phylogeny is None else
                                   'computed per batch from the phylogeny (unweighted UniFrac)'})
