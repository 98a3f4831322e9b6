"""Artifact folder <-> the engine's SavedModel, the one in-memory view of a model."""
from .engine import checkpoint
from .engine.checkpoint import SavedModel
from ._formats import AAMModelDirFmt
from .plugin_setup import plugin


@plugin.register_transformer
def _saved_model_to_dirfmt(data: SavedModel) -> AAMModelDirFmt:
    ff = AAMModelDirFmt()
    checkpoint.save(data, str(ff))
    return ff


@plugin.register_transformer
def _dirfmt_to_saved_model(ff: AAMModelDirFmt) -> SavedModel:
    return checkpoint.load(str(ff))
