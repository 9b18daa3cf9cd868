"""The report: results/<profile>/report.md rendered from the tables the notebooks and jobs wrote.

One module per template section (template ``paper/templates/X.md.j2`` is filled by
:mod:`sngrad.report.X`: experiment, results, summary, noise, theory, implementation,
reproducibility), one vocabulary for numbers (:mod:`.format`), the readers (:mod:`.read`),
the figure manifest as shown (:mod:`.figures`), and the command (:mod:`.render`). It imports
neither jax nor the analysis or noise-measurement modules.
"""
