"""Galaxy: q2galaxy templates one tool per action, and each tool's own test runs the way
Galaxy runs it (`q2galaxy run aam ACTION inputs.json`). Skipped where q2galaxy is absent;
`make test` installs it from ../shared/wheels when that folder exists."""
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

q2galaxy = pytest.importorskip('q2galaxy', reason='q2galaxy is not installed (it is in '
                               '../shared/wheels; see the README, "Galaxy")')

BIN = Path(sys.executable).parent
ACTIONS = ('pretrain', 'fit', 'predict', 'predict_probabilities', 'plot_validation',
           'feature_importance', 'accuracy_report', 'classify_samples', 'regress_samples',
           'classify_samples_ncv', 'regress_samples_ncv')


def _env(tmp_path_factory):
    """q2galaxy reads $CONDA_PREFIX/conda-meta for the tools' requirements; outside conda an
    empty one does. Each q2galaxy process gets a TMPDIR of its own."""
    prefix = tmp_path_factory.mktemp('conda-prefix')
    (prefix / 'conda-meta').mkdir()
    return dict(os.environ, CONDA_PREFIX=str(prefix), OMP_NUM_THREADS='1',
                XDG_CONFIG_HOME=str(tmp_path_factory.mktemp('config')),
                TMPDIR=str(tmp_path_factory.mktemp('tmp')))


@pytest.fixture(scope='module')
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp('galaxy')
    result = subprocess.run([str(BIN / 'q2galaxy'), 'template', 'plugin', 'aam', str(out)],
                            env=_env(tmp_path_factory), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / 'suite_qiime2__aam'


def _tool(suite, action):
    return ET.parse(suite / f'qiime2__aam__{action}.xml').getroot()


def test_every_action_becomes_a_well_formed_tool_with_every_parameter(suite):
    from qiime2.sdk import PluginManager
    plugin = PluginManager().plugins['aam']
    assert sorted(p.name for p in suite.glob('*.xml')) == sorted(
        f'qiime2__aam__{a}.xml' for a in ACTIONS)
    for action in ACTIONS:
        text = (suite / f'qiime2__aam__{action}.xml').read_text()
        assert 'NOT YET IMPLEMENTED' not in text.upper(), action
        tool = _tool(suite, action)
        names = {p.get('name') for p in tool.find('inputs').iter('param')} | \
            {c.get('name') for c in tool.find('inputs').iter('conditional')}
        signature = plugin.actions[action].signature
        expected = set(signature.inputs) | set(signature.parameters)
        assert expected <= names, (action, expected - names)


def _value(param, given):
    """What Galaxy writes to inputs.json for one parameter: the test's value, else the
    tool's default."""
    kind = param.get('type')
    raw = given if given is not None else param.get('value')
    if kind == 'data':
        return given
    if kind == 'boolean':
        checked = given in ('true', 'True') if given is not None else param.get('checked') == 'true'
        return param.get('truevalue') if checked else param.get('falsevalue')
    if kind == 'select':
        if given is not None:
            return given
        options = param.findall('option')
        chosen = [o for o in options if o.get('selected') == 'true'] or options[:1]
        return chosen[0].get('value') if chosen else None
    if raw in (None, ''):
        return None if kind in ('integer', 'float') else raw
    return {'integer': int, 'float': float}.get(kind, str)(raw)


def _inputs_json(tool, test, test_data):
    """inputs.json as Galaxy writes it for a tool's <test>: every parameter, defaults for
    those the test does not set, data as paths, metadata as a conditional."""
    given = {p.get('name'): p.get('value') for p in test.findall('param')}
    conditionals = {c.get('name'): {p.get('name'): p.get('value') for p in c.findall('param')}
                    for c in test.findall('conditional')}
    inputs = {}
    for node in tool.find('inputs').iter():
        if node.tag == 'conditional':
            values = conditionals.get(node.get('name'))
            if values is None:
                inputs[node.get('name')] = {'type': 'none'}
            else:
                inputs[node.get('name')] = {'type': values['type'],
                                            'source': str(test_data / values['source']),
                                            'column': [values['column']]}
        elif node.tag == 'param' and node.get('name') not in ('type', 'source', 'column'):
            value = _value(node, given.get(node.get('name')))
            if node.get('type') == 'data' and value is not None:
                value = str(test_data / value)
            inputs[node.get('name')] = value
    return inputs


@pytest.mark.parametrize('action', ACTIONS)
def test_each_tool_runs_its_own_test_as_galaxy_does(suite, action, tmp_path, tmp_path_factory):
    tool = _tool(suite, action)
    tests = tool.find('tests').findall('test')
    assert len(tests) == 1, 'one usage example, one action, one test'
    test = tests[0]
    inputs = _inputs_json(tool, test, suite / 'test-data')
    for name, value in inputs.items():
        if isinstance(value, str) and value.endswith(('.qza', '.tsv')):
            assert Path(value).is_file(), f'{action}: the test input {name} was not written'
    (tmp_path / 'inputs.json').write_text(json.dumps(inputs))
    command = re.search(r"q2galaxy run aam (\w+) '\$inputs'", tool.find('command').text)
    assert command and command.group(1) == action
    result = subprocess.run([str(BIN / 'q2galaxy'), 'run', 'aam', action, 'inputs.json'],
                            cwd=tmp_path, env=_env(tmp_path_factory), capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    for output in test.findall('output'):
        saved = [p for p in tmp_path.iterdir() if p.name.startswith(output.get('name') + '.')]
        assert len(saved) == 1, (action, output.get('name'), list(tmp_path.iterdir()))
        expected = output.find('.//has_line_matching')
        if expected is not None:        # the test's own assertion on the artifact's type
            import qiime2
            wanted = expected.get('expression').replace('\\[', '[').replace('\\]', ']')
            assert f'type: {qiime2.Artifact.peek(str(saved[0])).type}' == wanted
        else:                           # a visualization, or an artifact of the declared type
            from qiime2.sdk import PluginManager
            declared = PluginManager().plugins['aam'].actions[action].signature.outputs
            kind = str(declared[output.get('name')].qiime_type)
            assert saved[0].suffix == ('.qzv' if kind == 'Visualization' else '.qza'), \
                (action, output.get('name'), kind)


def test_server_paths_are_refused_under_galaxy(tmp_path):
    """In Galaxy a folder parameter must not name a path on the server outside the job."""
    code = ('import sys\n'
            'from q2_aam.actions import runs\n'
            'assert runs.safe_folder("tensorboard_dir", "/anywhere") == "/anywhere"\n'
            'sys.argv = ["/usr/bin/q2galaxy", "run", "aam", "fit", "inputs.json"]\n'
            'for path in ("/etc/q2-aam-logs", "../outside"):\n'
            '    try:\n'
            '        runs.safe_folder("tensorboard_dir", path)\n'
            '    except ValueError as e:\n'
            '        print("refused:", e)\n'
            'print("kept:", runs.safe_folder("checkpoint_dir", "logs/run"))\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout
    assert out.count('refused: Under Galaxy, tensorboard_dir must be a folder inside the '
                     'job\'s working directory') == 2
    assert 'kept: logs/run' in out
