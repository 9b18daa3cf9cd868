"""The theory sections of the report: simulators, the closed forms they are checked against,
and the checks themselves.

One idea per module:

- ``processes``: the losses (``Quadratic``, ``DoubleWell``) and the stationary statistics of a
  simulation (``Stationary``, ``mean_and_se``);
- ``simulate``: many independent chains of SGD, heavy-ball momentum or an sngrad variant in one
  jitted scan (``simulate``), and noise-free descent paths (``descent_path``);
- ``closed_forms``: exact stationary variances of linear maps on quadratics, their SDE limit,
  batch-standard-deviation expectations, the heavy-ball rate;
- ``variant_maps``: the sngrad variants' gain moments and variant II's stationary law;
- ``control_variates``: SVRG-snapshot control variates, their simulator and closed forms;
- ``pass_rule``: a measurement against its own Monte Carlo standard error (``FLOOR``,
  ``Z_BOUND``, ``z_score``, ``passes``, ``resolves``);
- ``record``: the table of checks the theory notebook writes (``CheckRecord``);
- ``checks_quadratic`` (a, b, d), ``checks_double_well`` (c), ``checks_variants`` (e, e'),
  ``checks_descent`` (f), ``checks_control_variates`` (g): the checks of each section of
  analysis/theory.py, which runs them, draws the figures and writes the outputs.
"""
