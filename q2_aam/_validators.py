"""Each model type accepts only a config.json of its own task."""
from qiime2.plugin import ValidationError

from ._types import AAMClassifier, AAMEncoder, AAMModel, AAMRegressor, TASK_OF_TYPE
from .engine.savedmodel import SavedModel
from .plugin_setup import plugin


def _check_task(data: SavedModel, variant):
    expected = TASK_OF_TYPE[variant.name]
    if data.task != expected:
        raise ValidationError(
            f'This artifact is typed AAMModel[{variant.name}], but its config.json holds a '
            f'{data.task!r} model, not {expected!r}. Import it with the type that matches '
            'its task.')


@plugin.register_validator(AAMModel[AAMEncoder])
def validate_encoder(data: SavedModel, level):
    _check_task(data, AAMEncoder)


@plugin.register_validator(AAMModel[AAMRegressor])
def validate_regressor(data: SavedModel, level):
    _check_task(data, AAMRegressor)


@plugin.register_validator(AAMModel[AAMClassifier])
def validate_classifier(data: SavedModel, level):
    _check_task(data, AAMClassifier)
