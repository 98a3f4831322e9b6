"""The on-disk layout of a model artifact; the checks themselves live in the engine."""
import json

from qiime2.plugin import ValidationError, model

from .engine import savedmodel


class AAMConfigFormat(model.TextFileFormat):
    """config.json: the architecture, task, labels or target scaling, and versions."""

    def _validate_(self, level):
        try:
            with self.open() as fh:
                json.load(fh)
        except json.JSONDecodeError as e:
            raise ValidationError(f'config.json is not valid JSON: {e.msg} at line {e.lineno}.')


class AAMWeightsFormat(model.BinaryFileFormat):
    """model.pt: a torch state dict (a zip archive of tensors)."""

    def _validate_(self, level):
        with self.open() as fh:
            if fh.read(4) != b'PK\x03\x04':
                raise ValidationError('model.pt is not a torch weights file (a zip archive).')


class AAMTableFormat(model.TextFileFormat):
    """history.tsv and validation.tsv: tab-separated with a header line."""

    def _validate_(self, level):
        try:
            with self.open() as fh:
                header = fh.readline()
        except UnicodeDecodeError:
            raise ValidationError(f'{self.path.name} is not UTF-8 text; the model is '
                                  'damaged: train it again.') from None
        if '\t' not in header and header.strip() not in ('epoch', 'sample-id'):
            raise ValidationError(f'{self.path.name} has no tab-separated header line.')


class AAMTreeFormat(model.BinaryFileFormat):
    """tree.npz (the tree member's nodes) or kmers.npz (the k-mer member's coefficients):
    a zip archive of plain arrays."""

    def _validate_(self, level):
        with self.open() as fh:
            if fh.read(4) != b'PK\x03\x04':
                raise ValidationError(f'{self.path.name} is not a numpy array archive (a zip '
                                      'archive).')


class TensorBoardEventsFormat(model.BinaryFileFormat):
    """A TensorBoard event file; read only by TensorBoard, so not inspected here."""

    def _validate_(self, level):
        pass


class AAMModelDirFmt(model.DirectoryFormat):
    config = model.File('config.json', format=AAMConfigFormat)
    weights = model.File('model.pt', format=AAMWeightsFormat)
    history = model.File('history.tsv', format=AAMTableFormat)
    validation = model.File('validation.tsv', format=AAMTableFormat)
    linear = model.File('linear.tsv', format=AAMTableFormat, optional=True)
    tree = model.File('tree.npz', format=AAMTreeFormat, optional=True)
    kmers = model.File('kmers.npz', format=AAMTreeFormat, optional=True)
    tensorboard = model.FileCollection(r'tensorboard/.+', format=TensorBoardEventsFormat,
                                       optional=True)

    @tensorboard.set_path_maker
    def tensorboard_path_maker(self, name):
        return f'tensorboard/{name}'

    def _validate_(self, level):
        try:
            savedmodel.validate(str(self.path), check_weights_too=(level == 'max'))
        except savedmodel.ModelFileError as e:
            raise ValidationError(str(e)) from None
