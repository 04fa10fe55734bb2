"""`vmas app` (issue 23): the form maps onto the CLI's controls, the deployer's limits, and the page driven end to end
in a real headless Chromium (Debian's chromium + chromium-driver, installed by `make browser`) through Selenium.

The browser tests start `python -m vmas app` as a user would (demo model, a free local port) and share that server:
the broken upload runs first, so the generation test also shows that the server kept serving after an error.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from vmas.app import EXAMPLE, AppLimits, check_limits, request_controls, run_request
from vmas.cli import build_parser
from vmas.errors import MediaError, VmasError
from vmas.generate import GenerationRequest
from vmas.mixing import MixOptions
from vmas.tags.cleaner import split_tag_arg

ROOT = Path(__file__).resolve().parent.parent
MODEL = "vmas-synthmv-demo"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


# --------------------------------------------------------------------------------------------- form and limits
def _cli_request(argv):
    """The GenerationRequest `vmas generate` builds from these flags (the same fields as cli.run_generate)."""
    a = build_parser().parse_args(["generate", "x.mp4", *argv])
    return GenerationRequest(
        tags=split_tag_arg(a.tags), instruments=split_tag_arg(a.instruments), genres=split_tag_arg(a.genres),
        tempo=a.tempo, negative=split_tag_arg(a.negative), seed=a.seed, duration=a.duration, cfg=a.cfg,
        top_k=a.top_k, top_p=a.top_p, temperature=a.temperature, guide=a.guide, tag_cfg=a.tag_cfg,
        beat_from_video=a.beat_from_video, cuts=a.cuts, hits=a.hits,
        mixing=MixOptions(mix=a.mix, duck=a.duck, music_gain=a.music_gain, loudness=a.loudness, width=a.music_width))


def _page_request(**form):
    controls = request_controls(**form)
    mixing = MixOptions(**{k: controls.pop(k) for k in MixOptions.names() if k in controls})
    return GenerationRequest(**controls, mixing=mixing)


def test_form_asks_for_what_the_same_cli_flags_ask_for():
    page = _page_request(tags="piano, jazz", instruments="cello", genres="lo-fi", tempo=96, negative="drums, vocals",
                         guide="tags", cfg=4.5, tag_cfg=6, beat_from_video="off", seed=7, duration=4.0, top_k=50,
                         top_p=0.0, temperature=0.9, mix="replace", duck=-6, music_gain=-2, loudness=-16,
                         cuts="12.5, 30", hits="3.2", music_width=0.35)
    cli = _cli_request(["--tags", "piano, jazz", "--instruments", "cello", "--genres", "lo-fi", "--tempo", "96",
                        "--negative", "drums, vocals", "--guide", "tags", "--cfg", "4.5", "--tag-cfg", "6",
                        "--no-beat-from-video", "--seed", "7", "--duration", "4", "--top-k", "50", "--top-p", "0",
                        "--temperature", "0.9", "--mix", "replace", "--duck", "-6", "--music-gain", "-2",
                        "--loudness", "-16", "--cuts", "12.5, 30", "--hits", "3.2", "--music-width", "0.35"])
    assert page == cli
    assert page.tags == ["piano", "jazz"] and page.negative == ["drums", "vocals"] and page.top_k == 50
    assert page.mixing.width == 0.35


def test_untouched_form_is_the_cli_without_flags():
    # the page shows 0 for "not given" in tempo/duration/loudness and "auto" for the mix; cleared fields are None
    page = _page_request(tempo=0, duration=0, loudness=0, mix="auto")
    assert page == _cli_request(["--loudness", "off"])
    assert _page_request(cfg=None, top_k=None, seed=None, duck=None) == _cli_request(["--loudness", "off"])
    # mixing defaults are MixOptions' own: the loudness field set to its shown default equals the CLI default
    assert _page_request(loudness=MixOptions().loudness) == _cli_request([])


def test_limits_refuse_big_or_long_uploads_with_the_flag_to_change(tmp_path):
    assert round(EXAMPLE.stat().st_size / 1e6, 2) == 0.14  # the example: 0.14 MB, 10 s
    check_limits(EXAMPLE, AppLimits(max_file_mb=0.15, max_seconds=10.5))  # within both: no error
    with pytest.raises(MediaError, match=r"example.mp4: file is 0.14 MB.*at most 0.1 MB \(vmas app --max-file-mb\)"):
        check_limits(EXAMPLE, AppLimits(max_file_mb=0.1))
    with pytest.raises(MediaError, match=r"video is 10.0 s long.*at most 5 s \(vmas app --max-seconds\)"):
        check_limits(EXAMPLE, AppLimits(max_seconds=5))
    with pytest.raises(VmasError, match="app limits must be positive"):
        AppLimits(max_seconds=0)
    with pytest.raises(MediaError, match="no video: upload one"):  # Generate pressed before any upload
        run_request(None, None, {}, AppLimits(), tmp_path)


def test_page_runs_one_request_at_a_time_with_a_bounded_queue():
    """The queue settings a deployer relies on, read back from the built page (a stand-in pipe: no model needed)."""
    pytest.importorskip("gradio", reason="the web page needs Gradio: pip install -e '.[app]' (make install)")
    import inspect

    from vmas.app import build_app
    from vmas.sampling import SamplingParams

    spec = types.SimpleNamespace(sampling=SamplingParams(), tags=True, beat_from_video=False)
    page = build_app(types.SimpleNamespace(spec=spec, note=""), "stub", AppLimits(max_queue=3))
    (fn,) = [f for f in page.fns.values() if f.api_name == "generate"]
    assert fn.concurrency_limit == 1 and page._queue.max_size == 3 and page.analytics_enabled is False
    # every form field reaches the library: the video + one input per request_controls parameter
    assert len(fn.inputs) == 1 + len(inspect.signature(request_controls).parameters)


def test_music_width_slider_reaches_the_library(monkeypatch):
    """The page's Music width slider (issue 35: the CLI's --music-width had no control on the page): its range and
    default are the CLI's (0..1, MixOptions().width), and the value the user sets is what the handler gives the
    library call (``width``, the field --music-width sets)."""
    pytest.importorskip("gradio", reason="the web page needs Gradio: pip install -e '.[app]' (make install)")
    import vmas.app as app
    from vmas.sampling import SamplingParams

    spec = types.SimpleNamespace(sampling=SamplingParams(), tags=True, beat_from_video=False)
    page = app.build_app(types.SimpleNamespace(spec=spec, note=""), "stub")
    fn = next(f for f in page.fns.values() if f.api_name == "generate")
    slider = fn.inputs[-1]
    assert (slider.elem_id, slider.minimum, slider.maximum, slider.value) == ("music_width", 0.0, 1.0,
                                                                              MixOptions().width)
    width = build_parser().parse_args(["generate", "x.mp4"]).music_width
    assert width == slider.value  # the CLI's default
    seen = {}

    def fake_run(pipe, video, controls, limits, out_root, on_window=None):
        seen.update(controls)
        raise VmasError("stop here")  # the library call itself is tested elsewhere

    monkeypatch.setattr(app, "run_request", fake_run)
    args = ["clip.mp4", "", "", "", 0, "", "all", 3.0, 0.0, "off", 0, 0, 16, 0.0, 1.0, "keep", -12.0, -4.0, 0,
            "none", "", 0.6]
    *_, summary = fn.fn(*args, progress=lambda *a, **k: None)
    assert summary == "error: stop here" and seen["width"] == 0.6
    assert MixOptions(**{k: seen[k] for k in MixOptions.names() if k in seen}).width == 0.6


def test_app_flags_parse():
    a = build_parser().parse_args(["app", "--model", MODEL, "--port", "8000", "--max-seconds", "30"])
    assert (a.command, a.model, a.host, a.port, a.share, a.max_seconds) == ("app", MODEL, "127.0.0.1", 8000, False, 30)
    assert isinstance(a, argparse.Namespace) and a.max_file_mb == AppLimits().max_file_mb


# ------------------------------------------------------------------------------------------------ the real page
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """`vmas app` with the demo model on a free port, a headless Chromium, and the same model loaded here (what
    `vmas generate` would run); the model and the browser start while the server boots."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver: `make browser` installs Debian's chromium + chromium-driver (as root)")
    pytest.importorskip("gradio", reason="the web page needs Gradio: pip install -e '.[app]' (make install)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install -e '.[app]'")
    from selenium.webdriver.chrome.service import Service

    from vmas.hub import load_model

    out = tmp_path_factory.mktemp("app")
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False")
    log = open(out / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "vmas", "app", "--model", MODEL, "--port", str(port),
                             "--max-seconds", "60", "--max-file-mb", "5", "-o", str(out / "outputs")],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    driver = None
    try:
        pipe = load_model(MODEL, device="cpu")
        opts = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500",
                    "--disable-gpu", "--mute-audio"):
            opts.add_argument(arg)
        opts.binary_location = CHROMIUM  # the system browser: Selenium Manager downloads nothing
        driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vmas app exited with {proc.returncode}:\n{(out / 'server.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"vmas app did not answer in 120 s:\n{(out / 'server.log').read_text()[-3000:]}")
                time.sleep(0.3)
        yield types.SimpleNamespace(url=url, out=out, pipe=pipe, driver=driver)
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _upload(driver, url, path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, 30)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#video input[type=file]"))).send_keys(str(path))
    # the upload is done when the input box shows its player (or its file name for one it cannot play)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video video, #video .file-name, #video [data-testid=video]")
               or Path(path).name in d.find_element(By.ID, "video").text)
    return wait


def _type(driver, selector, text):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, selector)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text, Keys.TAB)


def test_broken_upload_shows_the_cli_error_in_the_page(page, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By

    from vmas.generate import generate_for_video

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 100)
    wait = _upload(page.driver, page.url, broken)
    page.driver.find_element(By.ID, "generate").click()
    toast = wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".toast-body")
                                  if "error: broken.mp4" in e.text])[0]
    # the line `vmas generate broken.mp4` prints after "skipping broken.mp4: " (the library call the CLI makes)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VmasError) as err:
        generate_for_video("broken.mp4", page.pipe, tmp_path / "cli")
    assert f"error: {err.value}" in toast.text.splitlines()
    assert "Traceback" not in toast.text
    # still serving (the next test generates on the same server), with the limits `vmas app` was started with
    config = json.loads(urllib.request.urlopen(page.url + "config", timeout=5).read())
    assert config["max_file_size"] == 5 * 1024 ** 2 and config["analytics_enabled"] is False


def test_page_generates_the_example_with_a_tag_and_a_tempo(page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from vmas.data import media
    from vmas.generate import generate_for_video

    driver = page.driver
    _upload(driver, page.url, EXAMPLE)
    _type(driver, "#tags textarea, #tags input", "piano")
    _type(driver, "#tempo input", "96")
    # a finished-audio option too: the music alone (the example's own sound is SynthMV's reference music)
    driver.find_element(By.XPATH, "//button[contains(., 'Finished audio')]").click()
    # the accordion renders its contents after the click (later on a loaded machine): wait for the option
    from selenium.webdriver.support import expected_conditions as ec

    WebDriverWait(driver, 30).until(ec.element_to_be_clickable(
        (By.XPATH, "//*[@id='mix']//label[contains(., 'replace')]"))).click()
    driver.find_element(By.ID, "generate").click()
    # meanwhile the same request from Python (the second core): the page must give the same music
    windows, ref = [], {}
    lib = threading.Thread(target=lambda: ref.update(r=generate_for_video(
        EXAMPLE, page.pipe, tmp_path / "ref", tags=["piano"], tempo=96.0, mix="replace", on_window=lambda d, t: windows.append((d, t)))))
    lib.start()
    progress = []

    def finished(d):
        shown = re.findall(r"(\d+)/(\d+) window", d.find_element(By.ID, "result").text)  # the progress overlay
        progress.extend((int(a), int(b)) for a, b in shown)
        links = [a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR, "#files a[href]")]
        return links if len(links) >= 2 else None

    links = WebDriverWait(driver, 120, poll_frequency=0.2).until(finished)
    got = {}
    for href in links:
        name = Path(urllib.request.urlparse(href).path).name
        got[Path(name).suffix] = tmp_path / name
        got[Path(name).suffix].write_bytes(urllib.request.urlopen(href, timeout=10).read())
    assert set(got) == {".mp4", ".wav"}
    info, source = media.probe_video(got[".mp4"]), media.probe_video(EXAMPLE)
    assert info.has_audio, "the returned mp4 has no audio stream"
    assert abs(info.duration - source.duration) < 0.05  # 10 s example in, 10 s video with music out
    assert abs(media.audio_duration(got[".mp4"]) - source.duration) < 0.05
    assert driver.find_element(By.CSS_SELECTOR, "#used_tags textarea, #used_tags input").get_attribute(
        "value") == "piano, 96 BPM"
    assert driver.find_elements(By.CSS_SELECTOR, "#result video")  # plays in the page
    assert "audio: replace" in driver.find_element(By.ID, "summary").text
    if os.environ.get("VMAS_APP_SCREENSHOT"):  # the README's picture: VMAS_APP_SCREENSHOT=docs/app.png pytest ...
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(os.environ["VMAS_APP_SCREENSHOT"])
    # progress: windows done / total, counting up to 3/3 (the example is 3 windows of the demo model)
    assert progress and progress == sorted(progress) and progress[-1] == (3, 3), progress
    lib.join(timeout=120)
    assert windows == [(1, 3), (2, 3), (3, 3)]
    # one library call behind the page: same request, same music, sample for sample
    page_wav, ref_wav = media.read_audio(got[".wav"], sr=32000), media.read_audio(ref["r"].wav, sr=32000)
    assert page_wav.shape == ref_wav.shape and np.array_equal(page_wav.numpy(), ref_wav.numpy())
    assert ref["r"].mix["mode"] == "replace"
