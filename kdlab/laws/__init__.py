"""Scaling laws of knowledge distillation: forms, fits, uncertainty and planning.

Modules (the paper's two laws, their fitting and compute-optimal planning):

- ``forms``: the supervised law (``chinchilla``: gamma = 1, ``paper``: gamma free) and the
  distillation law, in log space, for NumPy arrays and torch tensors;
- ``published``: the paper's coefficients and F(N) settings (``--coefficients paper``);
- ``objective``, ``optim``, ``grids``, ``fit``: batched multi-start Huber fits;
- ``bootstrap``: percentile intervals from resampling runs;
- ``compute``, ``plan``: compute accounting and compute-optimal distillation;
- ``io``: CSV / run-database / fit-JSON input and the checks that refuse bad input;
- ``cli``: ``kdlab fit | predict | plan``.

Nothing is imported here so that ``kdlab predict`` and ``kdlab plan`` start without torch.
"""
