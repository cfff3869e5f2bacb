"""``kdlab dashboard``: a local web page that turns a budget into a distillation strategy.

A person enters compute (FLOPs, GPU-hours or money), says whether a teacher exists or
must be trained and how many students it serves, and sees for every scenario what the
planner (kdlab.laws.plan, the one ``kdlab plan`` uses) advises, with curves against the
budget and how robust the verdict is over the fit's bootstrap resamples.

Modules, each below the next: ``inputs`` (the page's fields, checked one by one),
``laws`` (which coefficients: published, a fit JSON, or a fit of the run database),
``answer`` (the planner's results as the page shows them), ``server`` (the HTTP server
and its JSON API), ``cli`` (the command). ``static/`` holds the page: plain HTML,
JavaScript and SVG, shipped with the package, so it works offline.
"""
