"""`pretrain` and `fit` as torchrun workers, on inputs exported from QIIME 2 artifacts.

Why the actions themselves: a run on many GPUs or nodes is then the same code as
`qiime aam pretrain` / `fit` on one device. Every rank reads the inputs and runs the action;
torch.distributed splits each global batch between the ranks (engine/distributed.py), and
rank 0 writes the model folder, which `qiime tools import` turns into the artifact:

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m q2_aam.launch pretrain --table table.biom --sequences dna-sequences.fasta \\
        --phylogeny tree.nwk --output encoder-folder --set epochs=100
    qiime tools import --type 'AAMModel[AAMEncoder]' --input-path encoder-folder \\
        --output-path encoder.qza

`qiime aam pretrain --p-processes N` (and fit) run exactly this through torchrun on one
machine.
"""
import argparse
import contextlib
import json
import os
import sys

from ._types import TASK_OF_TYPE

TYPE_OF_TASK = {task: name for name, task in TASK_OF_TYPE.items()}


def _read_inputs(args):
    """The exported files as the views the actions take."""
    import biom
    import pandas as pd
    import skbio
    from .engine import savedmodel
    seqs = {str(s.metadata['id']): str(s) for s in
            skbio.io.read(args.sequences, format='fasta', constructor=skbio.DNA,
                          lowercase=True)}
    views = {'table': biom.load_table(args.table), 'sequences': pd.Series(seqs)}
    if args.distance_matrix:
        views['distance_matrix'] = skbio.DistanceMatrix.read(args.distance_matrix)
    if args.phylogeny:
        views['phylogeny'] = skbio.TreeNode.read(args.phylogeny)
    if args.alpha_diversity:
        alpha = pd.read_csv(args.alpha_diversity, sep='\t', index_col=0, comment=None)
        views['alpha_diversity'] = alpha.iloc[:, 0].astype(float)
    for name in ('pretrained', 'continue_from'):
        if getattr(args, name):
            views[name] = savedmodel.load(getattr(args, name))
    if args.action == 'fit':
        import qiime2
        views['metadata'] = qiime2.Metadata.load(args.metadata_file).get_column(
            args.metadata_column)
        if args.groups_file:
            views['groups'] = qiime2.Metadata.load(args.groups_file).get_column(
                args.groups_column)
    return views


def _parameters(pairs):
    """--set NAME=VALUE pairs; values are read as JSON where they parse (numbers, true)."""
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition('=')
        if not sep:
            raise SystemExit(f'--set {pair!r}: write NAME=VALUE, e.g. --set epochs=100')
        try:
            params[name.replace('-', '_')] = json.loads(value)
        except json.JSONDecodeError:
            params[name.replace('-', '_')] = value
    return params


def run(argv=None):
    p = argparse.ArgumentParser(prog='python -m q2_aam.launch', description=__doc__.split(
        '\n')[0])
    p.add_argument('action', choices=['pretrain', 'fit'])
    p.add_argument('--table', required=True, help='feature-table.biom (qiime tools export)')
    p.add_argument('--sequences', required=True, help='dna-sequences.fasta')
    p.add_argument('--distance-matrix', help='distance-matrix.tsv')
    p.add_argument('--phylogeny', help='tree.nwk (pretrain: instead of a distance matrix)')
    p.add_argument('--alpha-diversity', help='alpha-diversity.tsv (pretrain)')
    p.add_argument('--pretrained', help='an exported encoder folder')
    p.add_argument('--continue-from', help='an exported fitted model folder (fit)')
    p.add_argument('--metadata-file', help='metadata.tsv (fit)')
    p.add_argument('--metadata-column', help='the column to predict (fit)')
    p.add_argument('--groups-file', help='metadata.tsv with each sample\'s subject (fit)')
    p.add_argument('--groups-column', help='the column naming the subjects (fit)')
    p.add_argument('--output', required=True, help='the model folder to write (rank 0)')
    p.add_argument('--set', action='append', default=[], metavar='NAME=VALUE',
                   help='an action parameter, as `qiime aam ACTION --help` names it')
    args = p.parse_args(argv)
    if args.action == 'fit' and not (args.metadata_file and args.metadata_column):
        raise SystemExit('fit needs --metadata-file and --metadata-column')
    from .actions import fit, pretrain, processes
    from .engine import distributed, savedmodel
    ctx = distributed.init_from_environment()
    params = _parameters(args.set)
    params.pop('processes', None)          # this run is the processes
    if ctx.distributed and params.get('checkpoint_dir'):
        raise SystemExit(processes.NOT_RESUMABLE)
    if not ctx.main:               # one rank speaks and writes; the others only compute
        params['tensorboard_dir'] = ''
    quiet = open(os.devnull, 'w') if not ctx.main else None
    with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext(), \
            contextlib.redirect_stderr(quiet) if quiet else contextlib.nullcontext():
        views = _read_inputs(args)
        if args.action == 'pretrain':
            saved = pretrain.pretrain(**views, **params)
        else:                      # the model alone: importance is the calling action's
            saved = fit.fit_model({k: views.get(k) for k in fit.VIEWS},
                                  fit.with_defaults(params))
    if ctx.main:
        saved.config['training']['processes'] = ctx.world
        savedmodel.save(saved, args.output)
        if not os.environ.get(processes.FROM_ACTION):
            print(f'q2-aam: wrote {args.output} (trained on {ctx.world} process'
                  f'{"es" if ctx.world > 1 else ""}); import it with qiime tools import '
                  f"--type 'AAMModel[{TYPE_OF_TASK[saved.task]}]' --input-path {args.output}")
    if ctx.distributed:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()


if __name__ == '__main__':
    sys.exit(run())
