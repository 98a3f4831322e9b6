"""The plugin's actions: QIIME 2 views in, a settings plan, engine calls, views out.

One module per family (pretrain, fit, predict, pipelines) and the glue they share: input
checks (inputs), the settings plan (plan), run folders and resuming (runs), torchrun workers
(processes) and the stacked blend (blend). No torch model code lives here. Import each
action from its module
(`from q2_aam.actions.fit import fit`): the package re-exports nothing, so that
`q2_aam.actions.fit` is always the module.
"""
