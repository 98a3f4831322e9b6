"""The AAM model: an ASV encoder over nucleotides, a sample encoder over ASVs, and heads.

Shapes: U distinct ASVs in a batch, L tokens per ASV (START + bases), B samples,
K ASV slots per sample (-1 = empty), D the embedding width, V the token vocabulary.
"""
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .tokens import A, PAD, T, VOCAB_SIZE

TASKS = ('encoder', 'regression', 'classification')


@dataclass
class AAMConfig:
    task: str = 'encoder'          # 'encoder' | 'regression' | 'classification'
    n_outputs: int = 0             # regression: targets; classification: classes;
    # encoder: 0, or 1 for an auxiliary per-sample target
    vocab_size: int = VOCAB_SIZE
    max_bp: int = 150
    embedding_dim: int = 128
    attention_heads: int = 4
    attention_layers: int = 4      # per transformer (ASV and sample)
    feedforward_mult: int = 4
    dropout: float = 0.1
    kmer_size: int = 6             # k-mer profile added to each ASV vector; 0 = off
    nucleotide_layers: Optional[int] = None   # layers reading each ASV's bases; None: as
    # attention_layers; 0: the k-mer profile alone

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f'task must be one of {TASKS}, not {self.task!r}.')
        self._check_types()
        if self.task != 'encoder' and self.n_outputs < 1:
            raise ValueError(f'A {self.task} model needs n_outputs >= 1.')
        if not 0 <= self.kmer_size <= 8:
            raise ValueError(f'kmer_size must be 0 (off) to 8, not {self.kmer_size}.')
        if self.asv_layers == 0 and not self.kmer_size:
            raise ValueError('With nucleotide_layers 0 and kmer_size 0 nothing reads an ASV\'s '
                             'sequence: set kmer_size (e.g. 6) or nucleotide_layers (e.g. 1).')
        if self.embedding_dim % self.attention_heads:
            raise ValueError(f'embedding_dim ({self.embedding_dim}) must be a multiple of '
                             f'attention_heads ({self.attention_heads}).')

    # whole-number settings and the least each may be
    _WHOLE = {'n_outputs': 0, 'vocab_size': VOCAB_SIZE, 'max_bp': 1, 'embedding_dim': 1,
              'attention_heads': 1, 'attention_layers': 1, 'feedforward_mult': 1,
              'kmer_size': 0, 'nucleotide_layers': 0}

    def _check_types(self):
        """Each setting's type and range, named, before anything is built from it: a model
        file is user input (config.json can say anything)."""
        for name, least in self._WHOLE.items():
            value = getattr(self, name)
            if name == 'nucleotide_layers' and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f'{name} must be a whole number, not {value!r}.')
            if value < least:
                raise ValueError(f'{name} must be at least {least}, not {value}.')
        if self.vocab_size != VOCAB_SIZE:
            raise ValueError(f'vocab_size must be {VOCAB_SIZE} (this q2-aam\'s tokens), not '
                             f'{self.vocab_size}.')
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or \
                not 0 <= dropout < 1:
            raise ValueError(f'dropout must be a number from 0 up to (not including) 1, not '
                             f'{dropout!r}.')

    @property
    def asv_layers(self):
        """Transformer layers over each ASV's nucleotides (0: k-mer profile only)."""
        return self.attention_layers if self.nucleotide_layers is None else self.nucleotide_layers

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f'Unknown model settings {unknown}; known: {sorted(known)}.')
        return cls(**d)


class AttentionPool(nn.Module):
    """A learned score per position, softmax over valid positions, weighted sum.

    Invalid positions get the dtype's lowest score and a weight of exactly zero
    afterwards, so a row with no valid position pools to zeros, never NaN.
    """

    def __init__(self, dim):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, x, valid):                           # x (N, S, D), valid (N, S)
        scores = self.score(x).squeeze(-1)                 # (N, S)
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * valid    # (N, S), zero where invalid
        return torch.einsum('ns,nsd->nd', weights, x)      # (N, D)


def _transformer(cfg, layers):
    layer = nn.TransformerEncoderLayer(
        cfg.embedding_dim, cfg.attention_heads, cfg.feedforward_mult * cfg.embedding_dim,
        cfg.dropout, activation='gelu', batch_first=True, norm_first=True)
    # No dropout on the attention weights (dropout stays on the residual and feed-forward
    # paths): it kept CPU training on the unfused attention path, where drawing the (N, heads,
    # L, L) masks was a large share of an epoch; without it torch's fused attention runs.
    # Evaluation is unaffected: dropout is off there anyway.
    layer.self_attn.dropout = 0.0
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(cfg.embedding_dim),
                                 enable_nested_tensor=False)


def _attention_padding(valid):
    """Key-padding mask for attention that never masks a whole row.

    A row with no valid position (an empty sample) attends over its padding instead
    of producing NaN; pooling then gives it zeros because pooling uses ``valid``.
    """
    return ~valid & valid.any(dim=1, keepdim=True)


def kmer_ids(tokens, k):
    """Overlapping k-mers of A/C/G/T as integers in [0, 4**k): (U, L) -> (U, W), valid (U, W).

    Windows that touch START, PAD, MASK or N are invalid, so masking a base hides the
    k-mers around it as well.
    """
    base = (tokens - A).clamp(0, 3)                        # A C G T -> 0 1 2 3
    is_base = (tokens >= A) & (tokens <= T)
    windows = tokens.shape[1] - k + 1
    if windows < 1:
        empty = tokens.new_zeros(tokens.shape[0], 1)
        return empty, empty.bool()
    ids = torch.zeros_like(tokens[:, :windows])
    valid = torch.ones_like(is_base[:, :windows])
    for j in range(k):
        ids = ids * 4 + base[:, j:j + windows]
        valid = valid & is_base[:, j:j + windows]
    return ids, valid


class KmerProfile(nn.Module):
    """Mean embedding of an ASV's k-mers, layer-normalised.

    Why: at initialisation a transformer's pooled output is little more than the
    sequence's base composition, so ASVs look alike and a fit collapses to predicting
    the mean. A k-mer profile tells ASVs apart from the first step, and sequences that
    share k-mers (close relatives, and new ASVs at prediction) get similar vectors.
    """

    def __init__(self, k, dim):
        super().__init__()
        self.k = k
        self.table = nn.Embedding(4 ** k, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens):                             # tokens (U, L)
        ids, valid = kmer_ids(tokens, self.k)              # (U, W)
        weights = valid.float() / valid.sum(1, keepdim=True).clamp(min=1)
        # the weighted mean of the rows of the table, fused: no (U, W, D) intermediate
        bag = F.embedding_bag(ids, self.table.weight, per_sample_weights=weights,
                              mode='sum')                  # (U, D)
        return self.norm(bag)                              # no valid k-mer -> zeros + bias


class ASVEncoder(nn.Module):
    """Reads each distinct ASV's nucleotides once and pools them to one vector.

    With ``nucleotide_layers`` 0 an ASV is its k-mer profile alone: no nucleotide
    transformer, hence no hidden states and no masked-nucleotide loss, at a fifth of the
    training time; the model still reads sequences, so unseen ASVs are still predicted.

    ``checkpoint_layers`` (set by the trainer): in training, keep only each layer's
    input and recompute the layer in the backward pass. Same numbers (dropout draws
    are replayed), about a third of the activation memory, about a third more time.
    """

    def __init__(self, cfg):
        super().__init__()
        self.reads_bases = cfg.asv_layers > 0
        if self.reads_bases:
            self.token = nn.Embedding(cfg.vocab_size, cfg.embedding_dim, padding_idx=PAD)
            self.position = nn.Embedding(cfg.max_bp + 1, cfg.embedding_dim)
            self.drop = nn.Dropout(cfg.dropout)
            self.transformer = _transformer(cfg, cfg.asv_layers)
            self.pool = AttentionPool(cfg.embedding_dim)
        self.kmers = KmerProfile(cfg.kmer_size, cfg.embedding_dim) if cfg.kmer_size else None
        self.checkpoint_layers = False

    def forward(self, tokens):                             # tokens (U, L)
        if not self.reads_bases:
            return self.kmers(tokens), None                # (U, D), no hidden states
        valid = tokens != PAD                              # (U, L)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.drop(self.token(tokens) + self.position(positions))       # (U, L, D)
        padding = _attention_padding(valid)
        if self.checkpoint_layers and self.training and torch.is_grad_enabled():
            for layer in self.transformer.layers:
                h = checkpoint(layer, h, src_key_padding_mask=padding, use_reentrant=False)
            h = self.transformer.norm(h)
        else:
            h = self.transformer(h, src_key_padding_mask=padding)
        vectors = self.pool(h, valid)                      # (U, D)
        if self.kmers is not None:
            vectors = vectors + self.kmers(tokens)
        return vectors, h                                  # (U, D), (U, L, D)


DETECTION_FLOOR = 1e-5    # relative abundance of about one read in 100,000
COMPOSITION_SCALE = 128.0  # about the number of ASVs a sample holds: keeps the sum near unit size


def log_abundance_weights(abundance, valid):
    """Per-slot weights log(abundance / floor), clipped at 0 and divided by a constant: (B, K).

    Why: summing ASV vectors with these weights makes the composition path a linear
    model on log relative abundance, the transform that lets a ridge regression reach
    R² 0.66 on sleep-apnea age (training folds only) where relative abundance itself
    reaches 0.38. Empty slots weigh zero; a constant divisor (not the weights' sum)
    keeps the model linear in each ASV's log abundance.
    """
    weights = torch.log(abundance.clamp(min=1e-12) / DETECTION_FLOOR).clamp(min=0)
    return weights * valid / COMPOSITION_SCALE


class SampleEncoder(nn.Module):
    """Reads a sample's ASV vectors with their abundances; ASV order carries no signal."""

    def __init__(self, cfg):
        super().__init__()
        d = cfg.embedding_dim
        self.abundance = nn.Sequential(nn.Linear(1, d), nn.GELU(), nn.Linear(d, d))
        self.drop = nn.Dropout(cfg.dropout)
        self.transformer = _transformer(cfg, cfg.attention_layers)
        self.pool = AttentionPool(d)
        # the sample's composition, directly: ASV vectors summed with log-abundance weights
        self.composition = nn.Linear(d, d)

    def forward(self, asv_vectors, asv_index, abundance):  # (U, D), (B, K), (B, K)
        valid = asv_index >= 0                              # (B, K)
        x = asv_vectors[asv_index.clamp(min=0)]             # (B, K, D)
        composition = torch.einsum('bk,bkd->bd', log_abundance_weights(abundance, valid), x)
        # log relative abundance, roughly in [-1.2, 0] for 1e-5..1; padding -> 0 input
        log_abundance = torch.log(abundance.clamp(min=1e-8)) / 10.0
        x = x + self.abundance(log_abundance.unsqueeze(-1))             # (B, K, D)
        x = self.drop(x) * valid.unsqueeze(-1)
        h = self.transformer(x, src_key_padding_mask=_attention_padding(valid))
        return self.pool(h, valid) + self.composition(composition)     # (B, D)


class AAM(nn.Module):
    """ASV encoder -> sample encoder -> UniFrac embedding, nucleotide and target heads."""

    def __init__(self, cfg: AAMConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embedding_dim
        self.asv_encoder = ASVEncoder(cfg)
        self.sample_encoder = SampleEncoder(cfg)
        self.unifrac_head = nn.Linear(d, d)                 # space where distances ~ UniFrac
        self.nuc_head = nn.Linear(d, cfg.vocab_size)        # masked-base prediction
        self.target_head = (nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(cfg.dropout),
                                          nn.Linear(d, cfg.n_outputs))
                            if cfg.n_outputs > 0 else None)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, KmerProfile):   # visited after its table: start far apart
            nn.init.normal_(module.table.weight, std=1.0)

    def encoder_parameters(self):
        """Parameters shared with a pretrained encoder (everything but the target head)."""
        return [p for n, p in self.named_parameters() if not n.startswith('target_head.')]

    def forward(self, tokens, asv_index, abundance, asv_vectors=None):
        """tokens (U, L), asv_index (B, K) into U, abundance (B, K).

        ``asv_vectors`` (U, D) may be given instead of encoding ``tokens`` again
        (prediction encodes every distinct ASV of a table once).
        """
        out = {}
        if asv_vectors is None:
            asv_vectors, hidden = self.asv_encoder(tokens)  # (U, D), (U, L, D) or None
            if hidden is not None:
                out['nuc_logits'] = self.nuc_head(hidden)   # (U, L, V)
        sample = self.sample_encoder(asv_vectors, asv_index, abundance)   # (B, D)
        out['sample'] = sample
        out['embedding'] = self.unifrac_head(sample)        # (B, D)
        if self.target_head is not None:
            out['prediction'] = self.target_head(sample)    # (B, n_outputs)
        return out


def load_encoder_weights(model, encoder_state):
    """Copy a pretrained encoder's weights into ``model`` (all but the target head)."""
    own = model.state_dict()
    shared = {k: v for k, v in encoder_state.items()
              if not k.startswith('target_head.') and k in own}
    missing = [k for k in own if not k.startswith('target_head.') and k not in shared]
    mismatched = [k for k, v in shared.items() if v.shape != own[k].shape]
    if missing or mismatched:
        raise ValueError(
            'The pretrained encoder does not match this model\'s architecture '
            f'({len(missing)} missing and {len(mismatched)} differently shaped weights, e.g. '
            f'{(missing + mismatched)[:3]}). Fit with the same embedding_dim, '
            'attention_heads and attention_layers as the pretrained model.')
    model.load_state_dict(shared, strict=False)
    return model


def parameter_count(cfg: AAMConfig):
    """The parameters AAM(cfg) would have, computed without building it: a config can ask
    for more than memory holds (10⁶ layers), and that must be refused before allocation."""
    d, v, ff = cfg.embedding_dim, cfg.vocab_size, cfg.feedforward_mult * cfg.embedding_dim
    layer = (4 * d * d + 4 * d) + (2 * d * ff + ff + d) + 4 * d   # attention, feed-forward,
    transformer = lambda layers: layers * layer + 2 * d          # two norms; final norm
    pool = d + 1
    asv = (4 ** cfg.kmer_size * d + 2 * d) if cfg.kmer_size else 0
    if cfg.asv_layers:
        asv += v * d + (cfg.max_bp + 1) * d + transformer(cfg.asv_layers) + pool
    sample = (2 * d) + (d * d + d) + transformer(cfg.attention_layers) + pool + (d * d + d)
    heads = (d * d + d) + (d * v + v)
    if cfg.n_outputs:
        heads += (d * d + d) + (d * cfg.n_outputs + cfg.n_outputs)
    return asv + sample + heads
