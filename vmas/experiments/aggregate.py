"""From per-run scores to the numbers a result JSON prints: spreads over seeds, the selection rule, the meta block.

Two sources of spread, never mixed silently:

- **sampling seeds**: one trained model generating with several seeds (:func:`over_sampling_seeds`);
- **training seeds**: several models of one variant; the reported spread is over the models' per-model means
  (:func:`over_training_seeds`), with the sampling spread beside it (``sampling_std``), because a training seed
  moves a score more than a sampling seed and a paper's ± is over trained models.

Selection before test (:func:`choose`): options (crossfade lengths, data fractions, step budgets) are compared on a
selection split with a rule written as a function whose docstring is recorded beside the choice; the test split is
then scored once, with the chosen option only.
"""
from __future__ import annotations

import inspect
import sys
import typing as tp

import numpy as np

from vmas.experiments.provenance import provenance

T = tp.TypeVar("T")


def spread(values: tp.Sequence[float], digits: tp.Optional[int] = 4) -> tp.Dict[str, float]:
    """``{mean, std}`` (population std) of ``values``, rounded to ``digits`` (None: not rounded)."""
    mean, std = float(np.mean(values)), float(np.std(values))
    return {"mean": round(mean, digits), "std": round(std, digits)} if digits is not None else {"mean": mean,
                                                                                                "std": std}


def over_sampling_seeds(runs: tp.Sequence[tp.Mapping[str, float]], digits: tp.Optional[int] = None,
                        drop_nan: bool = False, single: bool = True) -> tp.Dict[str, tp.Any]:
    """[{metric: value}] of one model over sampling seeds -> {metric: {mean, std, runs}} (``runs`` rounded to 4).

    ``single``: one seed gives its values as they are (no spread to report). ``drop_nan``: NaN values (a metric
    undefined for a seed) are left out, and a metric with none left is omitted.
    """
    if single and len(runs) == 1:
        return dict(runs[0])
    out: tp.Dict[str, tp.Any] = {}
    for k in runs[0]:
        vals = [float(r[k]) for r in runs if not (drop_nan and np.isnan(r[k]))]
        if vals:
            out[k] = dict(spread(vals, digits), runs=[round(v, 4) for v in vals])
    return out


def over_training_seeds(models: tp.Sequence[tp.Mapping[str, tp.Any]]) -> tp.Dict[str, tp.Any]:
    """Per-model results (each metric a number or ``{mean, std}`` over sampling seeds) -> each metric
    ``{mean, std, runs, sampling_std}``: mean and population std over the models (training seeds) of their
    per-model means; ``sampling_std`` the mean over models of their sampling-seed std. Strings (notes) are kept."""
    out: tp.Dict[str, tp.Any] = {}
    for k, v0 in models[0].items():
        if isinstance(v0, str):
            out[k] = v0
            continue
        means = [float(m[k]["mean"]) if isinstance(m[k], dict) else float(m[k]) for m in models]
        samp = [float(m[k]["std"]) if isinstance(m[k], dict) else 0.0 for m in models]
        out[k] = dict(spread(means, None), runs=[round(x, 4) for x in means], sampling_std=float(np.mean(samp)))
    return out


def rule_text(rule: tp.Callable[..., tp.Any]) -> str:
    """The selection rule as recorded in a result: the rule function's docstring, on one line."""
    return " ".join(inspect.getdoc(rule).split())


def choose(tried: tp.Mapping[T, tp.Any], rule: tp.Callable[[tp.Mapping[T, tp.Any]], T]) -> T:
    """The option ``rule`` picks from the selection scores ``tried`` ({option: scores}); a rule without a
    docstring is refused, because a result must say how its option was chosen (:func:`rule_text`)."""
    if not inspect.getdoc(rule):
        raise ValueError(f"selection rule {rule.__name__} has no docstring: write the rule down")
    chosen = rule(tried)
    if chosen not in tried:
        raise ValueError(f"selection rule {rule.__name__} chose {chosen!r}, which was not tried")
    return chosen


def result_meta(tool: str, argv: tp.Optional[tp.Sequence[str]],
                codecs: tp.Optional[tp.Mapping[str, tp.Any]] = None, **fields: tp.Any) -> tp.Dict[str, tp.Any]:
    """A result's ``meta``: the benchmark's own ``fields``, the command that made it (``python tools/<tool>.py
    ARGS``) and :func:`vmas.experiments.provenance.provenance` (commit, tree, machine, load, codecs)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return dict(fields, command=" ".join([f"python tools/{tool}.py", *map(str, args)]).rstrip(),
                **provenance(codecs))
