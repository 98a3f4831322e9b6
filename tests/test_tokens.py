import warnings

import numpy as np
import pytest
import torch

from q2_aam.engine.tokens import (A, C, G, MASK, N, PAD, START, T, VOCAB, VOCAB_SIZE,
                                  encode_sequences, mask_nucleotides)


def test_vocabulary_layout():
    assert (PAD, A, C, G, T, START, MASK, N) == tuple(range(8))
    assert VOCAB_SIZE == 8
    assert VOCAB == {'PAD': 0, 'A': 1, 'C': 2, 'G': 3, 'T': 4, 'START': 5, 'MASK': 6, 'N': 7}


def test_bases_start_and_padding():
    tokens = encode_sequences(['ACGT', 'GG'])
    assert tokens.dtype == np.uint8
    np.testing.assert_array_equal(tokens, [[START, A, C, G, T],
                                           [START, G, G, PAD, PAD]])


@pytest.mark.parametrize('code', list('RYSWKMBDHVN'))
def test_every_iupac_code_is_n(code):
    tokens = encode_sequences([f'A{code}{code.lower()}T'])
    np.testing.assert_array_equal(tokens[0], [START, A, N, N, T])


def test_lower_case_is_accepted():
    np.testing.assert_array_equal(encode_sequences(['acgt']), encode_sequences(['ACGT']))


def test_length_is_longest_sequence_plus_start():
    assert encode_sequences(['ACG', 'ACGTACG']).shape == (2, 8)


def test_long_sequences_truncated_with_one_warning_that_counts_them():
    seqs = ['A' * 12, 'C' * 15, 'G' * 5, 'T' * 11]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        tokens = encode_sequences(seqs, max_bp=10)
    assert len(caught) == 1
    assert '3 of 4 sequences' in str(caught[0].message)
    assert 'max_bp=10' in str(caught[0].message)
    assert tokens.shape == (4, 11)
    assert (tokens[0, 1:] == A).all() and (tokens[1, 1:] == C).all()
    np.testing.assert_array_equal(tokens[2], [START] + [G] * 5 + [PAD] * 5)


def test_no_warning_when_nothing_is_truncated():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        encode_sequences(['A' * 10], max_bp=10)


def test_non_dna_letters_raise_naming_the_sequences():
    with pytest.raises(ValueError) as e:
        encode_sequences(['ACGT', 'ACXT', 'AC GT', 'MKLV*'], ids=['ok', 'bad1', 'bad2', 'prot'])
    message = str(e.value)
    assert "'bad1'" in message and "'bad2'" in message
    assert "'prot'" in message            # L, * and others are not nucleotide codes
    assert "'ok'" not in message
    assert '3 of 4 sequences' in message


def test_empty_sequence_raises():
    with pytest.raises(ValueError, match="'empty'"):
        encode_sequences(['ACGT', '--'], ids=['x', 'empty'])


def test_gaps_are_dropped():
    np.testing.assert_array_equal(encode_sequences(['A-C.G']), encode_sequences(['ACG']))


def test_mask_nucleotides_masks_ratio_of_real_bases_only():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 100, size=200)
    tokens = torch.zeros(200, 101, dtype=torch.long)
    tokens[:, 0] = START
    for row, n in enumerate(lengths):
        tokens[row, 1:1 + n] = torch.from_numpy(rng.integers(1, 5, n))
    tokens[:5, 10] = N
    generator = torch.Generator().manual_seed(1)
    masked, mask = mask_nucleotides(tokens, 0.15, generator)
    real = (tokens != PAD) & (tokens != START)
    assert mask.dtype == torch.bool
    assert not (mask & ~real).any()                      # never START nor PAD
    assert (masked[:, 0] == START).all()
    assert (masked[tokens == PAD] == PAD).all()
    assert (masked[mask] == MASK).all()
    assert torch.equal(masked[~mask], tokens[~mask])
    assert mask.sum().item() / real.sum().item() == pytest.approx(0.15, abs=0.01)


def test_mask_nucleotides_is_seeded():
    tokens = torch.from_numpy(encode_sequences(['ACGT' * 10] * 8).astype(np.int64))
    a = mask_nucleotides(tokens, 0.3, torch.Generator().manual_seed(5))[1]
    b = mask_nucleotides(tokens, 0.3, torch.Generator().manual_seed(5))[1]
    c = mask_nucleotides(tokens, 0.3, torch.Generator().manual_seed(6))[1]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_mask_ratio_zero_masks_nothing():
    tokens = torch.from_numpy(encode_sequences(['ACGT' * 10]).astype(np.int64))
    masked, mask = mask_nucleotides(tokens, 0.0)
    assert not mask.any() and torch.equal(masked, tokens)
