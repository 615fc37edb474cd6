"""A synthetic subject world where identity and text control are measurable from pixels.

Issue 15: show that InstantBooth personalises, on a world small enough to train on a CPU.
``world`` makes subjects and scenes, ``export`` writes them as the trainer's dataset,
``metrics`` measures identity and place back from images (contact sheets of results:
``avatarbot_research.evaluation.contact_sheet``).
"""

from avatarbot_research.toyworld.export import write_dataset
from avatarbot_research.toyworld.metrics import (
    Components,
    ToyIdentity,
    identity_components,
    identity_features,
    scene_accuracy,
    scene_class,
    segment,
)
from avatarbot_research.toyworld.world import (
    N_SUBJECTS,
    PLACES,
    POSITIONS,
    SIZES,
    UNSEEN_GROUPS,
    UNSEEN_PAIRS,
    UNSEEN_SHAPES,
    Scene,
    Subject,
    caption,
    random_scene,
    reference_photos,
    reference_shots,
    render_scene,
    split_subjects,
    subject,
    subjects,
    unseen_group,
    unseen_split,
)

__all__ = [
    "N_SUBJECTS",
    "PLACES",
    "POSITIONS",
    "SIZES",
    "UNSEEN_GROUPS",
    "UNSEEN_PAIRS",
    "UNSEEN_SHAPES",
    "Components",
    "Scene",
    "Subject",
    "ToyIdentity",
    "caption",
    "identity_components",
    "identity_features",
    "random_scene",
    "reference_photos",
    "reference_shots",
    "render_scene",
    "scene_accuracy",
    "scene_class",
    "segment",
    "split_subjects",
    "subject",
    "subjects",
    "unseen_group",
    "unseen_split",
    "write_dataset",
]
