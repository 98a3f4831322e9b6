"""The plugin as QIIME 2 sees it: registration, citations, types, usage examples, and
parameter types that q2galaxy can turn into Galaxy tool forms."""
import qiime2
import qiime2.sdk
import qiime2.sdk.util
from qiime2.plugin import Citations
from qiime2.plugin.testing import TestPluginBase

from q2_aam._formats import AAMModelDirFmt
from q2_aam._types import AAMClassifier, AAMEncoder, AAMModel, AAMRegressor
from q2_aam.engine.savedmodel import SavedModel

import plugin_fixtures  # also sets one torch thread: the examples train for real

ACTIONS = {'pretrain', 'fit', 'predict', 'predict_probabilities', 'plot_validation',
           'feature_importance', 'accuracy_report', 'classify_samples', 'regress_samples',
           'classify_samples_ncv', 'regress_samples_ncv'}
PIPELINES = {'classify_samples', 'regress_samples', 'classify_samples_ncv',
             'regress_samples_ncv'}
VISUALIZERS = {'plot_validation', 'accuracy_report'}


class PluginSetupTests(TestPluginBase):
    package = 'q2_aam'      # our tests live in the top-level tests/, not in q2_aam.tests

    def test_registered_as_aam(self):
        plugin = qiime2.sdk.PluginManager().plugins['aam']
        self.assertIs(plugin, self.plugin)
        self.assertEqual(plugin.name, 'aam')
        self.assertEqual(plugin.package, 'q2_aam')
        self.assertTrue(plugin.website.startswith('https://'))
        self.assertIn('transformer', plugin.description)
        self.assertIn('UniFrac', plugin.description)
        self.assertTrue(plugin.short_description)
        self.assertEqual(set(plugin.actions), ACTIONS)
        self.assertEqual(set(plugin.methods), ACTIONS - VISUALIZERS - PIPELINES)
        self.assertEqual(set(plugin.visualizers), VISUALIZERS)
        self.assertEqual(set(plugin.pipelines), PIPELINES)

    def test_citations(self):
        bib = Citations.load('citations.bib', package='q2_aam')
        self.assertLessEqual({'bolyen2019qiime2', 'lozupone2005unifrac', 'vaswani2017attention',
                              'cantrell_aam', 'paszke2019pytorch'}, set(bib.keys()))
        self.assertIn('QIIME 2', bib['bolyen2019qiime2'].fields['title'])
        self.assertIn('UniFrac', bib['lozupone2005unifrac'].fields['title'])
        self.assertIn('Attention', bib['vaswani2017attention'].fields['title'])
        self.assertIn('attention-all-microbes', bib['cantrell_aam'].fields['howpublished'])
        self.assertIn('PyTorch', bib['paszke2019pytorch'].fields['title'])
        # CitationRecords carry no key (and are unhashable): match them by title
        by_title = {record.fields['title']: key for key, record in bib.items()}

        def key_of(record):
            return by_title.get(record.fields['title'])
        self.assertEqual([key_of(c) for c in self.plugin.citations], ['bolyen2019qiime2'])
        keys = {name: {key_of(c) for c in action.citations}
                for name, action in self.plugin.actions.items()}
        self.assertIn('lozupone2005unifrac', keys['pretrain'])
        for name in ('pretrain', 'fit', 'predict', 'predict_probabilities'):
            self.assertLessEqual({'cantrell_aam', 'vaswani2017attention', 'paszke2019pytorch'},
                                 keys[name], name)

    def test_semantic_types_registered_to_format(self):
        for t in (AAMModel, AAMEncoder, AAMRegressor, AAMClassifier):
            self.assertRegisteredSemanticType(t)
        for variant in (AAMEncoder, AAMRegressor, AAMClassifier):
            self.assertSemanticTypeRegisteredToFormat(AAMModel[variant], AAMModelDirFmt)
        # the type names are our own: no other installed plugin registers them
        for name, plugin in qiime2.sdk.PluginManager().plugins.items():
            if name != 'aam':
                self.assertFalse({'AAMModel', 'AAMEncoder', 'AAMRegressor', 'AAMClassifier'}
                                 & set(plugin.type_fragments), name)

    def test_a_model_comes_back_whole_through_its_directory_format(self):
        saved = plugin_fixtures.regressor().view(SavedModel)
        folder = self.get_transformer(SavedModel, AAMModelDirFmt)(saved)
        folder.validate(level='max')
        again = self.get_transformer(AAMModelDirFmt, SavedModel)(folder)
        self.assertEqual(again.config, saved.config)
        self.assertTrue(plugin_fixtures.state_equal(again.state_dict, saved.state_dict))
        self.assertEqual(sorted(again.tensorboard), sorted(saved.tensorboard))
        self.assertEqual(again.linear.sequences, saved.linear.sequences)

    def test_action_signatures(self):
        fit = self.plugin.actions['fit'].signature
        self.assertEqual(set(fit.inputs),
                         {'table', 'sequences', 'pretrained', 'distance_matrix',
                          'continue_from'})
        self.assertTrue(fit.inputs['pretrained'].has_default())      # optional
        self.assertTrue(fit.inputs['distance_matrix'].has_default())
        self.assertTrue(fit.inputs['continue_from'].has_default())
        self.assertEqual(str(fit.inputs['continue_from'].qiime_type),
                         'AAMModel[AAMRegressor | AAMClassifier]')
        self.assertFalse(fit.parameters['metadata'].has_default())
        # as q2-sample-classifier's fit-classifier: the model and its ASV importances
        self.assertEqual(list(fit.outputs), ['model', 'feature_importance'])
        self.assertEqual(str(fit.outputs['feature_importance'].qiime_type),
                         'FeatureData[Importance]')
        pretrain = self.plugin.actions['pretrain'].signature
        # one of the two is needed (the action says which); QIIME 2 has no "one of"
        self.assertTrue(pretrain.inputs['distance_matrix'].has_default())
        self.assertTrue(pretrain.inputs['phylogeny'].has_default())
        self.assertEqual(str(pretrain.inputs['phylogeny'].qiime_type), 'Phylogeny[Rooted]')
        self.assertEqual(str(pretrain.parameters['processes'].qiime_type),
                         str(fit.parameters['processes'].qiime_type))
        self.assertIn('Range(1, 64', str(fit.parameters['processes'].qiime_type))
        self.assertEqual(str(fit.parameters['blend'].qiime_type),
                         "Str % Choices('stacked', 'fixed')")
        self.assertEqual(fit.parameters['blend'].default, 'stacked')
        self.assertEqual(str(fit.parameters['groups'].qiime_type),
                         'MetadataColumn[Categorical]')
        self.assertTrue(fit.parameters['groups'].has_default())
        self.assertIn('inclusive_start=False',
                      str(fit.parameters['transformer_weight'].qiime_type))
        self.assertTrue(pretrain.inputs['alpha_diversity'].has_default())
        self.assertEqual(str(pretrain.inputs['pretrained'].qiime_type), 'AAMModel[AAMEncoder]')
        # every size and rate has an upper bound that Galaxy can show
        every = {f'{a}.{n}': p for a in ('fit', 'pretrain', *PIPELINES)
                 for n, p in self.plugin.actions[a].signature.parameters.items()}
        for name, param in every.items():
            text = str(param.qiime_type)
            if text.startswith(('Int', 'Float')) and not name.endswith('.threads'):
                self.assertIn('Range(', text, name)
                self.assertNotIn('None)', text, name)
        self.assertEqual(str(pretrain.outputs['model'].qiime_type), 'AAMModel[AAMEncoder]')
        self.assertEqual(list(self.plugin.actions['predict'].signature.outputs),
                         ['predictions'])
        self.assertEqual(list(self.plugin.actions['predict_probabilities'].signature.outputs),
                         ['probabilities'])
        # one declaration, one description: shared settings read the same everywhere
        for param in ('epochs', 'learning_rate', 'random_seed', 'device'):
            texts = {self.plugin.actions[a].signature.parameters[param].description
                     for a in ('pretrain', 'fit')}
            self.assertEqual(len(texts), 1, param)

    def test_every_action_and_parameter_is_described(self):
        for name, action in self.plugin.actions.items():
            self.assertTrue(action.description, name)
            sig = action.signature
            for group in (sig.inputs, sig.parameters, sig.outputs):
                for pname, spec in group.items():
                    if name in VISUALIZERS and pname == 'visualization':
                        continue
                    self.assertIsInstance(spec.description, str, f'{name}.{pname}')
                    self.assertTrue(spec.description.strip(), f'{name}.{pname}')

    def test_every_action_has_an_example(self):
        for name, action in self.plugin.actions.items():
            self.assertGreaterEqual(len(action.examples), 1, name)

    def test_examples_run(self):
        # ExecutionUsage runs every example for real (tiny models, 2 epochs each).
        self.execute_examples()


# q2galaxy (which writes Galaxy tool wrappers) is not on PyPI and not packaged by Debian,
# so it cannot be installed here; instead we check that every parameter uses one of the
# primitive types its wrapper generator maps to a Galaxy form element.
GALAXY_PRIMITIVES = {'Int', 'Float', 'Str', 'Bool', 'MetadataColumn', 'Metadata',
                     'Threads'}     # Threads: newer QIIME 2 (Int | 'auto'), q2galaxy knows it


def _members(qiime_type):
    """The member types of a union or a type variable, or the type itself."""
    if isinstance(qiime_type, qiime2.core.type.meta.TypeVarExp):
        return list(qiime_type.members)
    if qiime2.sdk.util.is_union(qiime_type):
        return list(qiime_type.unpack_union())
    return [qiime_type]


class GalaxyTypesTests(TestPluginBase):
    package = 'q2_aam'

    def test_every_parameter_has_an_expressible_type(self):
        seen = 0
        for name, action in self.plugin.actions.items():
            for pname, spec in action.signature.parameters.items():
                for member in _members(spec.qiime_type):
                    with self.subTest(action=name, parameter=pname, type=repr(member)):
                        self.assertIn(member.name, GALAXY_PRIMITIVES)
                        self.assertFalse(qiime2.sdk.util.is_semantic_type(member))
                        seen += 1
        self.assertGreaterEqual(seen, 60)

    def test_every_input_is_an_artifact(self):
        for name, action in self.plugin.actions.items():
            for iname, spec in action.signature.inputs.items():
                with self.subTest(action=name, input=iname):
                    self.assertTrue(qiime2.sdk.util.is_semantic_type(spec.qiime_type))

    def test_free_text_is_never_required(self):
        # Galaxy has no file-path parameters: a free-form Str (no Choices) must be optional
        for name, action in self.plugin.actions.items():
            for pname, spec in action.signature.parameters.items():
                t = spec.qiime_type
                if getattr(t, 'name', None) == 'Str' and t.predicate is None:
                    with self.subTest(action=name, parameter=pname):
                        self.assertTrue(spec.has_default())

    def test_fit_metadata_is_a_metadata_column(self):
        # q2cli and q2galaxy only offer a column picker when the type itself is a
        # MetadataColumn; a union of two MetadataColumn types is shown as plain text.
        t = self.plugin.actions['fit'].signature.parameters['metadata'].qiime_type
        self.assertEqual(t.name, 'MetadataColumn')
        self.assertTrue(qiime2.sdk.util.is_metadata_column_type(t))
