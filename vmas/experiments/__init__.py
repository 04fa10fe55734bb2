"""The experiment harness: what every benchmark under ``tools/`` shares (issue 33).

Benchmarks are research code, not product: they live here, above the product modules (layer 9, nothing in the
package imports them), so a result JSON is made the same way whichever benchmark prints it.

- :mod:`vmas.experiments.runs` run folders (``<root>[/steps<S>]/<variant>/seed<N>``), the training pool (N jobs at
  once; a run with its ``model.pt`` is never retrained, an unfinished one resumes) and scores cached beside a model;
- :mod:`vmas.experiments.aggregate` spreads over sampling seeds and over training seeds (of per-model means),
  selection rules written as functions (their docstring goes into the result) and the result's ``meta``;
- :mod:`vmas.experiments.scoring` SynthMV test clips, the class judge, scores and baselines (moved out of
  ``evaluation``); :mod:`vmas.experiments.scene_scores` the structure benchmark's scores (out of ``structure``);
- :mod:`vmas.experiments.device_check` the measurements behind ``tools/gpu_check.py``;
- :mod:`vmas.experiments.report` several systems scored in one run (``tools/evaluate.py --generated a=DIR
  b=DIR``: one table, each system's missing clips) and the offline ``report.html`` (distributions, onsets over
  motion, mel spectrograms, audio links; matplotlib);
- :mod:`vmas.experiments.provenance` the ``meta`` block of a result JSON (commit, clean tree, date, machine, load,
  and the codec's training steps and weight hash, so two results that disagree can be traced to their inputs).
"""
