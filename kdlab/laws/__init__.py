"""Scaling laws of knowledge distillation: forms, fits, uncertainty and planning.

Modules (the paper's two laws, their fitting and compute-optimal planning):

- ``forms``: the supervised law (``chinchilla``: gamma = 1, ``paper``: gamma free) and the
  distillation law, in log space, for NumPy arrays and torch tensors;
- ``published``: the paper's coefficients and F(N) settings (``--coefficients paper``);
- ``objective``, ``optim``, ``grids``, ``fit``: batched multi-start Huber fits;
- ``bootstrap``, ``samples``: percentile intervals from resampling runs, and every
  resample's coefficients kept in the fit JSON;
- ``compute``, ``plan``, ``search``: compute accounting and compute-optimal distillation,
  one problem or a batch, and the vectorised minimisers it uses;
- ``tradeoffs``: loss against budget, crossover, smallest student for a target loss,
  a verdict's robustness over resamples (batches of plans);
- ``io``: CSV / run-database / fit-JSON input and the checks that refuse bad input;
- ``cli``: ``kdlab fit | predict | plan``.

Nothing is imported here so that ``kdlab predict`` and ``kdlab plan`` start without torch.
"""
