"""Before a model is downloaded: is it cached, and can the hub be reached at all?

Without this check an offline machine spends a minute in the hub client's retries
and ends with "check your connection". Here it takes a few seconds and ends with
what the user can do instead.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from loupe.core.errors import ModelError

PROBE_TIMEOUT_S = 3.0

OFFLINE_HELP = (
    "Offline options: pass a local checkpoint with --model ARCH --weights FILE (or an open_clip "
    "model folder), put the weights in the Hugging Face cache (HF_HOME) on a machine with "
    "internet and copy it here, or try the installation with --model loupe-tiny:random (random "
    "weights: meaningless results). See 'Models, and running offline' in the README."
)


def hub_file_for(arch: str, tag: str) -> tuple[str, tuple[str, ...]] | None:
    """The hub repository and candidate file names holding open_clip's weights for ARCH:TAG."""
    try:
        from open_clip import pretrained
    except ImportError:
        return None
    cfg = pretrained.get_pretrained_cfg(arch, tag) or {}
    repo = str(cfg.get("hf_hub", "")).strip("/")
    if not repo:
        return None
    return repo, (pretrained.HF_SAFE_WEIGHTS_NAME, pretrained.HF_WEIGHTS_NAME)


def is_cached(repo: str, filenames: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in filenames)


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """A TCP connection to the hub's endpoint within `timeout` seconds; False when the user
    asked for offline mode (HF_HUB_OFFLINE)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_downloadable(arch: str, tag: str | None) -> None:
    """Raise a ModelError naming the offline options when ARCH:TAG's weights are neither
    cached nor downloadable. The network probe comes first: it costs milliseconds, where
    looking up the cache means importing open_clip (and torch)."""
    if not tag or tag == "random" or arch == "immich" or hub_reachable():
        return
    where = hub_file_for(arch, tag)   # imports open_clip: only on the offline path
    if where is None or is_cached(*where):
        return
    raise ModelError(
        f"model {arch}:{tag} is not in the local cache and the model hub cannot be reached "
        f"(no network, or HF_HUB_OFFLINE is set). {OFFLINE_HELP}"
    )
