"""Which files a profile loads from the Hugging Face hub, and fetching exactly those.

``weights_plan(profile)`` lists the profile's hub sources: the base model (a diffusers folder:
``model_index.json`` and the files of the components the engine loads, chosen from the
repository's listing by ``pipeline_files``), the IP-Adapter's three files, a CLIP image encoder
(``config.json`` and its weights). Random-weight profiles need none; local paths are noted,
never fetched. ``download`` fetches one source through huggingface_hub (a dropped connection
resumes, complete files are skipped, its progress bars) into the Hugging Face cache or a local
folder, where the loaders find it offline: the repository's listing is cached with it, so
diffusers' completeness check passes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.errors import MissingWeights
from engine.loading import PREVIEW_DECODER_FILES, looks_local
from engine.profiles import PersonalizerSpec, Profile

logger = logging.getLogger(__name__)

# What the fix for a missing hub file says (the CLI's `avatarbot weights download`).
DOWNLOAD_COMMAND = "avatarbot weights download"
# Components a pipeline's model_index.json may name that the engine never loads (it passes
# safety_checker=None: the output check is its own).
SKIPPED_COMPONENTS = ("safety_checker",)
# Files that hold weights; a folder's are chosen by format (safetensors first) and variant.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx")
_FORMATS = (".safetensors", ".bin")
# Default CLIP image encoder of InstantBooth weights (InstantBoothConfig.image_encoder).
INSTANTBOOTH_ENCODER = "openai/clip-vit-large-patch14"

SourceKind = Literal["files", "pipeline", "configs", "model"]


@dataclass(frozen=True)
class HubSource:
    """One hub repository a profile reads. ``kind``: "files" (exactly ``files``), "pipeline"
    (a diffusers folder; files from its model_index.json and listing), "configs" (the same
    without weights: what a single checkpoint file is built with) or "model" (a transformers
    model at the repository root: config.json and its weights)."""

    what: str
    repo: str
    setting: str
    kind: SourceKind
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class WeightsPlan:
    profile: str
    sources: tuple[HubSource, ...]
    # What the profile reads from local paths or builds itself (not downloaded), one note each.
    notes: tuple[str, ...] = ()


def download_hint(profile: str) -> str:
    return f"run `{DOWNLOAD_COMMAND} {profile}`"


def missing_line(exc: MissingWeights, profile: str) -> str:
    """``exc`` as one short line for an operator: what is missing and the fix, the command
    that fetches the profile's files when it is a hub id (the libraries' long reason is in the
    log at DEBUG)."""
    if looks_local(exc.location):
        reason = f" ({_clip(exc.reason)})" if exc.reason else ""
        return f"missing {exc.what} {exc.location}{reason}; {exc.how}"
    return (
        f"missing {exc.what} {exc.location} (not fully in the Hugging Face cache); "
        f"{download_hint(profile)}"
    )


def weights_plan(profile: Profile, *, preview_decoder: str | None = None) -> WeightsPlan:
    """The hub sources ``profile`` (already resolved with the settings' overrides) loads, and
    the operator's tiny preview decoder (``engine.preview_decoder``) where it loads one."""
    sources: list[HubSource] = []
    notes: list[str] = []
    if profile.base_model is not None:
        _base_sources(profile, sources, notes)
    for spec in profile.personalizers:
        _personalizer_sources(spec, sources, notes)
    if preview_decoder is not None and profile.pipeline_family == "stable-diffusion":
        if looks_local(preview_decoder):
            notes.append(
                f"preview decoder: local {preview_decoder} (engine.preview_decoder), not downloaded"
            )
        else:
            sources.append(
                HubSource(
                    "preview decoder",
                    preview_decoder,
                    "engine.preview_decoder",
                    "files",
                    PREVIEW_DECODER_FILES,
                )
            )
    return WeightsPlan(profile.name, tuple(sources), tuple(notes))


def _base_sources(profile: Profile, sources: list[HubSource], notes: list[str]) -> None:
    assert profile.base_model is not None
    location = profile.base_model
    if not looks_local(location):
        sources.append(HubSource("base model", location, "engine.base_model", "pipeline"))
        return
    notes.append(f"base model: local {location} (engine.base_model), not downloaded")
    config = profile.base_config
    if config is not None and not looks_local(config):
        # A single checkpoint file built with a hub repository's configs.
        sources.append(
            HubSource("base model configs", config, "engine.base_model_config", "configs")
        )


def _personalizer_sources(
    spec: PersonalizerSpec, sources: list[HubSource], notes: list[str]
) -> None:
    options = dict(spec.options)
    if spec.name in ("none", "flux2-klein") or options.get("random") is not None:
        return  # no weights of their own, or random ones made at load
    if spec.name == "ip-adapter":
        _ip_adapter_sources(options, sources, notes)
    elif spec.name == "instantbooth":
        _instantbooth_sources(options, sources, notes)
    else:
        notes.append(f"personalizer {spec.name}: its weights are not known here")


def _ip_adapter_sources(
    options: dict[str, object], sources: list[HubSource], notes: list[str]
) -> None:
    """What engine.personalizers.ip_adapter._load_named reads: the weights file and, unless
    ``image_encoder`` names its own location, the encoder beside it in the same repository."""
    repo = str(options["repo"])
    encoder = options.get("image_encoder")
    files = ip_adapter_files(
        str(options.get("subfolder", "models")),
        str(options.get("weight_name")),
        None if encoder else str(options.get("image_encoder_subfolder", "image_encoder")),
    )
    if looks_local(repo):
        notes.append(f"IP-Adapter weights: local {repo} (engine.ip_adapter), not downloaded")
    else:
        sources.append(HubSource("IP-Adapter weights", repo, "engine.ip_adapter", "files", files))
    if encoder:
        _encoder_source(
            "IP-Adapter image encoder", str(encoder), "engine.image_encoder", sources, notes
        )


def ip_adapter_files(
    subfolder: str, weight_name: str, encoder_subfolder: str | None
) -> tuple[str, ...]:
    """The files of an IP-Adapter repository that diffusers' ``load_ip_adapter`` reads: the
    weights and, with ``encoder_subfolder``, the image encoder's config and weights."""
    files = [f"{subfolder}/{weight_name}".lstrip("/")]
    if encoder_subfolder:
        folder = encoder_subfolder
        if "/" not in folder:  # diffusers reads a bare name relative to ``subfolder``
            folder = f"{subfolder}/{folder}".lstrip("/")
        files += [f"{folder}/config.json", f"{folder}/model.safetensors"]
    return tuple(files)


def _instantbooth_sources(
    options: dict[str, object], sources: list[HubSource], notes: list[str]
) -> None:
    """InstantBooth's heads and adapters come from our trainer (never the hub); the CLIP image
    encoder their config.json names does."""
    weights = options.get("weights")
    encoder = INSTANTBOOTH_ENCODER
    if not weights:
        notes.append(
            "InstantBooth weights: trained, not downloaded (docs/instantbooth.md; "
            "engine.instantbooth_weights)"
        )
    else:
        config = Path(str(weights)).expanduser() / "config.json"
        notes.append(f"InstantBooth weights: local {Path(str(weights))}, not downloaded")
        if config.is_file():
            encoder = str(json.loads(config.read_text()).get("image_encoder", encoder))
    # "tiny:<seed>" and the like: a random encoder made at load.
    if ":" not in encoder:
        _encoder_source(
            "InstantBooth image encoder",
            encoder,
            "image_encoder in the InstantBooth weights' config.json",
            sources,
            notes,
        )


def _encoder_source(
    what: str, location: str, setting: str, sources: list[HubSource], notes: list[str]
) -> None:
    if looks_local(location):
        notes.append(f"{what}: local {location} ({setting}), not downloaded")
    else:
        sources.append(HubSource(what, location, setting, "model"))


def _clip(text: str, limit: int = 120) -> str:
    """``text`` cut at a word boundary to at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rsplit(" ", 1)[0] + "…"


# --- choosing files from a repository's listing -----------------------------------------


def pipeline_files(model_index: Mapping[str, object], repo_files: Iterable[str]) -> list[str]:
    """The files of a diffusers folder that ``from_pretrained`` reads: model_index.json and,
    for each component it names (but those the engine never loads), the component folder's
    configs and other small files plus one set of weights (``folder_files``)."""
    listing = sorted(set(repo_files))
    chosen = ["model_index.json"]
    for name, value in model_index.items():
        if name.startswith("_") or name in SKIPPED_COMPONENTS:
            continue
        # A component is ["library", "Class"]; [null, null] marks one the repo leaves out.
        if not isinstance(value, list) or not value or value[0] is None:
            continue
        chosen += folder_files(listing, name, everything=True)
    return chosen


def model_files(repo_files: Iterable[str]) -> list[str]:
    """A transformers model at a repository's root: config.json and one set of weights."""
    listing = sorted(set(repo_files))
    return folder_files(listing, "", everything=False)


def folder_files(listing: list[str], folder: str, *, everything: bool) -> list[str]:
    """The files of ``folder`` a loader reads: the non-variant weights of the preferred
    format (safetensors, else bin; shards with their index), and config.json, or with
    ``everything`` every other non-weight file (tokenizer and scheduler files...)."""
    prefix = f"{folder}/" if folder else ""
    here = [p for p in listing if p.startswith(prefix) and "/" not in p[len(prefix) :]]
    names = [p[len(prefix) :] for p in here]
    weights = [n for n in names if _is_weights(n)]
    fmt = next(
        (f for f in _FORMATS if any(n.endswith(f) and n.count(".") == 1 for n in weights)), None
    )
    chosen = [
        n
        for n in weights
        if fmt is not None
        and ((n.endswith(fmt) and n.count(".") == 1) or (n == f"{n.split('.')[0]}{fmt}.index.json"))
    ]
    others = [n for n in names if n not in weights]
    if not everything:
        others = [n for n in others if n == "config.json"]
    return [f"{prefix}{n}" for n in sorted(chosen + others)]


def _is_weights(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or any(f"{fmt}.index" in name for fmt in _FORMATS)


# --- fetching ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Downloaded:
    source: HubSource
    files: tuple[str, ...]
    folder: Path
    bytes: int


def download(
    source: HubSource, *, cache_dir: str | None = None, local_dir: str | None = None
) -> Downloaded:
    """Fetch ``source``'s files (complete ones are skipped, a dropped connection resumes)
    into the Hugging Face cache (``cache_dir``: its hub folder, default HF_HOME's) or, with
    ``local_dir``, into that folder in the repository's layout."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    files = list(source.files)
    if source.kind != "files":
        listing = [s.rfilename for s in HfApi().model_info(source.repo).siblings or []]
        if source.kind == "model":
            files = model_files(listing)
        else:
            index = hf_hub_download(
                source.repo, "model_index.json", cache_dir=cache_dir, local_dir=local_dir
            )
            files = pipeline_files(json.loads(Path(index).read_text()), listing)
            if source.kind == "configs":
                files = [f for f in files if not _is_weights(f)]
    folder = Path(
        snapshot_download(
            source.repo, allow_patterns=files, cache_dir=cache_dir, local_dir=local_dir
        )
    )
    absent = [f for f in files if not (folder / f).is_file()]
    if absent:
        raise MissingWeights(
            source.what,
            source.repo,
            f"Check {source.setting}: this repository is not in the layout the profile loads.",
            reason=f"the repository has no {', '.join(absent)}",
        )
    size = sum((folder / f).stat().st_size for f in files)
    logger.debug("downloaded %s: %d files into %s", source.repo, len(files), folder)
    return Downloaded(source, tuple(files), folder, size)
