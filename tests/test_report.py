"""Several systems in one report (issue 34 part 3): ``tools/evaluate.py --generated ours=DIR other=DIR``.

The command writes one table (same clips, backbones and settings; a system's missing clips listed), report.json /
report.md, and report.html, which is opened in the headless Chromium the app test uses (Debian's chromium +
chromium-driver, ``make browser``): the page loads, every image renders, and nothing is requested from outside.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vmas.experiments import report as rep

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _clicks(path, times, seconds=4.0, sr=22050):
    import soundfile as sf

    rng = np.random.default_rng(len(times))
    wav = np.zeros(int(seconds * sr), np.float32)
    for t in times:
        k = int(t * sr)
        wav[k: k + 2000] += rng.standard_normal(2000).astype(np.float32) * np.exp(-np.arange(2000) / 300) * 0.5
    sf.write(str(path), wav, sr, subtype="PCM_16")


def _video(path, events):
    """A textured square jumping at the given frames (motion peaks there), 40 MJPG frames at 10 fps."""
    from test_metric_parity import _event_video

    _event_video(path, events, n=40)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two clips; system `ours` has music for both (clicks on the jumps), `other` only for c0 (clicks elsewhere)."""
    pytest.importorskip("cv2")
    pytest.importorskip("matplotlib", reason="the HTML report draws with matplotlib: pip install -e '.[eval]'")
    d = tmp_path_factory.mktemp("systems")
    rows = []
    for i, events in enumerate(([10, 25], [8, 20, 32])):
        _video(d / f"c{i}.avi", events)
        _clicks(d / f"ref{i}.wav", [e / 10 for e in events])
        rows.append(json.dumps({"id": f"c{i}", "video": f"c{i}.avi", "audio": f"ref{i}.wav"}))
    (d / "m.jsonl").write_text("\n".join(rows) + "\n")
    for name in ("ours", "other"):
        (d / name).mkdir()
    _clicks(d / "ours" / "c0.wav", [1.0, 2.5])
    _clicks(d / "ours" / "c1.wav", [0.8, 2.0, 3.2])
    _clicks(d / "other" / "c0.wav", [0.4, 1.7, 3.5])
    out = d / "out" / "report.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate.py"), "--manifest", str(d / "m.jsonl"),
                           "--generated", f"ours={d / 'ours'}", f"other={d / 'other'}",
                           "--metrics", "kl,mv_align,beat", "--kl-classifier", "mel", "--min-coverage", "0.5",
                           "--out", str(out), "--no-progress"], capture_output=True, text=True, cwd=ROOT,
                          env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                               "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d, out, proc


@pytest.mark.slow  # the command on 2 clips x 2 systems: ~35 s on a loaded 2-core machine
def test_one_table_for_several_systems(run):
    d, out, proc = run
    multi = json.loads(out.read_text())
    assert list(multi["systems"]) == ["ours", "other"] and multi["missing"] == {"ours": [], "other": ["c1"]}
    ours, other = multi["systems"]["ours"], multi["systems"]["other"]
    # the same settings for both, and per-clip numbers behind each mean
    assert multi["meta"]["settings"]["kl_classifier"] == "mel"
    b_ours, b_other = (dict(r["meta"]["backbones"]["av_align_reference"]) for r in (ours, other))
    assert b_ours.pop("clips") == 2 and b_other.pop("clips") == 1 and b_ours == b_other
    assert ours["coverage"]["av_align_reference"]["clips"] == 2 and other["coverage"]["av_align_reference"]["clips"] == 1
    per = ours["meta"]["per_clip"]["av_align_reference"]
    assert ours["av_align_reference"] == pytest.approx(np.mean(list(per.values())))
    # ours' clicks sit on the jumps: c0 matches both onsets; other's clicks sit elsewhere
    assert per["c0"] == 1.0 and other["meta"]["per_clip"]["av_align_reference"]["c0"] == 0.0
    md = out.with_suffix(".md").read_text()
    assert "| metric | ours | other |" in md and "other: 1 clip(s) without generated music: c1" in md
    assert "(1/2)" in md  # other's numbers cover 1 of 2 clips, and say so
    assert out.with_suffix(".html").is_file() and "report.html" in proc.stdout


def test_parse_systems_and_table_by_hand():
    assert rep.parse_systems(["runs/gen"]) == {"gen": Path("runs/gen")}
    assert rep.parse_systems(["a=x", "b=y"]) == {"a": Path("x"), "b": Path("y")}
    with pytest.raises(Exception, match="name each one"):
        rep.parse_systems(["x", "b=y"])
    with pytest.raises(Exception, match="twice"):
        rep.parse_systems(["a=x", "a=y"])
    multi = {"systems": {"s1": {"fad": 1.23456, "coverage": {"fad": {"clips": 3, "of": 3}}, "meta": {}},
                         "s2": {"fad": None, "meta": {"withheld": {"fad": "covers 1 of 3 clips"}}}},
             "missing": {"s1": [], "s2": ["c1", "c2"]}}
    table = rep.systems_table(multi)
    assert "| FAD ↓ | 1.2346 | — |" in table
    assert "- s2: fad: covers 1 of 3 clips" in table and "- s2: 2 clip(s) without generated music: c1, c2" in table


@pytest.mark.slow  # shares the command run above
def test_report_page_in_headless_chromium(run):
    """The page loads from disk, every image decodes (naturalWidth > 0), and the browser fetched only file: and
    data: URLs; the audio links point at the generated files."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver: `make browser` installs Debian's chromium + chromium-driver (as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install -e '.[app]'")
    from selenium.webdriver.chrome.service import Service

    d, out, _ = run
    page = out.with_suffix(".html")
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # no CDN, no remote font, no script
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500",
                "--disable-gpu", "--mute-audio", "--allow-file-access-from-files"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        driver.get(page.as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        assert driver.title == "Evaluation report"
        imgs = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        # distributions (KL, MV-Align, AV-Align x2, BCS, BHS, Beat Align, TBIoU, BIoU) + 2 figures per clip x 2
        assert len(imgs) >= 9 + 4
        assert all(ok and w > 50 and h > 50 for _, ok, w, h in imgs), imgs
        urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        urls.append(driver.current_url)
        assert all(u.startswith(("file:", "data:")) for u in urls), urls
        audio = driver.execute_script("return Array.from(document.querySelectorAll('audio')).map(a => a.src)")
        assert len(audio) == 2 * 2 + 1 and all(a.startswith("file:") for a in audio)  # ref + ours (+ other on c0)
        from urllib.parse import unquote, urlparse

        assert all(Path(unquote(urlparse(a).path)).is_file() for a in audio)
        text_on_page = driver.find_element("tag name", "body").text
        assert "other: 1 clip(s) without generated music: c1" in text_on_page
    finally:
        driver.quit()
