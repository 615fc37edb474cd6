from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def torch_globals() -> Iterator[None]:
    """The engine turns oneDNN off and may change torch's thread count: put both back."""
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    yield
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = onednn
