"""The package as a user installs it: a wheel built from the repository, installed into a fresh folder, run from a
working directory outside the repository (issue 16).

The wheel is built from a copy of the files it is made of, so the build does not write ``build/`` or egg-info into
the shared checkout, and with ``--no-build-isolation`` so it needs no network. Dependencies come from the test's
own environment (``--no-deps``); only ``vmas`` itself comes from the wheel, which each subprocess checks.
About 15 s on 2 cores (the wheel holds the 12 MB demo model).
"""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["setup.py", "setup.cfg", "MANIFEST.in", "README.md", "vmas", "configs", "datasets"]


def _run(args, cwd, env, timeout=600):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args}: {proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel file, install folder): ``pip wheel --no-deps`` then ``pip install --no-deps --target``."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:  # `datasets/` too: the wheel must leave it out, not merely not see it
        item = ROOT / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(item, src / name)
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run(["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", "."], src, env)
    (wheel,) = (tmp / "dist").glob("vmas-*.whl")
    target = tmp / "site"
    _run(["-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel], tmp, env)
    return wheel, target


@pytest.fixture
def outside(tmp_path, installed):
    """(working directory outside the repository, environment that imports vmas from the installed wheel)."""
    _, target = installed
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    return cwd, env


def test_wheel_has_no_top_level_datasets_and_ships_the_presets(installed):
    wheel, target = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("vmas-")} == {"vmas"}  # no top-level `datasets/`
    assert not any(n.startswith("datasets/") for n in names)
    assert "vmas/presets/debug.yaml" in names and "vmas/presets/paper.yaml" in names
    assert "vmas/assets/example.mp4" in names
    assert not (target / "datasets").exists()


def test_installed_wheel_runs_models_generate_and_evaluation(outside, installed):
    cwd, env = outside
    _, target = installed
    assert ROOT not in cwd.parents and cwd != ROOT
    # imported from the wheel (not the checkout); no `datasets` package from it; presets read as package data
    probe = _run(["-c", "import importlib.util, vmas, vmas.hub; "
                        "spec = importlib.util.find_spec('datasets'); "
                        "print(vmas.__file__); print(vmas.hub.preset_path('debug.yaml')); "
                        "print(spec.origin if spec else None)"], cwd, env).stdout.splitlines()
    assert probe[0].startswith(str(target)) and probe[1].startswith(str(target))
    assert probe[2] == "None" or not probe[2].startswith(str(target))

    models = _run(["-m", "vmas", "models"], cwd, env).stdout
    assert "vmas-debug-random" in models

    example = target / "vmas" / "assets" / "example.mp4"
    out = cwd / "out"
    gen = _run(["-m", "vmas", "generate", example, "-o", out, "--model", "vmas-debug-random", "--duration", "1.5",
                "--top-k", "16", "-q"], cwd, env)
    assert (out / "example.mp4").is_file() and (out / "example.wav").is_file(), gen.stdout

    # the evaluation API (vmas/evaluation.py) is importable from the wheel
    ev = _run(["-c", "import vmas.evaluation as e; print(e.__file__)"], cwd, env).stdout.strip()
    assert ev.startswith(str(target))
