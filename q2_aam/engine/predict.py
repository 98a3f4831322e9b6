"""Fitted torch models -> sample vectors and head outputs, and the ensemble's average.

At prediction time every distinct ASV of the table is encoded once (``encode_all_asvs``),
then each batch runs only the sample encoder.
"""
import numpy as np
import torch

from .calibration import softmax
from .data import batch_indices
from .runtime import autocast_settings, resolve_device


@torch.no_grad()
def encode_all_asvs(model, data, device, rows=None, chunk=512):
    """Encode every distinct ASV the given samples use, once: returns (F, D) on ``device``.

    Rows of features no sample uses stay zero; they are never gathered.
    """
    was_training = model.training
    model.eval()
    features = data.used_features(range(len(data)) if rows is None else rows)
    out = torch.zeros(len(data.feature_ids), model.cfg.embedding_dim, device=device)
    autocast = autocast_settings(device)
    for start in range(0, len(features), chunk):
        cols = torch.from_numpy(features[start:start + chunk])
        tokens = data.tokens[cols]
        tokens = tokens[:, :int((tokens != 0).sum(1).max())].to(device)
        with torch.autocast(**autocast):
            vectors, _ = model.asv_encoder(tokens)
        out[cols.to(device)] = vectors.float()
    model.train(was_training)
    return out


@torch.no_grad()
def predict(model, data, rows=None, batch_size=64, device='cpu', dedupe_table=True):
    """Sample embeddings and target outputs for ``rows`` (default: all samples).

    With ``dedupe_table`` every distinct ASV of the table is encoded once, then each
    batch only runs the sample encoder. Returns {'embedding': (n, D), 'prediction':
    (n, n_outputs) raw head outputs, when the model has a head}.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    model.to(device).eval()
    rows = np.arange(len(data)) if rows is None else np.asarray(rows, np.int64)
    vectors = encode_all_asvs(model, data, device, rows) if dedupe_table else None
    autocast = autocast_settings(device)
    embeddings, predictions = [], []
    for chunk in batch_indices(rows, batch_size):
        batch = data.make_batch(chunk, distances=False).to(device)
        with torch.autocast(**autocast):
            out = model(batch.tokens, batch.asv_index, batch.abundance,
                        asv_vectors=None if vectors is None else vectors[batch.features])
        embeddings.append(out['embedding'].float().cpu())
        if 'prediction' in out:
            predictions.append(out['prediction'].float().cpu())
    result = {'embedding': torch.cat(embeddings).numpy()}
    if predictions:
        result['prediction'] = torch.cat(predictions).numpy()
    return result


class_probabilities = softmax     # a classifier's raw outputs -> class probabilities


def average_predictions(outputs, kind):
    """Several models' raw head outputs (each (n, n_outputs)) -> one array of that shape.

    A regressor's standardised values are averaged. A classifier's class probabilities
    are averaged, then returned as their log, so that softmax of the result gives the
    averaged probabilities and argmax the class they favour.
    """
    stacked = np.stack([np.asarray(o, np.float64) for o in outputs])   # (M, n, C)
    if kind != 'classification':
        return stacked.mean(0)
    return np.log(class_probabilities(stacked).mean(0))
