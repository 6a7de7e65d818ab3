"""TensorFlow/Keras for LCA: every line of lca that imports TensorFlow or Keras lives here.

The same modules as `lca.torch`, one job each: `models` (the paper's networks,
the transformer, a user's builder), `parameters` (θ's layout of a Keras model and its
weights outside θ), `runtime` (threads, TF32, the loss, evaluation mode, GPUs),
`objective` and `per_class_objective` (full-split gradients in compiled
functions), `precision` (bfloat16 backward products), `allocation` (the
objective of a run directory), `training` (``lca train``'s trainer), `recorder`
(the ``model.fit`` callback, public as `lca.keras`), `replay` (mini-batch
gradients of recorded steps, for ``--causes``) and `checkpoints` (Keras weight files
read as θ, for ``lca import``). The rest of lca reaches them through
`lca.allocation.backends` and `lca.training.make_trainer`; importing this package
imports nothing of TensorFlow until a module is used.
"""
