import math

import pytest
import torch

from q2_aam.engine.losses import nuc_loss, target_loss, total_loss, unifrac_loss
from q2_aam.engine.model import (AAM, COMPOSITION_SCALE, DETECTION_FLOOR, AAMConfig,
                                 AttentionPool, log_abundance_weights,
                                 load_encoder_weights, parameter_count)
from q2_aam.engine.tokens import MASK, START, mask_nucleotides

from engine_fixtures import tiny_model, toy_data

# three ASVs; sample 0 has all three, sample 1 none (all padding), sample 2 one
TOKENS = torch.tensor([[START, 1, 2, 3, 0, 0],
                       [START, 4, 4, 0, 0, 0],
                       [START, 1, 1, 1, 2, 3]])
INDEX = torch.tensor([[0, 1, 2], [-1, -1, -1], [2, -1, -1]])
ABUNDANCE = torch.tensor([[0.5, 0.3, 0.2], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])


def _all_finite(out):
    return all(bool(torch.isfinite(v).all()) for v in out.values())


def _backward_everything(model, out, tokens, distances=None):
    """A loss over every output, as training would use it."""
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 1] = True
    terms = {'nuc_loss': nuc_loss(out['nuc_logits'], tokens, mask),
             'sample': out['sample'].pow(2).sum()}
    if distances is not None:
        terms['unifrac_loss'] = unifrac_loss(out['embedding'], distances)
    if 'prediction' in out:
        terms['target_loss'] = target_loss(out['prediction'],
                                           torch.zeros(len(out['prediction'])), 'regression')
    loss = total_loss(terms, {})
    model.zero_grad()
    loss.backward()
    return loss


@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('case', ['mixed', 'empty_only', 'one_asv_only', 'batch_of_one'])
def test_finite_outputs_and_gradients(mode, case):
    model = tiny_model('regression', 1)
    getattr(model, mode)()
    index, abundance = {
        'mixed': (INDEX, ABUNDANCE),
        'empty_only': (INDEX[1:2], ABUNDANCE[1:2]),
        'one_asv_only': (INDEX[2:3, :1], ABUNDANCE[2:3, :1]),
        'batch_of_one': (INDEX[:1], ABUNDANCE[:1]),
    }[case]
    distances = torch.rand(len(index), len(index))
    out = model(TOKENS, index, abundance)
    assert _all_finite(out)
    loss = _backward_everything(model, out, TOKENS, distances)
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    with torch.no_grad():                              # the inference fast path too
        assert _all_finite(model(TOKENS, index, abundance))


def test_empty_sample_pools_to_zeros():
    model = tiny_model().eval()
    with torch.no_grad():
        out = model(TOKENS, INDEX, ABUNDANCE)
    assert torch.equal(out['sample'][1], torch.zeros(16))
    assert out['sample'][0].abs().sum() > 0


def test_all_padding_token_row_is_finite():
    """Data never makes one (START is always first), but the encoder survives it."""
    model = tiny_model().train()
    tokens = TOKENS.clone()
    tokens[1] = 0
    vectors, hidden = model.asv_encoder(tokens)
    assert torch.equal(vectors[1], torch.zeros(16))
    (vectors.sum() + hidden.sum()).backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters()
               if p.grad is not None)


def test_attention_pool_ignores_invalid_positions():
    pool = AttentionPool(4)
    x = torch.randn(2, 3, 4)
    valid = torch.tensor([[True, False, False], [False, False, False]])
    out = pool(x, valid)
    torch.testing.assert_close(out[0], x[0, 0])        # one valid position: weight 1
    assert torch.equal(out[1], torch.zeros(4))


def test_padded_slots_contribute_nothing():
    model = tiny_model('regression', 1).eval()
    with torch.no_grad():
        reference = model(TOKENS, INDEX, ABUNDANCE)
        index = INDEX.clone()
        index[index < 0] = -7                           # another padding value
        abundance = ABUNDANCE.clone()
        abundance[INDEX < 0] = torch.tensor([0.9, 0.1, 0.4, 0.7, 0.2])
        changed = model(TOKENS, index, abundance)
        # more padding slots (a batch mate with more ASVs) change nothing either
        wider = model(TOKENS, torch.cat([INDEX, torch.full((3, 4), -1)], 1),
                      torch.cat([ABUNDANCE, torch.rand(3, 4)], 1))
    for key in ('sample', 'embedding', 'prediction'):
        torch.testing.assert_close(changed[key], reference[key], rtol=0, atol=0)
        torch.testing.assert_close(wider[key], reference[key], rtol=1e-5, atol=1e-6)


def test_asv_order_carries_no_signal():
    model = tiny_model('regression', 1).eval()
    index = torch.tensor([[0, 1, 2], [1, 2, -1]])
    abundance = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.4, 0.0]])
    perm = torch.tensor([[2, 0, 1], [1, 0, 2]])
    with torch.no_grad():
        a = model(TOKENS, index, abundance)
        b = model(TOKENS, index.gather(1, perm), abundance.gather(1, perm))
    assert not torch.equal(index.gather(1, perm), index)
    torch.testing.assert_close(b['sample'], a['sample'], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b['prediction'], a['prediction'], rtol=1e-5, atol=1e-6)


def test_abundance_is_an_input():
    model = tiny_model().eval()
    index = torch.tensor([[0, 1]])
    with torch.no_grad():
        a = model(TOKENS, index, torch.tensor([[0.9, 0.1]]))['sample']
        b = model(TOKENS, index, torch.tensor([[0.1, 0.9]]))['sample']
    assert (a - b).abs().max() > 1e-4


def test_sample_vector_does_not_depend_on_its_batch_mates():
    data = toy_data(n_samples=6)
    model = tiny_model().eval()
    with torch.no_grad():
        together = data.make_batch([0, 1, 2, 3])
        alone = data.make_batch([2])
        a = model(together.tokens, together.asv_index, together.abundance)['sample'][2]
        b = model(alone.tokens, alone.asv_index, alone.abundance)['sample'][0]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_distinct_asv_path_equals_per_slot_path():
    data = toy_data(n_samples=5)
    model = tiny_model('regression', 1).eval()
    with torch.no_grad():
        deduped = data.make_batch(range(5), dedupe=True)
        naive = data.make_batch(range(5), dedupe=False)
        assert deduped.tokens.shape[0] < naive.tokens.shape[0]
        a = model(deduped.tokens, deduped.asv_index, deduped.abundance)
        b = model(naive.tokens, naive.asv_index, naive.abundance)
        # precomputed ASV vectors (prediction's path) give the same again
        vectors, _ = model.asv_encoder(deduped.tokens)
        c = model(None, deduped.asv_index, deduped.abundance, asv_vectors=vectors)
    for key in ('sample', 'embedding', 'prediction'):
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c[key], a[key], rtol=1e-5, atol=1e-6)
    assert 'nuc_logits' not in c


def test_output_shapes():
    model = tiny_model('classification', 3)
    out = model(TOKENS, INDEX, ABUNDANCE)
    assert out['nuc_logits'].shape == (3, 6, 8)
    assert out['sample'].shape == (3, 16)
    assert out['embedding'].shape == (3, 16)
    assert out['prediction'].shape == (3, 3)
    assert 'prediction' not in tiny_model()(TOKENS, INDEX, ABUNDANCE)


def test_nucleotide_head_can_see_masked_positions():
    model = tiny_model().eval()
    masked, mask = mask_nucleotides(TOKENS, 0.5, torch.Generator().manual_seed(0))
    assert (masked[mask] == MASK).all()
    with torch.no_grad():
        logits = model(masked, INDEX, ABUNDANCE)['nuc_logits']
    assert logits.shape[:2] == TOKENS.shape and torch.isfinite(logits).all()


def test_config_checks_and_round_trip():
    cfg = AAMConfig(task='classification', n_outputs=4, embedding_dim=32, attention_heads=4)
    assert AAMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match='task must be one of'):
        AAMConfig(task='clustering')
    with pytest.raises(ValueError, match='needs n_outputs >= 1'):
        AAMConfig(task='regression', n_outputs=0)
    with pytest.raises(ValueError, match='multiple of'):
        AAMConfig(embedding_dim=30, attention_heads=4)
    with pytest.raises(ValueError, match=r"Unknown model settings \['depth'\]"):
        AAMConfig.from_dict({'depth': 3})


@pytest.mark.parametrize('width, heads, layers', [(16, 2, 1), (24, 3, 2)])
def test_the_model_is_built_as_its_config_says(width, heads, layers):
    """Every setting reaches the layers it names (a builder that ignored one would still
    train, silently at another size)."""
    cfg = AAMConfig(embedding_dim=width, attention_heads=heads, attention_layers=layers,
                    nucleotide_layers=layers)
    model = AAM(cfg)
    for stack in (model.asv_encoder.transformer, model.sample_encoder.transformer):
        assert len(stack.layers) == layers
        attention = stack.layers[0].self_attn
        assert (attention.embed_dim, attention.num_heads) == (width, heads)
        assert stack.layers[0].norm_first and stack.layers[0].activation_relu_or_gelu == 2
        assert stack.layers[0].linear1.out_features == cfg.feedforward_mult * width


def test_load_encoder_weights():
    encoder = tiny_model('encoder', seed=1)
    fitted = tiny_model('regression', 1, seed=2)
    head_before = fitted.target_head[0].weight.clone()
    load_encoder_weights(fitted, encoder.state_dict())
    for name, value in encoder.state_dict().items():
        assert torch.equal(fitted.state_dict()[name], value)
    assert torch.equal(fitted.target_head[0].weight, head_before)
    wider = tiny_model('regression', 1, dim=32)
    with pytest.raises(ValueError, match='does not match'):
        load_encoder_weights(wider, encoder.state_dict())


def test_encoder_parameters_exclude_the_head():
    model = tiny_model('regression', 1)
    shared = {id(p) for p in model.encoder_parameters()}
    assert not any(id(p) in shared for p in model.target_head.parameters())
    assert len(shared) + sum(1 for _ in model.target_head.parameters()) == \
        sum(1 for _ in model.parameters())
    # parameter_count computes from the config what the built model holds
    assert parameter_count(model.cfg) == sum(p.numel() for p in model.parameters())


def _forward_backward(model, batch, checkpoint_layers):
    """Outputs, gradients and bytes kept for backward of one training step."""
    model.train()
    model.asv_encoder.checkpoint_layers = checkpoint_layers
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    torch.manual_seed(5)                                # the same dropout draws
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(batch.tokens, batch.asv_index, batch.abundance)
    model.zero_grad()
    (out['embedding'].pow(2).sum() + out['nuc_logits'].pow(2).mean()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads, sum(kept.values())


def test_checkpointed_asv_layers_give_the_same_numbers_with_less_memory():
    batch = toy_data(n_samples=6).make_batch(range(6))
    model = tiny_model(dim=32)
    model.asv_encoder.transformer.layers.extend(
        [tiny_model(dim=32).asv_encoder.transformer.layers[0] for _ in range(2)])  # 3 layers
    plain_out, plain_grads, plain_bytes = _forward_backward(model, batch, False)
    out, grads, kept_bytes = _forward_backward(model, batch, True)
    for key in plain_out:
        assert torch.equal(out[key], plain_out[key])
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        assert torch.equal(grads[name], plain_grads[name]), name
    assert kept_bytes < 0.6 * plain_bytes
    # evaluation never checkpoints: the same numbers either way
    model.eval()
    with torch.no_grad():
        on = model(batch.tokens, batch.asv_index, batch.abundance)['sample']
        model.asv_encoder.checkpoint_layers = False
        off = model(batch.tokens, batch.asv_index, batch.abundance)['sample']
    assert torch.equal(on, off)


# -- the k-mer profile and the composition path ------------------------------------------

def test_kmer_ids_count_windows_of_real_bases_only():
    from q2_aam.engine.model import kmer_ids
    from q2_aam.engine.tokens import encode_sequences
    tokens = torch.from_numpy(encode_sequences(['ACGTA', 'ACNTA', 'AC'], max_bp=10)
                              .astype('int64'))              # START + bases + PAD
    ids, valid = kmer_ids(tokens, 2)
    # windows start at START, so the first window is never valid
    assert valid[0].tolist() == [False, True, True, True, True]
    assert ids[0, 1:].tolist() == [0 * 4 + 1, 1 * 4 + 2, 2 * 4 + 3, 3 * 4 + 0]   # AC CG GT TA
    assert valid[1].tolist() == [False, True, False, False, True]                # N hides CN, NT
    assert valid[2].tolist() == [False, True, False, False, False]               # PAD is no base


def test_kmer_profile_tells_asvs_apart_and_keeps_relatives_close():
    from q2_aam.engine.tokens import encode_sequences
    torch.manual_seed(0)
    model = AAM(AAMConfig(embedding_dim=32, attention_heads=2, attention_layers=1)).eval()
    rng = torch.Generator().manual_seed(1)
    seq = ''.join('ACGT'[i] for i in torch.randint(0, 4, (100,), generator=rng))
    mutant = seq[:50] + ('A' if seq[50] != 'A' else 'C') + seq[51:]
    shuffled = ''.join(sorted(seq))                       # same composition, other order
    other = ''.join('ACGT'[i] for i in torch.randint(0, 4, (100,), generator=rng))
    tokens = torch.from_numpy(encode_sequences([seq, mutant, shuffled, other]).astype('int64'))
    with torch.no_grad():
        vectors, _ = model.asv_encoder(tokens)
    dist = torch.cdist(vectors, vectors)
    assert dist[0, 1] < 0.5 * dist[0, 3]                 # one substitution: a close relative
    assert dist[0, 2] > 0.5 * dist[0, 3]                 # same bases, other order: far apart
    assert torch.isfinite(vectors).all()


def test_kmer_profile_of_a_sequence_shorter_than_k_is_finite():
    from q2_aam.engine.tokens import encode_sequences
    model = AAM(AAMConfig(embedding_dim=16, attention_heads=2, attention_layers=1, kmer_size=6))
    tokens = torch.from_numpy(encode_sequences(['ACG', 'NNNNNNNN']).astype('int64'))
    vectors, _ = model.asv_encoder(tokens)
    vectors.sum().backward()
    assert torch.isfinite(vectors).all()
    assert all(torch.isfinite(p.grad).all() for p in model.asv_encoder.parameters()
               if p.grad is not None)


def test_kmer_profile_can_be_switched_off_and_is_checked():
    assert AAM(AAMConfig(embedding_dim=16, attention_heads=2, kmer_size=0)).asv_encoder.kmers \
        is None
    with pytest.raises(ValueError, match='kmer_size must be 0'):
        AAMConfig(kmer_size=9)


def test_log_abundance_weights_are_log_over_the_floor_clipped_and_zero_in_empty_slots():
    abundance = torch.tensor([[0.5, 0.25, 1e-6, 0.0]])
    valid = torch.tensor([[True, True, True, False]])
    w = log_abundance_weights(abundance, valid)
    expected = [math.log(0.5 / DETECTION_FLOOR) / COMPOSITION_SCALE,
                math.log(0.25 / DETECTION_FLOOR) / COMPOSITION_SCALE, 0.0, 0.0]
    assert torch.allclose(w, torch.tensor([expected]), atol=1e-6)
    # halving an ASV's abundance lowers its weight by log 2, whatever the other ASVs are
    assert math.isclose(float(w[0, 0] - w[0, 1]), math.log(2) / COMPOSITION_SCALE, rel_tol=1e-5)


def test_composition_path_adds_the_log_abundance_weighted_sum_of_asv_vectors():
    torch.manual_seed(0)
    model = AAM(AAMConfig(embedding_dim=16, attention_heads=2, attention_layers=1)).eval()
    encoder = model.sample_encoder
    vectors, index = torch.randn(2, 16), torch.tensor([[0, 1]])
    share = torch.tensor([[0.9, 0.1]])
    with torch.no_grad():
        torch.nn.init.normal_(encoder.composition.weight)      # make the path visible
        with_path = encoder(vectors, index, share)
        weights = torch.log(share / DETECTION_FLOOR) / COMPOSITION_SCALE
        expected = encoder.composition(weights @ vectors)
        encoder.composition.weight.zero_()
        encoder.composition.bias.zero_()
        without_path = encoder(vectors, index, share)
        other = encoder(vectors, index, torch.tensor([[0.1, 0.9]]))
    assert torch.allclose(with_path - without_path, expected, atol=1e-5)
    assert not torch.allclose(without_path, other)      # abundance also enters the transformer


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_kmer_only_encoder_has_no_nucleotide_transformer_and_stays_finite(mode):
    torch.manual_seed(0)
    model = AAM(AAMConfig(task='regression', n_outputs=1, embedding_dim=16, attention_heads=2,
                          attention_layers=1, nucleotide_layers=0, kmer_size=3))
    getattr(model, mode)()
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith(('asv_encoder.transformer', 'asv_encoder.token',
                                 'asv_encoder.position')) for n in names)
    assert any(n.startswith('sample_encoder.transformer') for n in names)
    out = model(TOKENS, INDEX, ABUNDANCE)
    assert 'nuc_logits' not in out                 # no bases read, so none to predict
    assert _all_finite(out)
    out['prediction'].sum().backward()
    assert model.asv_encoder.kmers.table.weight.grad.abs().sum() > 0
    vectors, hidden = model.asv_encoder(TOKENS)
    assert hidden is None
    assert torch.equal(vectors, model.asv_encoder.kmers(TOKENS))


def test_nucleotide_layers_default_to_attention_layers_and_are_checked():
    cfg = AAMConfig(embedding_dim=16, attention_heads=2, attention_layers=2)
    assert cfg.nucleotide_layers is None and cfg.asv_layers == 2
    assert len(AAM(cfg).asv_encoder.transformer.layers) == 2
    cfg = AAMConfig(embedding_dim=16, attention_heads=2, attention_layers=2, nucleotide_layers=1)
    model = AAM(cfg)
    assert len(model.asv_encoder.transformer.layers) == 1
    assert len(model.sample_encoder.transformer.layers) == 2
    with pytest.raises(ValueError, match='nucleotide_layers must be at least 0, not -1'):
        AAMConfig(nucleotide_layers=-1)
    with pytest.raises(ValueError, match='nothing reads an ASV'):
        AAMConfig(nucleotide_layers=0, kmer_size=0)


def test_attention_weights_are_not_dropped_but_residual_paths_are():
    """Attention-weight dropout kept CPU training off torch's fused attention (2x slower)."""
    model = AAM(AAMConfig(embedding_dim=16, attention_heads=2, attention_layers=1, dropout=0.3))
    for encoder in (model.asv_encoder, model.sample_encoder):
        for layer in encoder.transformer.layers:
            assert layer.self_attn.dropout == 0.0
            assert layer.dropout1.p == 0.3 and layer.dropout.p == 0.3
