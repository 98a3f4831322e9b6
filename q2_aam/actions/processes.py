"""`--p-processes N`: an action run as N torchrun workers on this machine (one per GPU
where there are GPUs). The inputs are written as `qiime tools export` writes them, and each
worker runs q2_aam/launch.py on them, exactly as a multi-node run does."""
import json
import os

import pandas as pd
import qiime2

from . import inputs
from ..engine import savedmodel

# set by `qiime aam ... --p-processes N` for its workers (q2_aam/launch.py), which then
# leave the import of the model folder to the action
FROM_ACTION = 'Q2_AAM_LAUNCHED_BY_ACTION'
NOT_RESUMABLE = ('checkpoint_dir: a run on several processes cannot be resumed yet; leave '
                 'checkpoint_dir out, or use processes 1.')


def on_processes(action, views, arguments):
    """Run ``action`` on arguments['processes'] workers and return rank 0's model."""
    import subprocess
    import sys
    import tempfile
    n = arguments['processes']
    if arguments.get('checkpoint_dir'):
        raise ValueError(NOT_RESUMABLE)
    with tempfile.TemporaryDirectory(prefix='q2-aam-processes-') as tmp:
        args = [f'--output={tmp}/model']
        for name, view in views.items():
            if view is not None and name in ('metadata', 'groups'):
                args += [f'--{name}-file={export(name, view, tmp)}',
                         f'--{name}-column={view.name}']
            elif view is not None:
                args.append(f'--{name.replace("_", "-")}={export(name, view, tmp)}')
        args += [f'--set={k}={json.dumps(v)}' for k, v in arguments.items()
                 if k != 'processes' and v is not None]
        command = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                   f'--nproc-per-node={n}', '-m', 'q2_aam.launch', action] + args
        inputs.note(f'training on {n} processes (torchrun): {" ".join(command[:6])} …')
        done = subprocess.run(command, env={**os.environ, FROM_ACTION: '1'})
        if done.returncode != 0:
            raise RuntimeError(f'The {n} training processes failed (exit status '
                               f'{done.returncode}); their messages are above.')
        saved = savedmodel.load(f'{tmp}/model')
    saved.config['training']['processes'] = n
    return saved


def export(name, view, folder):
    """One input as the file q2_aam/launch.py reads (what `qiime tools export` gives)."""
    path = os.path.join(folder, name)
    if name == 'table':
        from biom.util import biom_open
        view = inputs.as_table(view)
        with biom_open(path + '.biom', 'w') as fh:
            view.to_hdf5(fh, 'q2-aam')
        return path + '.biom'
    if name == 'sequences':
        with open(path + '.fasta', 'w') as fh:
            fh.writelines(f'>{i}\n{s}\n' for i, s in view.items())
        return path + '.fasta'
    if name in ('distance_matrix', 'phylogeny'):
        view.write(path)
        return path
    if name == 'alpha_diversity':
        pd.Series(view).rename('alpha').to_csv(path + '.tsv', sep='\t', index_label='id')
        return path + '.tsv'
    if name in ('metadata', 'groups'):
        kind = 'numeric' if isinstance(view, qiime2.NumericMetadataColumn) else 'categorical'
        series = view.to_series()
        with open(path + '.tsv', 'w') as fh:
            fh.write(f'id\t{view.name}\n#q2:types\t{kind}\n')
            series.to_csv(fh, sep='\t', header=False)
        return path + '.tsv'
    savedmodel.save(view, path)          # a model: pretrained or continue_from
    return path
