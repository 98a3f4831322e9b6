"""The semantic type of a q2-aam model and its three kinds.

The names carry the AAM prefix because q2-sample-classifier already owns the plain
``Regressor`` and ``Classifier`` types.
"""
from qiime2.plugin import SemanticType

AAMModel = SemanticType('AAMModel', field_names='task')
AAMEncoder = SemanticType('AAMEncoder', variant_of=AAMModel.field['task'])
AAMRegressor = SemanticType('AAMRegressor', variant_of=AAMModel.field['task'])
AAMClassifier = SemanticType('AAMClassifier', variant_of=AAMModel.field['task'])

# the engine's task name behind each variant
TASK_OF_TYPE = {'AAMEncoder': 'encoder', 'AAMRegressor': 'regression',
                'AAMClassifier': 'classification'}
