"""Tag cleaner and merger: table-driven (SONIQUE's rule-based pass and user-control rules)."""
import pytest

from vmas.errors import VmasError
from vmas.tags.cleaner import clean_tags, merge_tags, parse_bpm, split_tag_arg


@pytest.mark.parametrize("text,expected", [
    ("Piano, Synths, Strings, Reflective, Slow tempo, 96 BPM",
     ["piano", "synths", "strings", "reflective", "slow tempo", "96 BPM"]),
    ("Tags: piano, PIANO, Piano ,  jazz", ["piano", "jazz"]),
    ("1. Guitar\n2. Drums\n- Rock", ["guitar", "drums", "rock"]),
    ("low quality, piano, background music, High Quality, music", ["piano"]),
    ("96bpm, tempo: 120, guitar", ["96 BPM", "guitar"]),           # only the first tempo survives
    ("1000 BPM, 12 bpm, guitar", ["guitar"]),                          # impossible tempos dropped
    ("ambient; lo-fi | chill", ["ambient", "lo-fi", "chill"]),
    ("\"Cinematic\", 'epic'.", ["cinematic", "epic"]),
    ("a very long sentence that is not a tag at all, harp", ["harp"]),
    ("", []),
    (["Piano, jazz", "JAZZ"], ["piano", "jazz"]),
])
def test_clean_tags(text, expected):
    assert clean_tags(text) == expected


@pytest.mark.parametrize("tag,bpm", [("96 BPM", 96.0), ("96bpm", 96.0), ("tempo: 120", 120.0),
                                     ("80 beats per minute", 80.0), ("piano", None), ("128", None),
                                     ("slow tempo", None)])
def test_parse_bpm(tag, bpm):
    assert parse_bpm(tag) == bpm


@pytest.mark.parametrize("kwargs,expected", [
    # user instruments/genres come first, auto tags after, duplicates removed
    (dict(auto=["piano", "ambient", "90 BPM"], instruments=["Guitar"], genres=["jazz"]),
     ["guitar", "jazz", "piano", "ambient", "90 BPM"]),
    # the user's tempo wins over the automatic one
    (dict(auto=["piano", "90 BPM"], tempo=120), ["piano", "120 BPM"]),
    # a user tempo written as a tag also wins
    (dict(auto=["piano", "90 BPM"], tags=["70 bpm"]), ["70 BPM", "piano"]),
    # negative tags are removed from the positive list
    (dict(auto=["piano", "drums", "rock"], negative=["Drums"]), ["piano", "rock"]),
    # auto tags are cleaned too
    (dict(auto=["Low quality", "PIANO"], tags=["piano"]), ["piano"]),
    (dict(), []),
    # trimming keeps the tempo
    (dict(auto=[f"tag{i}" for i in range(10)], tempo=100, max_tags=4), ["tag0", "tag1", "tag2", "100 BPM"]),
])
def test_merge_tags(kwargs, expected):
    assert merge_tags(**kwargs) == expected


def test_merge_rejects_absurd_tempo():
    with pytest.raises(VmasError, match="tempo 5000"):
        merge_tags(tempo=5000)


def test_split_tag_arg():
    assert split_tag_arg("piano, jazz ,") == ["piano", "jazz"]
    assert split_tag_arg(["a,b", "c"]) == ["a", "b", "c"]
    assert split_tag_arg(None) == []
