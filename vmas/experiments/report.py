"""Several systems in one evaluation, and the report a reader can open offline (issue 34 part 3).

A paper's comparison table needs every system scored on the same clips with the same backbones and settings;
published V2M-bench numbers for one system differ by up to 0.7 FAD between papers that each re-ran the evaluation.
:func:`evaluate_systems` runs :func:`vmas.evaluation.evaluate` once per generated folder with one set of arguments,
checks that the backbones came out the same, and lists for each system the clips it lacks (a number that does not
cover enough clips is withheld as usual, so no system is scored on an easier subset).

:func:`write_html` writes ``report.html`` beside ``report.json``: the table; per metric, the distribution of the
per-clip scores of each system (``meta.per_clip``); per clip, the music's onsets over the video's motion curve with
the video peaks and the pairs the current AV-Align script counts (what AV-Align and the beat metrics see), mel
spectrograms of the reference and of each system's music, and links to the audio. Figures are matplotlib PNGs
embedded as data URIs; audio is linked by relative path: the page requests nothing from outside and opens from
disk (``tests/test_report.py`` checks this in headless Chromium).
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
import typing as tp
from pathlib import Path

import numpy as np

from vmas.errors import VmasError

PathLike = tp.Union[str, os.PathLike]

LOWER_IS_BETTER = {"fad", "kl", "fd"}
PER_CLIP_PLOTS = 6  # clips drawn in detail: each costs a Farneback pass and a mel spectrogram per system


# ------------------------------------------------------------------------------------------------ systems
def parse_systems(values: tp.Sequence[str]) -> tp.Dict[str, Path]:
    """``["ours=DIR", "vidmuse=DIR"]`` -> {name: folder}; a single value without ``=`` is named after its folder."""
    systems: tp.Dict[str, Path] = {}
    for v in values:
        name, sep, folder = v.partition("=")
        if not sep:
            if len(values) > 1:
                raise VmasError(f"--generated {v}: with several folders name each one, e.g. ours={v}")
            name, folder = Path(v).name or "generated", v
        if not name or not folder:
            raise VmasError(f"--generated {v}: write NAME=FOLDER")
        if name in systems:
            raise VmasError(f"--generated: system name '{name}' is given twice")
        systems[name] = Path(folder)
    return systems


def missing_clips(generated: PathLike, manifest: PathLike, layout: str = "manifest", split: tp.Optional[str] = None,
                  limit: int = 0) -> tp.List[str]:
    """Ids of the manifest's clips without generated music in ``generated`` (``<id>.*`` or ``<video stem>.*``)."""
    from vmas.evaluation import find_audio, load_clips

    clips = load_clips(manifest, layout, split)[: limit or None]
    return [c["id"] for c in clips
            if find_audio(Path(generated), c["id"], Path(c["video"]).stem if c.get("video") else None) is None]


def evaluate_systems(systems: tp.Mapping[str, PathLike], manifest: tp.Optional[PathLike] = None,
                     **kwargs: tp.Any) -> tp.Dict[str, tp.Any]:
    """One :func:`vmas.evaluation.evaluate` per system with the same ``manifest`` and ``kwargs``.

    Returns ``{"systems": {name: report}, "missing": {name: [clip ids]}, "meta": {...}}``; ``meta.backbones`` is the
    one set of backbones every system was scored with (a difference raises: the table would compare unlike
    numbers)."""
    from vmas.evaluation import evaluate

    if not systems:
        raise VmasError("no generated folders given")
    reports = {name: evaluate(folder, manifest, **kwargs) for name, folder in systems.items()}
    def setting(b: tp.Any) -> str:  # a backbone's description without its clip counts (those differ by design)
        b = {k: v for k, v in b.items() if k != "clips"} if isinstance(b, dict) else b
        return json.dumps(b, sort_keys=True, default=str)

    backbones = {name: r["meta"].get("backbones", {}) for name, r in reports.items()}
    first = next(iter(backbones.values()))
    for name, b in backbones.items():
        for metric in set(b) & set(first):
            if setting(b[metric]) != setting(first[metric]):
                raise VmasError(f"{metric}: system '{name}' was scored with a different backbone than the first "
                                "system; evaluate all systems in one run")
    missing = {}
    if manifest is not None:
        sel = {k: kwargs[k] for k in ("layout", "split", "limit") if k in kwargs}
        missing = {name: missing_clips(folder, manifest, **sel) for name, folder in systems.items()}
    settings = {k: v for k, v in kwargs.items() if k not in ("progress", "model")}
    return {"systems": reports, "missing": missing,
            "meta": {"manifest": str(manifest) if manifest else None, "folders": {n: str(f) for n, f in
                                                                                 systems.items()},
                     "settings": settings, "backbones": first,
                     "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}}


def reported_metrics(multi: tp.Mapping[str, tp.Any]) -> tp.List[str]:
    """Report keys any system has, in the evaluation's order."""
    from vmas.evaluation import REPORTED

    keys = []
    for m in REPORTED:
        for r in multi["systems"].values():
            if m in r or m in r.get("meta", {}).get("withheld", {}):
                keys.append(m)
                break
    return keys


def _cell(report: tp.Mapping[str, tp.Any], metric: str) -> str:
    v = report.get(metric)
    if isinstance(v, dict):  # retrieval: {"R@1": .., "R@10": ..}
        return " / ".join(f"{k} {x:.3f}" for k, x in v.items())
    if v is None:
        return "—"
    cov = report.get("coverage", {}).get(metric, {})
    part = f" ({cov['clips']}/{cov['of']})" if cov and cov.get("clips") != cov.get("of") else ""
    return f"{v:.4f}{part}"


def systems_table(multi: tp.Mapping[str, tp.Any]) -> str:
    """Markdown: one row per metric, one column per system; "—" is a number not computed or withheld (reasons
    below the table), "(n/N)" a number covering n of N clips."""
    from vmas.evaluation import NAMES

    names = list(multi["systems"])
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for m in reported_metrics(multi):
        arrow = " ↓" if m in LOWER_IS_BETTER else ""
        lines.append(f"| {NAMES.get(m, m)}{arrow} | " + " | ".join(_cell(multi["systems"][n], m) for n in names)
                     + " |")
    notes = []
    for n in names:
        meta = multi["systems"][n].get("meta", {})
        for m, why in {**meta.get("skipped", {}), **meta.get("withheld", {})}.items():
            notes.append(f"- {n}: {m}: {why}")
        for f in meta.get("fallbacks", []):
            notes.append(f"- {n}: not the paper backbone, not comparable with published numbers: {f}")
        if multi.get("missing", {}).get(n):
            ids = multi["missing"][n]
            notes.append(f"- {n}: {len(ids)} clip(s) without generated music: {', '.join(ids[:50])}"
                         + (" ..." if len(ids) > 50 else ""))
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def write_systems_report(multi: tp.Mapping[str, tp.Any], out: PathLike) -> Path:
    """``report.json`` (the whole structure) and ``report.md`` (:func:`systems_table`) -> the .md path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(multi, indent=2, default=str) + "\n")
    md = out.with_suffix(".md")
    md.write_text(systems_table(multi))
    return md


def single_as_multi(report: tp.Mapping[str, tp.Any], name: str = "generated") -> tp.Dict[str, tp.Any]:
    """A one-system report in the shape :func:`write_html` draws."""
    meta = report.get("meta", {})
    settings = {"layout": meta.get("layout", {}).get("name", "manifest"), "reference": meta.get("reference")}
    return {"systems": {name: report}, "missing": {name: list(meta.get("missing_generated_ids", []))},
            "meta": {"manifest": meta.get("manifest"), "folders": {name: meta.get("generated")},
                     "backbones": meta.get("backbones", {}), "settings": settings}}


# ------------------------------------------------------------------------------------------------ figures
def _png(fig) -> str:
    """A matplotlib figure as a data URI (the page stays one self-contained file)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def distribution_figure(metric: str, values: tp.Mapping[str, tp.Sequence[float]]) -> str:
    """Box plot with the per-clip points of each system for one metric -> data URI."""
    from vmas.evaluation import NAMES

    plt = _pyplot()
    names = [n for n in values if len(values[n])]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 2.8))
    data = [np.asarray(values[n], dtype=np.float64) for n in names]
    ax.boxplot(data, showfliers=False)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=10, alpha=0.6)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_title(f"{NAMES.get(metric, metric)} per clip")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def clip_figure(motion: np.ndarray, fps: float, tracks: tp.Mapping[str, tp.Any]) -> str:
    """One row per track: the motion curve, its video peaks (the current AV-Align script's, >= 0.1), the track's
    onsets as vertical lines and the counted pairs (onset -> video peak) marked -> data URI.

    ``tracks``: name -> :class:`vmas.metrics.av_align.AVAlignClip` of that track's music on this video."""
    plt = _pyplot()
    t = np.arange(len(motion)) / fps
    fig, axes = plt.subplots(len(tracks), 1, figsize=(9, 1.7 * len(tracks)), sharex=True, squeeze=False)
    for ax, (name, clip) in zip(axes[:, 0], tracks.items()):
        ax.plot(t, motion, color="0.35", lw=1, label="motion")
        peaks = np.asarray(clip.video_peaks)
        idx = np.clip(np.round(peaks * fps).astype(int), 0, len(motion) - 1)
        ax.scatter(peaks, motion[idx], color="tab:blue", s=14, zorder=3, label="video peaks")
        for a in clip.audio_peaks:
            ax.axvline(a, color="tab:orange", lw=0.7, alpha=0.6)
        for i, j in clip.pairs:
            ax.plot([clip.audio_peaks[i], peaks[j]], [motion[idx[j]]] * 2, color="tab:green", lw=2)
            ax.scatter([peaks[j]], [motion[idx[j]]], marker="*", s=70, color="tab:green", zorder=4)
        ax.set_ylabel(name, fontsize=8)
        ax.set_title(f"{name}: AV-Align {clip.score:.3f} ({len(clip.pairs)} matched, {len(clip.audio_peaks)} "
                     f"onsets, {len(peaks)} video peaks)", fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("time (s): orange = onsets, blue = video peaks, green star = counted pair")
    return _png(fig)


def mel_figure(waves: tp.Mapping[str, np.ndarray], sr: int = 22050) -> str:
    """Log-mel spectrograms (64 bands, hop 512) of each track, one row each -> data URI."""
    import librosa

    plt = _pyplot()
    fig, axes = plt.subplots(len(waves), 1, figsize=(9, 1.6 * len(waves)), sharex=True, squeeze=False)
    for ax, (name, y) in zip(axes[:, 0], waves.items()):
        mel = librosa.power_to_db(librosa.feature.melspectrogram(y=np.asarray(y, np.float32), sr=sr, n_mels=64),
                                  ref=1.0)
        ax.imshow(mel, origin="lower", aspect="auto", extent=(0, len(y) / sr, 0, 64), cmap="magma")
        ax.set_ylabel(name, fontsize=8)
    axes[-1, 0].set_xlabel("time (s), 64 mel bands")
    return _png(fig)


# ------------------------------------------------------------------------------------------------ HTML
def _clip_details(multi: tp.Mapping[str, tp.Any], out_dir: Path, limit: int) -> tp.List[str]:
    """HTML of the per-clip section for the first ``limit`` clips that have a video."""
    from vmas.evaluation import find_audio, load_clips, reference_source
    from vmas.metrics import av_align as av
    from vmas.metrics.beat import load_22k
    from vmas.metrics.mv_align import read_video_frames

    meta = multi["meta"]
    if not meta.get("manifest") or limit <= 0:
        return []
    settings = meta.get("settings", {})
    try:
        clips = load_clips(meta["manifest"], settings.get("layout", "manifest"), settings.get("split"))
    except VmasError as err:
        return [f"<p>clips not drawn: {html.escape(str(err))}</p>"]
    clips = [c for c in clips[: settings.get("limit") or None] if c.get("video")][:limit]
    ref_dir = Path(settings["reference"]) if settings.get("reference") else None
    parts = []
    for c in clips:
        stem = Path(c["video"]).stem
        files = {n: find_audio(Path(f), c["id"], stem) for n, f in meta["folders"].items()}
        ref_path, ref_span = reference_source(c, ref_dir)
        try:
            frames, fps = read_video_frames(c["video"], float(c.get("start") or 0.0), c.get("duration"))
            motion = av.motion_from_frames(frames)
            tracks, waves, links = {}, {}, []
            sources = ([("reference", ref_path, ref_span)] if ref_path else []) + [
                (n, p, None) for n, p in files.items() if p is not None]
            for name, path, span in sources:
                tracks[name] = av.score_motion(av.read_onsets(path, *(span or (0.0, None))), motion, fps)
                waves[name] = load_22k(path, False, *(span or (0.0, None)))
                rel = html.escape(os.path.relpath(Path(path).resolve(), out_dir.resolve()))
                links.append(f'<li>{html.escape(name)}: <a href="{rel}">{html.escape(Path(path).name)}</a> '
                             f'<audio controls preload="none" src="{rel}"></audio>'
                             + (f" (span {span[0]:.1f} s +{span[1]} s)" if span else "") + "</li>")
            absent = [n for n, p in files.items() if p is None]
            parts.append(
                f'<section class="clip"><h3>{html.escape(c["id"])}</h3>'
                f'<p>video: {html.escape(str(c["video"]))} ({fps:.3f} fps, {len(motion)} frames)'
                + (f"; no music from: {html.escape(', '.join(absent))}" if absent else "") + "</p>"
                f'<img alt="onsets over motion, {html.escape(c["id"])}" src="{clip_figure(motion, fps, tracks)}">'
                f'<img alt="mel spectrograms, {html.escape(c["id"])}" src="{mel_figure(waves)}">'
                f"<ul>{''.join(links)}</ul></section>")
        except VmasError as err:  # one unreadable clip: said on the page, the rest is drawn
            parts.append(f'<section class="clip"><h3>{html.escape(c["id"])}</h3><p>not drawn: '
                         f"{html.escape(str(err))}</p></section>")
    return parts


STYLE = """body{font:14px sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}
td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th:first-child,td:first-child{text-align:left}
img{display:block;margin:.5em 0;max-width:100%}.dist img{display:inline-block;margin-right:1em}
code{background:#f3f3f3}"""


def write_html(multi: tp.Mapping[str, tp.Any], out: PathLike, detail_clips: int = PER_CLIP_PLOTS) -> Path:
    """``report.html``: table, per-metric distributions, per-clip figures and audio links; no external requests."""
    from vmas.evaluation import NAMES

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(multi["systems"])
    metrics = reported_metrics(multi)
    rows = "".join(
        f"<tr><td>{html.escape(NAMES.get(m, m))}{' ↓' if m in LOWER_IS_BETTER else ''}</td>"
        + "".join(f"<td>{html.escape(_cell(multi['systems'][n], m))}</td>" for n in names) + "</tr>"
        for m in metrics)
    table = (f"<table><tr><th>metric</th>{''.join(f'<th>{html.escape(n)}</th>' for n in names)}</tr>{rows}</table>")
    notes = [line[2:] for line in systems_table(multi).splitlines() if line.startswith("- ")]
    dists = []
    for m in metrics:
        values = {n: list(multi["systems"][n].get("meta", {}).get("per_clip", {}).get(m, {}).values()) for n in names}
        if any(values.values()):
            dists.append(f'<img alt="distribution of {html.escape(m)}" src="{distribution_figure(m, values)}">')
    meta = multi.get("meta", {})
    settings = json.dumps(meta.get("settings", {}), default=str, sort_keys=True)
    backbones = json.dumps(meta.get("backbones", {}), default=str, sort_keys=True)
    body = [
        "<h1>Evaluation report</h1>",
        f"<p>manifest: <code>{html.escape(str(meta.get('manifest')))}</code>; systems: "
        + ", ".join(f"{html.escape(n)} = <code>{html.escape(str(f))}</code>" for n, f in meta.get("folders",
                                                                                               {}).items())
        + f"; {html.escape(str(meta.get('date', '')))}</p>",
        "<h2>Table</h2>", table,
        ("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>") if notes else "",
        f"<details><summary>settings and backbones (the same for every system)</summary><pre>"
        f"{html.escape(settings)}\n{html.escape(backbones)}</pre></details>",
        "<h2>Per-clip distributions</h2>", f'<div class="dist">{"".join(dists) or "<p>no per-clip scores</p>"}</div>',
        "<h2>Clips</h2>",
        "<p>Top: each track's onsets (orange) over the video's motion curve with the video peaks the current "
        "AV-Align script counts (blue, maxima &ge; 0.1) and the pairs it matches (green). Bottom: mel "
        "spectrograms. Audio is linked by relative path.</p>",
        *_clip_details(multi, out.parent, detail_clips),
    ]
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Evaluation report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    out.write_text(page, encoding="utf-8")
    return out
