"""The experiment harness: what every benchmark under ``tools/`` shares (issue 33).

Benchmarks are research code, not product: they live here, above the product modules (layer 9, nothing in the
package imports them), so a result JSON is made the same way whichever benchmark prints it.

- :mod:`vmas.experiments.provenance` the ``meta`` block of a result JSON (commit, clean tree, date, machine, load,
  and the codec's training steps and weight hash, so two results that disagree can be traced to their inputs).
"""
