"""TensorFlow/Keras for LCA: every line of lca that imports TensorFlow or Keras lives here.

The same modules as :mod:`lca.torch`, one job each: :mod:`.models` (the paper's networks,
the transformer, a user's builder), :mod:`.parameters` (θ's layout of a Keras model and its
weights outside θ), :mod:`.runtime` (threads, TF32, the loss, evaluation mode, GPUs),
:mod:`.objective` and :mod:`.per_class_objective` (full-split gradients in compiled
functions), :mod:`.precision` (bfloat16 backward products), :mod:`.allocation` (the
objective of a run directory), :mod:`.training` (``lca train``'s trainer), :mod:`.recorder`
(the ``model.fit`` callback, public as :mod:`lca.keras`), :mod:`.replay` (mini-batch
gradients of recorded steps, for ``--causes``) and :mod:`.checkpoints` (Keras weight files
read as θ, for ``lca import``). The rest of lca reaches them through
:mod:`lca.allocation.backends` and :func:`lca.training.make_trainer`; importing this package
imports nothing of TensorFlow until a module is used.
"""
