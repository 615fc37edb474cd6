"""IP-Adapter (Ye et al., arXiv 2308.06721), the non-Plus variant, trained on a frozen base:
issue 27's encoder-based baseline in the toy world, where no public weights exist. ``trainer``
trains the image projection and the decoupled cross-attention's image keys/values and saves
them in the public layout that diffusers' ``load_ip_adapter`` (and so the engine's
``ip-adapter`` personalizer) reads.
"""

from avatarbot_research.ipadapter.trainer import (
    ENCODER_FOLDER,
    WEIGHT_NAME,
    IPAdapterOptions,
    IPAdapterResult,
    train_ip_adapter,
)

__all__ = [
    "ENCODER_FOLDER",
    "WEIGHT_NAME",
    "IPAdapterOptions",
    "IPAdapterResult",
    "train_ip_adapter",
]
