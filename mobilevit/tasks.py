"""The tasks a model family can serve, under one spelling each.

Every tool speaks of tasks by these names: the config and training (`--task`), the converter, the family
registry (`mobilevit.auto`) and the model cards. transformers' pipelines name segmentation
"image-segmentation"; `PIPELINE_TASKS` translates.
"""

from __future__ import annotations

CLASSIFICATION = "image-classification"
SEGMENTATION = "semantic-segmentation"
FEATURE_EXTRACTION = "image-feature-extraction"  # the bare backbone (transformers' pipeline name for it)
OBJECT_DETECTION = "object-detection"  # SSDLite; its preprocessing is known (`ModelFamily.preprocessing`)

TASKS = (CLASSIFICATION, SEGMENTATION, FEATURE_EXTRACTION, OBJECT_DETECTION)

# other spellings people use for the same tasks (short forms, the pipelines' name, the model card's)
TASK_ALIASES = {
    "classification": CLASSIFICATION,
    "segmentation": SEGMENTATION,
    "image-segmentation": SEGMENTATION,
    "feature-extraction": FEATURE_EXTRACTION,
    "backbone": FEATURE_EXTRACTION,
    "base": FEATURE_EXTRACTION,
    "detection": OBJECT_DETECTION,
    "ssd": OBJECT_DETECTION,
}

# our task -> the transformers pipeline that serves it
PIPELINE_TASKS = {CLASSIFICATION: "image-classification", SEGMENTATION: "image-segmentation",
                  OBJECT_DETECTION: "object-detection"}


def canonical_task(name, allowed=TASKS) -> str:
    """Any accepted spelling of a task -> its name in `TASKS`; a one-line error naming what is known."""
    key = str(name).strip().lower().replace("_", "-")
    key = TASK_ALIASES.get(key, key)
    if key not in allowed:
        known = sorted(allowed) + sorted(alias for alias, task in TASK_ALIASES.items() if task in allowed)
        raise ValueError(f"task: expected one of {known}, got {name!r}")
    return key


def a_task(task: str) -> str:
    """"an image-classification", "a semantic-segmentation": a task named in a sentence."""
    return f"{'an' if task[:1] in 'aeiou' else 'a'} {task}"


__all__ = ["a_task", "CLASSIFICATION", "SEGMENTATION", "FEATURE_EXTRACTION", "OBJECT_DETECTION", "TASKS",
           "TASK_ALIASES", "PIPELINE_TASKS", "canonical_task"]
