"""Artifact folder <-> the engine's SavedModel, the one in-memory view of a model."""
import re
from pathlib import Path

from .engine import savedmodel
from .engine.savedmodel import SavedModel
from ._formats import AAMModelDirFmt
from ._types import TASK_OF_TYPE
from .plugin_setup import plugin

TYPE_LINE = re.compile(r'^type:\s*AAMModel\[(\w+)\]\s*$', re.MULTILINE)
UUID_LINE = re.compile(r'^uuid:\s*(\S+)\s*$', re.MULTILINE)


def declared_task(data_dir):
    """The task that the artifact holding this data folder is typed as, or None.

    Why: QIIME 2 checks an artifact's type against its data on import, not when an action
    views it, so a metadata.yaml edited by hand (AAMModel[AAMRegressor] over a classifier)
    would reach `predict`. An artifact's data folder sits beside its metadata.yaml, in a
    folder named by the artifact's UUID; a folder being imported has no such neighbour.
    """
    folder = Path(str(data_dir)).parent
    try:
        text = (folder / 'metadata.yaml').read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError):
        return None
    uuid, kind = UUID_LINE.search(text), TYPE_LINE.search(text)
    if uuid is None or kind is None or uuid.group(1) != folder.name:
        return None
    return TASK_OF_TYPE.get(kind.group(1))


@plugin.register_transformer
def _saved_model_to_dirfmt(data: SavedModel) -> AAMModelDirFmt:
    ff = AAMModelDirFmt()
    savedmodel.save(data, str(ff))
    return ff


@plugin.register_transformer
def _dirfmt_to_saved_model(ff: AAMModelDirFmt) -> SavedModel:
    saved = savedmodel.load(str(ff))
    saved.declared_task = declared_task(ff.path)
    return saved
