"""The face pass: dlib's descriptor network in torch, batching, and the quick detection pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data as skdata

from engine.subject_checks import (
    SEVERAL_FACES,
    FaceBox,
    FaceDetector,
    FaceEmbedder,
    inspect_photo,
    inspect_photos,
    select_faces,
)
from engine.subject_checks.face_net import DlibFormatError, FaceDescriptorNet, describe
from engine.subject_checks.faces import (
    CHIP_PADDING,
    CHIP_SIZE,
    FACE_RECOGNITION_FILE,
    SHAPE_PREDICTOR_FILE,
    models_dir,
)

HOPPER = Path(__file__).resolve().parents[1] / "fixtures" / "faces" / "grace_hopper.jpg"
# The astronaut's face (skimage.data.astronaut(), 512x512) with a little margin: a close-up.
CLOSE_UP = (160, 60, 280, 180)


@pytest.fixture(scope="module")
def dlib_models() -> Path:
    pytest.importorskip("dlib", reason="the `faces` extra is not installed")
    folder = models_dir()
    if folder is None:
        pytest.skip("face-recognition-models is not installed")
    return folder


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


class CountingRuns:
    """A dlib detector that counts its HOG passes."""

    def __init__(self, detector: FaceDetector) -> None:
        self.real = detector._detector
        self.calls = 0
        self.sides: list[int] = []  # each pass's working side, upsampling included

    def run(self, pixels: np.ndarray, upsample: int, min_score: float) -> object:
        self.calls += 1
        self.sides.append(max(pixels.shape[:2]) * 2**upsample)
        return self.real.run(pixels, upsample, min_score)


def counted(detector: FaceDetector) -> CountingRuns:
    counter = CountingRuns(detector)
    detector._detector = counter
    return counter


def test_torch_descriptors_are_dlibs(dlib_models: Path, astronaut: Image.Image) -> None:
    import dlib

    detector = FaceDetector.load()
    assert detector is not None
    predictor = dlib.shape_predictor(str(dlib_models / SHAPE_PREDICTOR_FILE))
    reference = dlib.face_recognition_model_v1(str(dlib_models / FACE_RECOGNITION_FILE))
    net = FaceDescriptorNet.from_dlib(dlib_models / FACE_RECOGNITION_FILE)
    hopper = Image.open(HOPPER).convert("RGB")
    chips = []
    for photo in (astronaut, ImageOps.mirror(astronaut), hopper):
        face = select_faces(detector.detect(photo))[0]
        pixels = np.ascontiguousarray(np.asarray(photo))
        rect = dlib.rectangle(face.left, face.top, face.right - 1, face.bottom - 1)
        shape = predictor(pixels, rect)
        chips.append(dlib.get_face_chip(pixels, shape, CHIP_SIZE, CHIP_PADDING))
    expected = np.array([np.array(reference.compute_face_descriptor(c)) for c in chips])
    got = describe(net, np.stack(chips), "cpu")
    assert got.shape == (3, 128) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-4


def test_a_file_that_is_not_the_network_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.dat"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DlibFormatError):
        FaceDescriptorNet.from_dlib(path)


def test_a_batch_gives_what_one_by_one_gives(dlib_models: Path, astronaut: Image.Image) -> None:
    embedder = FaceEmbedder.load()
    assert embedder is not None
    box = FaceBox(175, 76, 266, 167, 1.0)
    photos = [astronaut, astronaut.rotate(5), ImageOps.mirror(astronaut)]
    boxes = [box, box, FaceBox(512 - 266, 76, 512 - 175, 167, 1.0)]
    batch = embedder.embed_many(list(zip(photos, boxes, strict=True)))
    alone = np.stack([embedder.embed(p, b) for p, b in zip(photos, boxes, strict=True)])
    assert np.abs(batch - alone).max() < 1e-4
    assert embedder.embed_many([]).shape == (0, 128)


def test_inspection_embeds_the_photos_that_passed(
    dlib_models: Path, astronaut: Image.Image
) -> None:
    detector, embedder = FaceDetector.load(), FaceEmbedder.load()
    assert detector is not None and embedder is not None
    noise = Image.fromarray(np.random.default_rng(2).integers(0, 256, (256, 256, 3), np.uint8))
    reports = inspect_photos(
        [astronaut, noise, ImageOps.mirror(astronaut)],
        "person",
        detector=detector,
        embedder=embedder,
    )
    assert [r.ok for r in reports] == [True, False, True]
    assert reports[1].embedding is None
    first, third = reports[0].embedding, reports[2].embedding
    assert first is not None and third is not None
    face = reports[0].primary_face
    assert face is not None
    assert np.allclose(first, embedder.embed(astronaut, face), atol=1e-4)


def test_a_close_up_is_settled_by_the_quick_pass(dlib_models: Path, astronaut: Image.Image) -> None:
    close_up = astronaut.crop(CLOSE_UP).resize((640, 640), Image.Resampling.BICUBIC)
    quick = FaceDetector.load()
    full = FaceDetector.load(quick_side=None)
    assert quick is not None and full is not None
    counter = counted(quick)
    fast = select_faces(quick.detect(close_up))
    assert counter.calls == 1
    slow = select_faces(full.detect(close_up))
    assert len(fast) == len(slow) == 1
    assert _iou(fast[0], slow[0]) > 0.7


def _iou(a: FaceBox, b: FaceBox) -> float:
    w = max(0, min(a.right, b.right) - max(a.left, b.left))
    h = max(0, min(a.bottom, b.bottom) - max(a.top, b.top))
    return w * h / (a.area + b.area - w * h)


def test_a_selfie_sized_face_gets_a_pass_sized_for_it(
    dlib_models: Path, astronaut: Image.Image
) -> None:
    # Her face box is ~47 % of the photo's side: 151 px in the quick copy, short of 160.
    selfie = astronaut.crop((130, 40, 310, 220)).resize((512, 512), Image.Resampling.BICUBIC)
    detector, full = FaceDetector.load(), FaceDetector.load(quick_side=None)
    assert detector is not None and full is not None
    counter = counted(detector)
    fast = select_faces(detector.detect(selfie))
    assert counter.calls == 2
    assert counter.sides[1] < 0.6 * 1024  # far fewer pixels than the full pass (1024)
    slow = select_faces(full.detect(selfie))
    assert len(fast) == len(slow) == 1
    assert _iou(fast[0], slow[0]) > 0.7
    photo_verdict = inspect_photo(selfie, "person", detector=detector)
    assert photo_verdict.problems == inspect_photo(selfie, "person", detector=full).problems


def test_a_small_subject_goes_to_the_full_pass(dlib_models: Path, astronaut: Image.Image) -> None:
    detector = FaceDetector.load()
    assert detector is not None
    counter = counted(detector)
    faces = select_faces(detector.detect(astronaut))
    # Her face is ~90 px of 512 (56 px in the quick copy): a pass sized for it would be nearly
    # the full pass's size, so the full pass comes next.
    assert counter.calls == 2 and counter.sides == [320, 1024]
    assert len(faces) == 1


def test_the_quick_pass_sees_a_rival_of_half_the_subjects_size(
    dlib_models: Path, astronaut: Image.Image
) -> None:
    # A close-up of ~58 % of the photo's side (180 px in the quick copy), another of ~0.58
    # of its size in the free corner: the quick pass settles it, with the full pass's verdict.
    close_up = astronaut.crop(CLOSE_UP)
    scene = Image.new("RGB", (1000, 1000), (90, 90, 90))
    scene.paste(close_up.resize((720, 720), Image.Resampling.BICUBIC), (0, 0))
    scene.paste(ImageOps.mirror(close_up).resize((420, 420), Image.Resampling.BICUBIC), (580, 580))
    detector, full = FaceDetector.load(), FaceDetector.load(quick_side=None)
    assert detector is not None and full is not None
    counter = counted(detector)
    report = inspect_photo(scene, "person", detector=detector)
    assert counter.calls == 1
    assert report.problems == (SEVERAL_FACES,)
    assert inspect_photo(scene, "person", detector=full).problems == (SEVERAL_FACES,)
