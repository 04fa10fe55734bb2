"""vmas: generate instrumental background music for a video.

Quick use::

    import vmas
    vmas.available_models()
    model = vmas.load_model("vmas-synthmv-demo")
    vmas.generate_for_video("clip.mp4", model=model, out_dir="out")
"""
from vmas.errors import CheckpointError, ConfigError, DataError, MediaError, VmasError  # noqa: F401
from vmas.hub import available_models, load_model  # noqa: F401
from vmas.version import __version__  # noqa: F401
