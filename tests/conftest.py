"""Shared test setup: offline hub, deterministic seeds, small thread count, tiny media fixtures."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests use tiny tensors: OpenMP wake-ups, not arithmetic, dominate. One passive thread is fastest and stays fast
# when other processes (DeepSpeed workers, a busy CI box) share the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# pytest-xdist (make test): numba's on-disk cache (librosa's jitted onset/beat code) is written by whichever worker
# compiles first; two workers compiling the same function at once can read a half-written cache and crash. One cache
# folder per worker (inherited by the subprocesses a test starts) removes the race.
_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker:
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                          ".cache", "numba", _worker))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_clap(tmp_path_factory):
    """A tiny random transformers ClapModel saved locally with a real (MiniLM) tokenizer; returns its folder."""
    from transformers import AutoTokenizer, ClapConfig, ClapFeatureExtractor, ClapModel

    from vmas.tags.text_encoder import minilm_default_path

    path = tmp_path_factory.mktemp("clap")
    cfg = ClapConfig(
        text_config=dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=80, projection_dim=16),
        audio_config=dict(hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2], window_size=4,
                          spec_size=256, patch_embeds_hidden_size=8, num_mel_bins=64, projection_dim=16,
                          enable_fusion=False),
        projection_dim=16)
    torch.manual_seed(0)
    ClapModel(cfg).eval().save_pretrained(path)
    ClapFeatureExtractor(feature_size=64).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(minilm_default_path())).save_pretrained(path)
    return path


REAL_MUSIC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "real_music")


@pytest.fixture(scope="session")
def real_music():
    """Sorted paths of real recorded music (Debian drascula-music Oggs, fetched by `make real-music`); skips if absent."""
    from pathlib import Path

    files = sorted(Path(os.environ.get("VMAS_REAL_MUSIC", REAL_MUSIC)).glob("*.ogg"))
    if not files:
        pytest.skip("no real recorded music: run `make real-music` (apt-get download drascula-music, as root)")
    return files
