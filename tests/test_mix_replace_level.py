"""``--mix replace --loudness off`` is the music alone at its generated level (issue 36): ``--music-gain`` is the
music's level relative to the video's own sound, so it applies with ``keep`` only (it once took 4 dB off the
replaced track: -40.7 LUFS against the wav's -36.3)."""
from pathlib import Path

import numpy as np

from vmas import mixing as M

SR = 32000


def _music(seconds: float, level: float = 0.05) -> np.ndarray:
    """A steady chord well under the true-peak ceiling (peak ~ 3 * level): the limiter never acts on it."""
    t = np.arange(round(seconds * SR)) / SR
    return (level * sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6))).astype(np.float32)


def test_replace_without_loudness_is_the_music_sample_for_sample():
    music = _music(4.0)
    plain = M.finish_audio(music, SR, None, options=M.MixOptions(mix="replace", loudness=None, fade_in=0,
                                                                 fade_out=0))
    assert plain.mode == "replace" and plain.gain_db == 0.0
    np.testing.assert_array_equal(plain.audio, music)  # no gain, no limiting: the very samples
    # with the default fades: untouched between them; an explicit --music-gain changes nothing with replace
    faded = M.finish_audio(music, SR, None, options=M.MixOptions(mix="replace", loudness=None, music_gain=-9.0))
    a, b = round(0.5 * SR), music.size - round(1.5 * SR)
    np.testing.assert_array_equal(faded.audio[a:b], music[a:b])
    # a target loudness is reached the same way whatever the gain (it was a no-op there already)
    norm = M.finish_audio(music, SR, None, options=M.MixOptions(mix="replace", loudness=-20.0))
    assert abs(M.integrated_loudness(norm.audio, SR) - (-20.0)) <= 0.1


def test_generate_replace_loudness_off_mp4_has_the_wav_level(tmp_path, capsys):
    """The README's command end to end: the mp4's decoded track (AAC) has the loudness of NAME.wav between the
    fades; `--music-gain` with `--mix replace` warns that it does nothing."""
    from test_generate import _video

    from vmas.cli import main
    from vmas.data import media

    video = _video(tmp_path / "clip.mp4", 3.0)
    out = tmp_path / "out"
    rc = main(["generate", str(video), "-o", str(out), "--model", "vmas-debug-random", "--top-k", "16", "-q",
               "--mix", "replace", "--loudness", "off", "--music-gain", "-6"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "warning: --music-gain has no effect with --mix replace" in err
    wav = media.read_audio(out / "clip.wav", sr=SR).numpy()
    mp4 = media.read_audio(out / "clip.mp4", sr=SR).numpy()
    a, b = round(0.5 * SR), round(1.5 * SR)  # the fades: 0.5 s in, 1.5 s out of 3 s
    n = min(wav.size, mp4.size)
    lufs_wav = M.integrated_loudness(wav[a: n - b], SR)
    lufs_mp4 = M.integrated_loudness(mp4[a: n - b], SR)
    # AAC coding and the -1 dBTP ceiling on a few peaks move it by a few tenths at most; the gain was 4 dB
    assert abs(lufs_mp4 - lufs_wav) < 0.5, (lufs_mp4, lufs_wav)
    assert Path(out / "clip.wav").is_file()
