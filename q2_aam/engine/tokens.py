"""DNA strings -> integer tokens, and nucleotide masking for the masked-base loss.

Every sequence starts with START, which is never padding and never masked, so no
row of a token matrix is ever all padding (the root of NaN in attention).
"""
import warnings

import numpy as np
import torch

from .messages import preview

PAD, A, C, G, T, START, MASK, N = range(8)
VOCAB_SIZE = 8
VOCAB = {'PAD': PAD, 'A': A, 'C': C, 'G': G, 'T': T,
         'START': START, 'MASK': MASK, 'N': N}

# IUPAC ambiguity codes (and U, which QIIME 2 never lets through but costs nothing) -> N.
_LOOKUP = np.full(256, -1, dtype=np.int16)
for _letter, _token in {'A': A, 'C': C, 'G': G, 'T': T, 'U': T}.items():
    _LOOKUP[ord(_letter)] = _token
    _LOOKUP[ord(_letter.lower())] = _token
for _letter in 'RYSWKMBDHVN':
    _LOOKUP[ord(_letter)] = N
    _LOOKUP[ord(_letter.lower())] = N
# Alignment gaps carry no base: they are dropped, not tokenised.
_GAPS = b'-.'


def encode_sequences(sequences, ids=None, max_bp=150):
    """Tokenise sequences into a [U, max_len + 1] uint8 matrix: START, bases, PAD.

    Letters that are not DNA raise a ValueError naming the sequences; sequences
    longer than ``max_bp`` are truncated with a single warning that counts them.
    """
    ids = list(ids) if ids is not None else [str(i) for i in range(len(sequences))]
    raw = [str(s).encode('ascii', 'replace').translate(None, _GAPS) for s in sequences]
    bad = [(i, s) for i, s in zip(ids, raw)
           if len(s) == 0 or (_LOOKUP[np.frombuffer(s, np.uint8)] < 0).any()]
    if bad:
        shown = preview([i for i, _ in bad])
        raise ValueError(
            f'{len(bad)} of {len(raw)} sequences are empty or contain characters that '
            f'are not DNA (A, C, G, T or IUPAC codes), for example {shown}. '
            'Give nucleotide sequences (FeatureData[Sequence]) for the table\'s features.')
    too_long = sum(len(s) > max_bp for s in raw)
    if too_long:
        warnings.warn(f'{too_long} of {len(raw)} sequences are longer than max_bp={max_bp} '
                      f'and were truncated to their first {max_bp} bases.', stacklevel=2)
    length = min(max_bp, max(len(s) for s in raw)) if raw else 0
    tokens = np.full((len(raw), length + 1), PAD, dtype=np.uint8)
    tokens[:, 0] = START
    for row, s in enumerate(raw):
        codes = _LOOKUP[np.frombuffer(s[:max_bp], np.uint8)]
        tokens[row, 1:1 + len(codes)] = codes
    return tokens


def mask_nucleotides(tokens, ratio, generator=None):
    """Replace ``ratio`` of the real bases by MASK; returns (masked tokens, bool mask).

    START and PAD are never masked. ``tokens`` is a LongTensor [U, L].
    """
    maskable = (tokens != PAD) & (tokens != START)
    draw = torch.rand(tokens.shape, generator=generator, device='cpu').to(tokens.device)
    mask = maskable & (draw < ratio)
    return tokens.masked_fill(mask, MASK), mask
