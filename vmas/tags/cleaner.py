"""Rule-based tag cleaning and merging (SONIQUE's post-LLM pass, SPEC §7).

LLM output is noisy: numbered lists, "Tags:" prefixes, duplicates in different case, tempo written five ways, and
meta words that describe the recording rather than the music ("low quality", "background music"). The cleaner
turns any of that into a short list of canonical tags; the merger combines automatic tags with the user's
instruments / genres / tempo, with the user winning every conflict.
"""
from __future__ import annotations

import re
import typing as tp

# Words that say nothing about how the music should sound (or describe audio quality): dropped.
META_TAGS = {
    "low quality", "high quality", "good quality", "bad quality", "poor quality", "audio quality", "quality",
    "hq", "lq", "hd", "noisy", "amateur recording", "professional recording", "recording", "music",
    "background music", "song", "track", "audio", "sound", "video", "instrumental music", "tags", "none", "n/a",
    "unknown", "various", "other", "mp3", "youtube", "copyright free", "royalty free", "no copyright",
}
_BPM_RE = re.compile(r"^(?:tempo\s*[:=]?\s*)?(\d+(?:\.\d+)?)\s*(?:bpm|beats per minute)?$", re.IGNORECASE)
_BPM_ANY_RE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*(?:bpm|beats per minute)", re.IGNORECASE)
_PREFIX_RE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s*")  # list bullets "- ", "1. ", "2) "
_LABEL_RE = re.compile(r"^\s*(?:tags?|music tags?|answer|output)\s*:\s*", re.IGNORECASE)
MIN_BPM, MAX_BPM = 30, 300


def format_bpm(bpm: float) -> str:
    return f"{int(round(bpm))} BPM"


def parse_bpm(tag: str) -> tp.Optional[float]:
    """'96 bpm' / '96BPM' / 'tempo: 96' / '96 beats per minute' -> 96.0; anything else -> None."""
    t = tag.strip()
    m = _BPM_RE.match(t)
    if m and (re.search(r"bpm|beats|tempo", t, re.IGNORECASE)):
        return float(m.group(1))
    m = _BPM_ANY_RE.search(t)
    return float(m.group(1)) if m else None


def _canonical(tag: str) -> str:
    """Normalise spacing and case: 'ACOUSTIC   guitar' -> 'acoustic guitar' (BPM tags keep 'BPM')."""
    tag = re.sub(r"\s+", " ", tag.strip().strip("\"'`.;:!").strip())
    bpm = parse_bpm(tag)
    if bpm is not None:
        return format_bpm(bpm)
    return tag.lower()


def clean_tags(text: tp.Union[str, tp.Sequence[str]], max_tags: int = 16) -> tp.List[str]:
    """Free text or a list of tags -> cleaned, de-duplicated tags in their original order.

    Rules: split on commas, semicolons, newlines and '|'; strip list bullets and "Tags:" labels; lowercase;
    canonical tempo "N BPM" (out-of-range tempos dropped, only the first tempo kept); drop meta/quality words and
    empty or over-long (> 5 words) fragments; keep at most ``max_tags``.
    """
    if isinstance(text, str):
        lines = [_LABEL_RE.sub("", _PREFIX_RE.sub("", line)) for line in text.splitlines()]
        pieces = [p for line in lines for p in re.split(r"[,;|]", line)]
    else:
        pieces = [p for item in text for p in re.split(r"[,;|]", item)]
    out: tp.List[str] = []
    seen = set()
    have_bpm = False
    for piece in pieces:
        tag = _canonical(_PREFIX_RE.sub("", piece))
        if not tag or tag in META_TAGS or len(tag.split()) > 5:
            continue
        bpm = parse_bpm(tag)
        if bpm is not None:
            if have_bpm or not (MIN_BPM <= bpm <= MAX_BPM):
                continue
            have_bpm = True
        if tag not in seen:
            seen.add(tag)
            out.append(tag)
    return out[:max_tags]


def merge_tags(auto: tp.Sequence[str] = (), tags: tp.Sequence[str] = (), instruments: tp.Sequence[str] = (),
               genres: tp.Sequence[str] = (), tempo: tp.Optional[float] = None, negative: tp.Sequence[str] = (),
               max_tags: int = 16) -> tp.List[str]:
    """Combine automatic tags with user controls; the user wins.

    Order: user instruments, user genres, user free tags, then automatic tags. A user tempo replaces any tempo
    among the other tags. A tag the user listed as negative is removed from the positive list.
    """
    user = clean_tags([*instruments, *genres, *tags], max_tags=max_tags)
    automatic = clean_tags(list(auto), max_tags=max_tags)
    neg = set(clean_tags(list(negative), max_tags=max_tags))
    merged: tp.List[str] = []
    user_has_bpm = any(parse_bpm(t) is not None for t in user)
    for tag in [*user, *automatic]:
        is_bpm = parse_bpm(tag) is not None
        if tag in neg or tag in merged:
            continue
        if is_bpm and (tempo is not None or (user_has_bpm and tag in automatic and tag not in user)):
            continue
        if is_bpm and any(parse_bpm(t) is not None for t in merged):
            continue
        merged.append(tag)
    if tempo is not None:
        if not (MIN_BPM <= tempo <= MAX_BPM):
            from vmas.errors import VmasError

            raise VmasError(f"tempo {tempo} BPM is outside {MIN_BPM}-{MAX_BPM}: pass e.g. --tempo 96")
        merged.append(format_bpm(tempo))
    if len(merged) > max_tags:  # keep the user's tempo even when trimming
        bpm = [t for t in merged if parse_bpm(t) is not None]
        rest = [t for t in merged if parse_bpm(t) is None][: max_tags - len(bpm)]
        merged = rest + bpm
    return merged


def split_tag_arg(value: tp.Union[str, tp.Sequence[str], None]) -> tp.List[str]:
    """CLI helper: "piano, jazz" or ["piano", "jazz"] -> ["piano", "jazz"] (no cleaning)."""
    if not value:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [p.strip() for item in items for p in item.split(",") if p.strip()]
