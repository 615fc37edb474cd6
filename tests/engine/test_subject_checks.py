"""Subject checks on real photos (scikit-image's astronaut, cameraman and cat) and non-faces."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from enum import StrEnum

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps
from skimage import data as skdata

from engine.subject_checks import (
    BACKGROUND_FACES,
    FACE_CHECK_UNAVAILABLE,
    FACE_TOO_SMALL,
    LOW_CONTRAST,
    NO_FACE,
    SAME_PERSON_MAX_DISTANCE,
    SEVERAL_FACES,
    TOO_BLURRY,
    TOO_BRIGHT,
    TOO_DARK,
    FaceBox,
    FaceDetector,
    FaceEmbedder,
    PhotoReport,
    SubjectThresholds,
    face_distance,
    inspect_photo,
    inspect_photos,
    select_faces,
)
from engine.subject_checks import faces as faces_module
from engine.subject_checks.image_stats import laplacian_variance, normalised_gray

# Where the astronaut's face is in skimage.data.astronaut() (512x512), checked by eye.
ASTRONAUT_FACE = (175, 76, 266, 167)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    pytest.importorskip("dlib", reason="the `faces` extra is not installed")
    loaded = FaceDetector.load()
    assert loaded is not None
    return loaded


@pytest.fixture(scope="module")
def embedder() -> FaceEmbedder:
    pytest.importorskip("dlib", reason="the `faces` extra is not installed")
    loaded = FaceEmbedder.load()
    assert loaded is not None
    return loaded


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return Image.fromarray(skdata.chelsea())


@pytest.fixture
def fresh_log_once(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(faces_module, "_logged_once", set())
    yield


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _box(face: FaceBox) -> tuple[int, int, int, int]:
    return face.left, face.top, face.right, face.bottom


# --- real photos -------------------------------------------------------------------------


def test_astronaut_has_exactly_one_face_where_her_face_is(
    astronaut: Image.Image, detector: FaceDetector
) -> None:
    report = inspect_photo(astronaut, "person", detector=detector)
    assert report.faces is not None and len(report.faces) == 1
    assert report.primary_face is report.faces[0]
    assert _overlap(_box(report.faces[0]), ASTRONAUT_FACE) > 0.7
    # The mission patch on her suit is a HOG candidate (score ~0.1) but not a reported face.
    assert len(detector.detect(astronaut)) >= 2
    assert report.problems == ()
    assert report.ok and report.faces is not None
    assert report.sharpness > 200
    assert 0.3 < report.exposure < 0.6


def test_face_boxes_map_back_from_the_reduced_working_copy(
    astronaut: Image.Image, detector: FaceDetector
) -> None:
    big = astronaut.resize((1536, 1536), Image.Resampling.BICUBIC)  # detected at 800 px
    report = inspect_photo(big, "person", detector=detector)
    assert report.faces is not None and len(report.faces) == 1
    left, top, right, bottom = ASTRONAUT_FACE
    assert _overlap(_box(report.faces[0]), (left * 3, top * 3, right * 3, bottom * 3)) > 0.6
    assert report.problems == ()


def test_cat_has_no_human_face_and_no_face_problem_as_a_pet(
    cat: Image.Image, detector: FaceDetector
) -> None:
    as_pet = inspect_photo(cat, "pet", detector=detector)
    assert as_pet.faces == ()
    assert as_pet.problems == ()
    as_person = inspect_photo(cat, "person", detector=detector)
    assert as_person.problems == (NO_FACE,)


def test_cameraman_in_profile_is_not_a_usable_face(detector: FaceDetector) -> None:
    # A real but turned face: HOG scores it below 0; the frontal encoders need a frontal face.
    report = inspect_photo(Image.fromarray(skdata.camera()), "person", detector=detector)
    assert report.problems == (NO_FACE,)


def test_blurred_astronaut_is_too_blurry(astronaut: Image.Image, detector: FaceDetector) -> None:
    blurred = astronaut.filter(ImageFilter.GaussianBlur(8))
    report = inspect_photo(blurred, "person", detector=detector)
    assert TOO_BLURRY in report.problems
    assert report.sharpness < SubjectThresholds().min_sharpness
    # Blur is a problem for every kind, not only people.
    assert inspect_photo(blurred, "object", detector=detector).problems == (TOO_BLURRY,)


def test_small_face_in_a_corner_of_a_big_canvas(
    astronaut: Image.Image, detector: FaceDetector
) -> None:
    canvas = Image.new("RGB", (1200, 1200), (90, 90, 90))
    canvas.paste(astronaut, (0, 0))
    report = inspect_photo(canvas, "person", detector=detector)
    assert report.faces is not None and len(report.faces) == 1
    assert report.problems == (FACE_TOO_SMALL,)


def test_two_people_side_by_side_are_several_faces(
    astronaut: Image.Image, detector: FaceDetector
) -> None:
    pair = Image.new("RGB", (1024, 512))
    pair.paste(astronaut, (0, 0))
    pair.paste(astronaut, (512, 0))
    report = inspect_photo(pair, "person", detector=detector)
    assert report.faces is not None and len(report.faces) == 2
    assert report.problems == (SEVERAL_FACES,)
    # Not a problem for a pet or an object photo.
    assert inspect_photo(pair, "pet", detector=detector).problems == ()


def test_a_small_face_behind_the_subject_is_only_a_warning(
    astronaut: Image.Image, detector: FaceDetector
) -> None:
    scene = Image.new("RGB", (1024, 768), (90, 90, 90))
    scene.paste(astronaut.resize((768, 768)), (0, 0))
    scene.paste(astronaut.resize((320, 320)), (704, 0))
    report = inspect_photo(scene, "person", detector=detector)
    assert report.faces is not None and len(report.faces) == 2
    assert report.faces[0].side > 2 * report.faces[1].side  # the subject comes first
    assert report.problems == ()
    assert BACKGROUND_FACES in report.warnings


# --- generated non-faces -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "color", "expected"),
    [
        ("flat gray", (128, 128, 128), {TOO_BLURRY}),
        ("black", (0, 0, 0), {TOO_BLURRY, TOO_DARK}),
        ("white", (255, 255, 255), {TOO_BLURRY, TOO_BRIGHT}),
    ],
)
def test_flat_images(
    name: str, color: tuple[int, int, int], expected: set[str], detector: FaceDetector
) -> None:
    image = Image.new("RGB", (640, 480), color)
    as_object = inspect_photo(image, "object", detector=detector)
    assert set(as_object.problems) == expected, name
    assert LOW_CONTRAST in as_object.warnings
    assert set(inspect_photo(image, "person", detector=detector).problems) == expected | {NO_FACE}


def test_noise_is_sharp_well_exposed_and_faceless(detector: FaceDetector) -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    report = inspect_photo(noise, "person", detector=detector)
    assert report.faces == ()
    assert report.problems == (NO_FACE,)
    assert report.sharpness > 1000
    assert abs(report.exposure - 0.5) < 0.02
    assert report.clipped_dark < 0.01 and report.clipped_bright < 0.01


def test_dark_photo_reports_its_clipped_shadows(astronaut: Image.Image) -> None:
    dark = Image.eval(astronaut, lambda v: v // 8)
    report = inspect_photo(dark, "object", detector=None)
    assert TOO_DARK in report.problems
    assert report.exposure < 0.1
    assert report.clipped_dark > 0.2


# --- measures ----------------------------------------------------------------------------


def test_sharpness_does_not_depend_on_resolution() -> None:
    # The same detailed photo (1411 px) delivered at 0.6x and 1.5x: the raw variance of the
    # Laplacian moves by 3x or more, the normalised measure by a few percent.
    photo = Image.fromarray(skdata.retina())
    variants = [
        photo.resize((round(photo.width * s), round(photo.height * s)), Image.Resampling.LANCZOS)
        for s in (0.6, 1.5)
    ]
    reference = laplacian_variance(normalised_gray(photo))
    normalised = [laplacian_variance(normalised_gray(v)) for v in variants]
    raw = [laplacian_variance(np.asarray(v.convert("L"), dtype=np.float32)) for v in variants]
    assert all(abs(n - reference) / reference < 0.1 for n in normalised)
    assert raw[0] > 3 * raw[1]
    assert normalised_gray(photo.resize((1024, 768))).shape == (512, 683)


def test_laplacian_matches_a_hand_computed_value() -> None:
    gray = np.zeros((5, 5), dtype=np.float32)
    gray[2, 2] = 1.0
    # Interior Laplacian (3x3): centre -4, its four neighbours 1, corners 0.
    expected = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64).var()
    assert laplacian_variance(gray) == pytest.approx(expected)
    assert laplacian_variance(np.ones((2, 9), dtype=np.float32)) == 0.0


def test_empty_image_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        inspect_photo(Image.new("RGB", (0, 0)), "object", detector=None)


# --- without the faces extra -------------------------------------------------------------


def test_without_detector_a_person_photo_gets_a_warning_logged_once(
    astronaut: Image.Image, caplog: pytest.LogCaptureFixture, fresh_log_once: None
) -> None:
    with caplog.at_level(logging.WARNING, logger="engine.subject_checks"):
        reports = inspect_photos([astronaut, astronaut], "person", detector=None)
    assert [r.faces for r in reports] == [None, None]
    assert all(r.warnings == (FACE_CHECK_UNAVAILABLE,) and r.problems == () for r in reports)
    assert sum("no face detector" in r.getMessage() for r in caplog.records) == 1
    # Other kinds never needed the face check.
    assert inspect_photo(astronaut, "pet", detector=None).warnings == ()


def test_load_returns_none_without_dlib_and_logs_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_log_once: None
) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with caplog.at_level(logging.WARNING, logger="engine.subject_checks"):
        assert FaceDetector.load() is None
        assert FaceDetector.load() is None
        assert FaceEmbedder.load() is None
    assert sum("dlib is not installed" in r.getMessage() for r in caplog.records) == 1


def test_embedder_without_model_files_is_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, fresh_log_once: None
) -> None:
    monkeypatch.setattr(faces_module, "models_dir", lambda: tmp_path)
    assert FaceEmbedder.load() is None


def test_face_recognition_models_is_located_not_imported(embedder: FaceEmbedder) -> None:
    folder = faces_module.models_dir()
    assert folder is not None and (folder / faces_module.FACE_RECOGNITION_FILE).is_file()
    assert "face_recognition_models" not in sys.modules


# --- face selection policy (no detector needed) ------------------------------------------


def _face(left: int, top: int, side: int, score: float) -> FaceBox:
    return FaceBox(left, top, left + side, top + side, score)


def test_selection_prefers_the_confident_face_over_a_same_size_badge() -> None:
    badge, face = _face(120, 330, 92, 0.12), _face(175, 76, 90, 1.2)
    assert select_faces([badge, face]) == (face,)


def test_selection_keeps_the_big_subject_over_a_sharper_small_background_face() -> None:
    subject, passerby = _face(100, 100, 200, 0.35), _face(600, 50, 60, 1.8)
    assert select_faces([passerby, subject]) == (subject, passerby)


def test_selection_drops_candidates_below_the_minimum_score() -> None:
    assert select_faces([_face(0, 0, 100, -0.2)]) == ()
    lenient = SubjectThresholds(min_face_score=-0.5)
    assert len(select_faces([_face(0, 0, 100, -0.2)], lenient)) == 1


def test_unknown_kind_is_refused_and_enums_are_accepted(astronaut: Image.Image) -> None:
    class Kind(StrEnum):
        PET = "pet"

    with pytest.raises(ValueError, match="unknown subject kind"):
        inspect_photo(astronaut, "Person", detector=None)
    assert inspect_photo(astronaut, Kind.PET, detector=None).problems == ()


def test_invalid_thresholds_are_refused() -> None:
    with pytest.raises(ValueError):
        SubjectThresholds(min_face_fraction=1.5)
    with pytest.raises(ValueError):
        SubjectThresholds(min_exposure=0.5, dark_exposure=0.2)


def test_face_box_geometry_and_expanded_crop() -> None:
    face = FaceBox(100, 50, 200, 150, 1.0)
    assert (face.width, face.height, face.area, face.side) == (100, 100, 10_000, 100.0)
    assert face.expanded(0.5, (1000, 1000)) == (50, 0, 250, 200)  # shifted down: same size
    edge = FaceBox(0, 0, 100, 100, 1.0)
    assert edge.expanded(0.25, (400, 300)) == (0, 0, 150, 150)
    assert face.expanded(3.0, (300, 200)) == (0, 0, 300, 200)  # larger than the image
    with pytest.raises(ValueError):
        face.expanded(-0.1, (300, 200))


def test_report_to_dict_is_plain_data(astronaut: Image.Image, detector: FaceDetector) -> None:
    data = inspect_photo(astronaut, "person", detector=detector).to_dict()
    assert data["problems"] == [] and len(data["faces"]) == 1
    assert data["faces"][0][:4] == list(ASTRONAUT_FACE)
    report = PhotoReport(None, 1.0, 0.5, 0.0, 0.0, (), (FACE_CHECK_UNAVAILABLE,))
    assert report.to_dict()["faces"] is None


# --- identity embeddings -----------------------------------------------------------------


def test_same_face_is_closer_than_another_person_or_noise(
    astronaut: Image.Image, detector: FaceDetector, embedder: FaceEmbedder
) -> None:
    def first_face(image: Image.Image) -> FaceBox:
        found = detector.detect(image)
        assert found
        return found[0]

    reference = embedder.embed(astronaut, first_face(astronaut))
    assert reference.shape == (128,) and reference.dtype == np.float32

    mirrored = ImageOps.mirror(astronaut)
    recropped = astronaut.crop((100, 20, 400, 320)).resize((256, 256))
    same = [embedder.embed(img, first_face(img)) for img in (mirrored, recropped)]

    # Another person: the cameraman (turned away, so give his box by hand).
    camera = Image.fromarray(skdata.camera()).convert("RGB")
    other = embedder.embed(camera, FaceBox(216, 130, 269, 183, 0.0))
    rng = np.random.default_rng(1)
    noise_image = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    noise = embedder.embed(noise_image, FaceBox(*ASTRONAUT_FACE, 0.0))

    for vector in same:
        assert face_distance(reference, vector) < SAME_PERSON_MAX_DISTANCE / 2
    for vector in (other, noise):
        assert face_distance(reference, vector) > SAME_PERSON_MAX_DISTANCE


def test_detector_remembers_recent_photos(astronaut: Image.Image) -> None:
    detector = FaceDetector.load()
    assert detector is not None
    calls: list[int] = []
    real_run = detector._detector.run

    def counting_run(*args: object) -> object:
        calls.append(1)
        return real_run(*args)

    detector._detector = type("Counting", (), {"run": staticmethod(counting_run)})()
    photo = astronaut
    first = detector.detect(photo)
    passes = len(calls)  # the quick pass, and the full one: her face is small for the quick
    again = detector.detect(photo.copy())  # same pixels, another object
    assert again == first and first
    assert len(calls) == passes
    detector.detect(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert len(calls) > passes
