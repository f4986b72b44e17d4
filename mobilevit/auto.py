"""The family registry: `model_type` (and task) -> config class, model classes, converter, preprocessing.

Every tool (pipelines, predict, export, benchmark, hub, train, demo, convert) reaches a model family only
through this module, so adding a family is one folder under `models/` plus one entry in `_REGISTERED`.
It is this package's counterpart of transformers' Auto classes, kept to itself: nothing of stock transformers'
is changed (a folder saved here still loads there, as the stock class of its `model_type`). One entry is
added to transformers' `AutoBackbone`, keyed on this package's config classes (stock's own `MobileViTConfig`
is untouched): this package's config -> its `...Backbone`, so that transformers' heads that build their
backbone from a `backbone_config` (UperNet, DPT, ...) take a MobileViT one.

    model = auto.load_model("runs/digits")                      # any registered family, task from the folder
    model, processor, task = auto.load_model_and_processor("apple/mobilevit-small")
    family, variant = auto.resolve_variant("xx-small")
    config = auto.new_config("xx-small", "semantic-segmentation", num_labels=4)
    model = auto.AutoModelForSemanticSegmentation.from_config(config)

An unknown `model_type`, variant or a task a family lacks is a one-line `ValueError` listing what is known.
A folder or repository that cannot be loaded (no such folder, no config, no or unreadable weights, weights that
do not fit the config, weights holding NaN or infinity, a pickle the safe loader refuses, an invalid or
unreadable `preprocessor_config.json`, a processor whose sizes are outside `mobilevit.limits`) is a one-line
`NotAModelError` (a `UserError`). A model is never run with weights that were not in the folder: asking for a
head the folder does not hold (a segmentation head from a classifier's folder) is refused, unless the caller
asks for a new head on purpose (`new_head=`, what fine-tuning does).
"""

from __future__ import annotations

import logging
import os
import pickle
from contextlib import contextmanager
from pathlib import Path

from . import limits
from .conversion_utils import ConversionError, unpickler_reason
from .errors import UserError
from .model_family import ModelFamily
from .models import mobilevit, mobilevitv2
from .tasks import CLASSIFICATION, FEATURE_EXTRACTION, OBJECT_DETECTION, SEGMENTATION, a_task, canonical_task

_REGISTERED = (mobilevit.FAMILY, mobilevitv2.FAMILY)
FAMILIES: dict[str, ModelFamily] = {family.model_type: family for family in _REGISTERED}
logger = logging.getLogger(__name__)


def _register_backbones() -> None:
    """transformers' `AutoBackbone.from_config(config)` builds this package's backbone for this package's configs."""
    from transformers import AutoBackbone

    for known in _REGISTERED:
        if known.backbone_class is not None:
            AutoBackbone.register(known.config_class, known.backbone_class, exist_ok=True)


_register_backbones()


class NotAModelError(UserError):
    """The path given as a model is not a usable folder saved by this package (or a Hub repository of one)."""


# ---------------------------------------------------------------------------------------------------------
# Finding the family
# ---------------------------------------------------------------------------------------------------------
def family(model_type: str) -> ModelFamily:
    """The registered family of a `model_type` ("mobilevit", ...)."""
    if model_type not in FAMILIES:
        raise ValueError(f"model_type: expected one of {list(FAMILIES)}, got {model_type!r}")
    return FAMILIES[model_type]


def family_of(obj) -> ModelFamily:
    """The family of a config, a model (instance or class) of this package."""
    cls = obj if isinstance(obj, type) else type(obj)
    for known in FAMILIES.values():
        if issubclass(cls, (known.config_class, known.pretrained_class)):
            return known
    raise TypeError(f"model: expected a config or model of one of the families {list(FAMILIES)} "
                    f"({', '.join(f.pretrained_class.__name__ for f in FAMILIES.values())}), got {cls.__name__}")


def task_of_model(model) -> str:
    """The task a model object serves (its class's entry in its family)."""
    task = family_of(model).task_of_class(type(model))
    if task is None:
        raise TypeError(f"model: expected a model with a head this package knows, got {type(model).__name__}")
    return task


def task_of(config, source: str | os.PathLike | None = None) -> str:
    """The task of a saved model, from the head class named in `config.architectures` (`source`: the folder,
    for the message)."""
    known = family_of(config)
    task = known.task_named_by(config)
    if task is not None:
        return task
    where = f"model: {str(source)!r}: " if source is not None else ""
    raise NotAModelError(
        f"{where}config.architectures: expected one of {sorted(c.__name__ for c in known.model_classes.values())} to "
        f"infer the task, got {config.architectures!r}; pass the task ({', '.join(known.tasks)})"
    )


def resolve_variant(name: str, model_type: str | None = None) -> tuple[ModelFamily, str]:
    """The family and canonical name of a released size ("xx-small", "xxs", "mobilevit_xxs", ...)."""
    candidates = [family(model_type)] if model_type is not None else list(FAMILIES.values())
    found = []
    for known in candidates:
        try:
            found.append((known, known.canonical_variant(name)))
        except ValueError:
            continue
    if len(found) == 1:
        return found[0]
    listed = "; ".join(f"{f.model_type}: {', '.join(f.variants)}" for f in candidates)
    if not found:
        raise ValueError(f"variant: expected a released size ({listed}), got {name!r}")
    raise ValueError(f"variant: {name!r} names a size in several families ({', '.join(f.model_type for f, _ in found)}); "
                     "pass the model type as well")


# ---------------------------------------------------------------------------------------------------------
# New models
# ---------------------------------------------------------------------------------------------------------
def new_config(variant: str, task: str, model_type: str | None = None, **overrides):
    """The config of a released size for a task, from whichever family has that size."""
    known, variant = resolve_variant(variant, model_type)
    return known.new_config(variant, task, **overrides)


def new_model(config, task: str | None = None):
    """A freshly initialised model of `config`'s family for `task` (default: the config's `architectures`)."""
    known = family_of(config)
    task = canonical_task(task) if task is not None else task_of(config)
    return known.model_class(task)(config)


def image_processor_for(config, task: str | None = None):
    """The preprocessing a family's checkpoints were evaluated with, for a `task` model of `config` (default:
    the head its `architectures` name; classification for a config that names none, such as a new one)."""
    return family_of(config).image_processor(config, task)


def family_for_checkpoint(state_dict) -> ModelFamily:
    """The family whose original checkpoint layout `state_dict` has (from its key names)."""
    claimed = [known for known in FAMILIES.values() if known.converter is not None and known.converter.claims(state_dict)]
    if len(claimed) == 1:
        return claimed[0]
    sources = [known.converter.source for known in FAMILIES.values() if known.converter is not None]
    if not claimed:
        raise ConversionError(f"checkpoint: does not look like a checkpoint of a known layout ({', '.join(sources)}): "
                              f"its first keys are {list(state_dict)[:6]}")
    raise ConversionError(f"checkpoint: its keys match several layouts ({', '.join(k.title for k in claimed)})")


# ---------------------------------------------------------------------------------------------------------
# Saved folders and Hub repositories
# ---------------------------------------------------------------------------------------------------------
def _could_be_a_repo_id(name: str) -> bool:
    """Whether `name` has the form of a Hub repository id ("user/name" or "name"), rather than a local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "~", "/")) or name.endswith("/") or name.count("/") > 1 or "\\" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def load_config(model_dir: str | os.PathLike, **kwargs):
    """The config of a saved folder (or Hub repository) of any registered family, with one-line errors."""
    from transformers import PreTrainedConfig

    path = Path(model_dir)
    if path.exists():
        if not path.is_dir():
            raise NotAModelError(f"model: expected a model folder, got the file {str(path)!r}")
        if not (path / "config.json").is_file():
            raise NotAModelError(f"model: {str(path)!r} is not a saved model folder (it has no config.json)")
    elif not _could_be_a_repo_id(str(model_dir)):
        raise NotAModelError(f"model: no such folder {str(model_dir)!r}")
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(str(model_dir), **kwargs)
    except OSError as err:  # an unreadable config.json, or "not a local folder nor a reachable Hub repository"
        if path.is_dir():
            raise NotAModelError(f"model: {str(path / 'config.json')!r} cannot be read ({str(err).splitlines()[0]})"
                                 ) from None
        raise NotAModelError(f"model: no such folder {str(model_dir)!r}, and no Hub repository of that name could be "
                             f"loaded ({str(err).splitlines()[0]})") from None
    except ValueError as err:  # unreadable JSON
        raise NotAModelError(f"model: {str(model_dir)!r} does not hold a readable config ({err})") from None
    if not isinstance(config_dict, dict):  # valid JSON, but a list or a number
        raise NotAModelError(f"model: {str(model_dir)!r}: expected its config.json to hold a JSON object, got a "
                             f"{type(config_dict).__name__}")
    model_type = config_dict.get("model_type")
    if model_type is None:
        raise NotAModelError(f"model: {str(model_dir)!r}: its config.json has no model_type; expected one of "
                             f"{list(FAMILIES)}")
    if model_type not in FAMILIES:
        raise NotAModelError(f"model: {str(model_dir)!r} is a {model_type!r} model, expected one of {list(FAMILIES)}")
    try:
        return FAMILIES[model_type].config_class.from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError, TypeError) as err:
        raise NotAModelError(f"model: {str(model_dir)!r} holds an invalid {model_type} config ({err})") from None


@contextmanager
def quiet_transformers():
    """transformers' progress bars ("Loading weights", "Writing model shards") and its load report stay off the
    screen: what loading found is decided here (a one-line error, or a note from the caller), and the tools show
    their own progress."""
    from transformers.utils import logging as transformers_logging

    verbosity, bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


def _from_pretrained(model_class, model_dir, config=None, new_head: bool = False, **kwargs):
    """`model_class.from_pretrained` with one-line errors for weights that are missing, unreadable, of other
    shapes than the config asks for, or not finite, and for a model whose weights lack tensors it needs (a
    head the folder does not hold), unless `new_head` allows freshly initialised head tensors."""
    from safetensors import SafetensorError

    try:
        with quiet_transformers():
            model, info = model_class.from_pretrained(
                str(model_dir), **({"config": config} if config is not None else {}), output_loading_info=True,
                **({"ignore_mismatched_sizes": True} if new_head else {}), **kwargs)
    except SafetensorError as err:
        raise NotAModelError(f"model: the weights in {str(model_dir)!r} cannot be read, the file is truncated or "
                             f"corrupt ({err})") from None
    except pickle.UnpicklingError as err:
        raise NotAModelError(f"model: the weights in {str(model_dir)!r} are a pickle that the safe loader refuses "
                             f"({unpickler_reason(err)}); weights are read with torch.load(weights_only=True), "
                             "which never runs code stored in a file: save them as model.safetensors") from None
    except OSError as err:
        if "no file named" in str(err) or "does not appear to have a file named" in str(err):
            raise NotAModelError(f"model: {str(model_dir)!r} holds no weights (expected model.safetensors or "
                                 "pytorch_model.bin)") from None
        raise
    except RuntimeError as err:
        if "mismatched_sizes" not in str(err) and "size mismatch" not in str(err):
            raise
        raise NotAModelError(f"model: the weights in {str(model_dir)!r} do not fit its config.json "
                             f"({_first_shape_difference(model_class, model_dir, config or load_config(model_dir))})"
                             ) from None
    new = sorted(set(info["missing_keys"]) | {key for key, *_ in info["mismatched_keys"]})
    new = [key for key in new if not key.endswith("num_batches_tracked")]  # a step counter, unused at inference
    if new and not new_head:
        task = family_of(model).task_of_class(model_class) or model_class.__name__
        saved = _saved_task(model_dir)
        if saved not in (None, task):
            start = (f"train {a_task(task)} head on it (mobilevit train --model {str(model_dir)} --task {task})"
                     if task in (CLASSIFICATION, SEGMENTATION) else  # what `mobilevit train` trains
                     f"start {a_task(task)} head on purpose with load_model(..., new_head={{...}}) and train it")
            raise NotAModelError(f"model: {str(model_dir)!r} holds {a_task(saved)} model, whose weights have no {task} "
                                 f"head ({len(new)} tensors missing, e.g. {new[0]}); load it as {saved}, or {start}")
        raise NotAModelError(f"model: the weights in {str(model_dir)!r} lack {len(new)} of the "
                             f"{len(model.state_dict())} tensors its config.json asks for (e.g. {new[0]}): they do "
                             "not belong to this config")
    check_finite_weights(model, f"model: the weights in {str(model_dir)!r}")
    model.new_tensors = new  # what was initialised here (a new head): for the caller's note
    return model


def _saved_task(model_dir) -> str | None:
    try:
        return task_of(load_config(model_dir), model_dir)
    except (UserError, ValueError):
        return None


def check_finite_weights(model, where: str) -> None:
    """Every floating-point weight and buffer of `model` is finite, or a one-line `NotAModelError`."""
    import torch

    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise NotAModelError(f"{where} hold NaN or infinity in {len(bad)} tensors (e.g. {bad[0]}); the model "
                             "cannot give meaningful outputs (was it saved from a training run that diverged?)")


def memory_per_image(config, task: str, height: int, width: int, training: bool) -> int:
    """Bytes one image of `height` x `width` takes through a model of `config` for `task` (`limits.activation_bytes`,
    on the meta device: nothing is allocated), plus nothing for the weights."""
    import torch

    def build():
        with torch.device("meta"):
            return new_model(config, task)

    return limits.memory_per_image(f"{config.to_json_string()}|{task}", build, config.num_channels, height, width,
                                   training)


def _first_shape_difference(model_class, model_dir, config) -> str:
    """Which tensors of a folder's safetensors weights differ in shape from what its config builds."""
    import torch
    from safetensors import safe_open

    weights = Path(model_dir) / "model.safetensors"
    if not weights.is_file():
        return "tensor shapes differ"
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}
    with safe_open(str(weights), "pt") as stored:
        found = {k: tuple(stored.get_slice(k).get_shape()) for k in stored.keys()}
    differ = [k for k in expected if k in found and found[k] != expected[k]]
    if not differ:
        return "tensor shapes differ"
    return (f"{len(differ)} tensors differ in shape, e.g. {differ[0]}: {found[differ[0]]} in the weights, "
            f"{expected[differ[0]]} from the config")


def load_model(model_dir: str | os.PathLike, task: str | None = None, *, new_head: dict | None = None,
               **from_pretrained_kwargs):
    """This package's model of a saved folder or Hub repository, for `task` (default: the folder's own head).

    A task whose head the folder does not hold is refused. `new_head`: config fields of a head made afresh on
    purpose (fine-tuning: `{"id2label": ..., "label2id": ...}` for the new labels, and any other config
    override); the model's `new_tensors` then lists what was initialised. `from_pretrained_kwargs` go to
    `from_pretrained`."""
    config = load_config(model_dir)
    known = family_of(config)
    task = canonical_task(task) if task is not None else task_of(config, model_dir)
    if new_head is None:
        return _from_pretrained(known.model_class(task), model_dir, **from_pretrained_kwargs)
    saved_labels = dict(config.id2label)
    try:
        config = type(config).from_dict({**config.to_dict(), **new_head, "num_labels": len(new_head.get(
            "id2label", config.id2label))})
    except (ValueError, TypeError) as err:
        raise NotAModelError(f"model: {str(model_dir)!r} with a new head: {err}") from None
    model = _from_pretrained(known.model_class(task), model_dir, config, new_head=True, **from_pretrained_kwargs)
    if dict(config.id2label) != saved_labels:  # other classes, maybe as many: the saved head's weights mean nothing
        head = _label_dependent_keys(config, task)
        fresh = new_model(config, task).state_dict()
        model.load_state_dict({key: fresh[key] for key in head}, strict=False)
        model.new_tensors = sorted(set(model.new_tensors) | head)
    return model


def _label_dependent_keys(config, task: str) -> set[str]:
    """The weights whose shape follows the number of classes (the head's last layer), found by building the
    model on the meta device with two class counts."""
    import torch

    shapes = []
    for count in (config.num_labels, config.num_labels + 1):
        labels = {i: f"LABEL_{i}" for i in range(count)}
        changed = type(config).from_dict({**config.to_dict(), "id2label": labels, "num_labels": count,
                                          "label2id": {v: k for k, v in labels.items()}})
        with torch.device("meta"):
            shapes.append({key: tuple(value.shape) for key, value in new_model(changed, task).state_dict().items()})
    return {key for key in shapes[0] if shapes[0][key] != shapes[1].get(key)}


def load_image_processor(model_dir: str | os.PathLike, config=None, **kwargs):
    """The folder's `preprocessor_config.json`, or the family's evaluation preprocessing when it has none. A file
    that is there but invalid is an error, never silently replaced by the defaults. A processor config that
    does not say how to upsample segmentation logits or how to pick detections (one saved by stock transformers or
    before these options existed) gets the family's way. `kwargs` override the folder's settings
    (`do_flip_channel_order=False`).

    A folder whose channel order is not the one its family was trained on (a MobileViTv2 folder converted by
    stock transformers flips to BGR) runs as the folder says, and the package says so once per folder and
    process, with the way to switch (`mobilevit convert --fix-preprocessing`)."""
    from .image_processing_mobilevit import MobileViTImageProcessor

    path = Path(model_dir)
    file = path / "preprocessor_config.json"
    where = repr(str(file)) if path.is_dir() else f"{str(model_dir)!r}'s preprocessor_config.json"
    if path.is_dir() and not file.exists() and not file.is_symlink():
        return image_processor_for(config if config is not None else load_config(model_dir))
    if path.is_dir() and not file.is_file():
        what = "a folder" if file.is_dir() else "a symbolic link to nothing" if file.is_symlink() else "not a file"
        raise NotAModelError(f"model: {where} is {what}; expected the processor's settings (JSON), or no such file "
                             "(the family's evaluation preprocessing is used then)")
    try:
        with quiet_transformers():
            processor = MobileViTImageProcessor.from_pretrained(str(model_dir), **kwargs)
    except OSError as err:
        if not path.is_dir() and "does not appear to have a file named" in str(err):  # a Hub repository without one
            return image_processor_for(config if config is not None else load_config(model_dir))
        raise NotAModelError(f"model: {where} cannot be read ({str(err).splitlines()[0]})") from None
    except (ValueError, TypeError) as err:
        raise NotAModelError(f"model: {where} holds an invalid setting ({str(err).splitlines()[0]})") from None
    check_processor_sizes(processor, where)
    try:
        config = config if config is not None else load_config(model_dir)
    except NotAModelError:  # a processor without a model: nothing to learn from
        return processor
    known = family_of(config)
    if processor.logits_align_corners is None:
        processor.logits_align_corners = known.segmentation_align_corners
    _say_if_channel_order_differs(model_dir, processor, known)
    if processor.detection_postprocessing is None and known.task_named_by(config) == OBJECT_DETECTION:
        processor.detection_postprocessing = known.detection_postprocessing.to_dict()
    return processor


def check_processor_sizes(processor, where: str) -> None:
    """A processor's resize and crop sizes within `mobilevit.limits`: a crop the network can take (32 to 8192
    pixels a side) and a resize of at most 9216, so that a stray `shortest_edge: 100000` fails on loading
    instead of as a multi-gigabyte allocation."""
    checks = []
    if processor.do_resize and processor.size:
        checks += [(f"size.{key}", value, 1, limits.MAX_RESIZE_SIDE) for key, value in dict(processor.size).items()
                   if value is not None]
    if processor.do_center_crop and processor.crop_size:
        checks += [(f"crop_size.{key}", value, limits.MIN_IMAGE_SIDE, limits.MAX_IMAGE_SIDE)
                   for key, value in dict(processor.crop_size).items() if value is not None]
    for name, value, low, high in checks:
        if not (isinstance(value, int) and low <= value <= high):
            why = (f"the network downsamples {low}x" if name.startswith("crop") and value < low else
                   "the limit of mobilevit.limits")
            raise NotAModelError(f"model: {where}: {name} expected {low} to {high} pixels ({why}), got {value!r}")


_CHANNEL_ORDER_NOTICES: set[str] = set()  # the folders this process has said it of


def _say_if_channel_order_differs(model_dir, processor, known: ModelFamily) -> None:
    """One line, once per folder and process, when a folder feeds its model the other channel order than the
    family's release trained it on."""
    trained = known.preprocessing.channel_order
    fed = "BGR" if processor.setting("do_flip_channel_order") else "RGB"
    path = Path(model_dir)
    key = str(path.resolve()) if path.exists() else str(model_dir)
    if fed == trained or key in _CHANNEL_ORDER_NOTICES:
        return
    _CHANNEL_ORDER_NOTICES.add(key)
    logger.warning(
        f"mobilevit: {str(model_dir)!r}: its preprocessor_config.json feeds {known.title} {fed} pixels, but "
        f"{known.preprocessing.release} trained {known.title} on {trained} ({known.preprocessing.describe()}); it runs "
        f"as the folder says. To switch: `mobilevit convert --fix-preprocessing {model_dir}` rewrites the file, or "
        f"pass do_flip_channel_order={trained == 'BGR'} to the processor (docs/image-processor.md)")


def load_model_and_processor(model_dir: str | os.PathLike, task: str | None = None, **from_pretrained_kwargs):
    """(model in eval mode, image processor, task) of a saved folder or Hub repository."""
    config = load_config(model_dir)
    task = canonical_task(task) if task is not None else task_of(config, model_dir)
    processor = load_image_processor(model_dir, config, **from_pretrained_kwargs)  # checked before the weights
    model = _from_pretrained(family_of(config).model_class(task), model_dir, config, **from_pretrained_kwargs)
    return model.eval(), processor, task


# ---------------------------------------------------------------------------------------------------------
# transformers-style entry points
# ---------------------------------------------------------------------------------------------------------
class AutoConfig:
    """`AutoConfig.from_pretrained(folder_or_repo)`: the config class of the folder's `model_type`."""

    from_pretrained = staticmethod(load_config)


class AutoModel:
    """`from_pretrained(folder_or_repo, **kwargs)` / `from_config(config)` for the bare backbone of any family;
    the subclasses below do the same for a head."""

    task = FEATURE_EXTRACTION

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, **kwargs):
        return load_model(model_dir, cls.task, **kwargs)

    @classmethod
    def from_config(cls, config):
        return new_model(config, cls.task)


class AutoModelForImageClassification(AutoModel):
    task = CLASSIFICATION


class AutoModelForSemanticSegmentation(AutoModel):
    task = SEGMENTATION


class AutoModelForObjectDetection(AutoModel):
    task = OBJECT_DETECTION


__all__ = ["FAMILIES", "NotAModelError", "family", "family_of", "task_of", "task_of_model", "resolve_variant",
           "new_config", "new_model", "image_processor_for", "family_for_checkpoint", "load_config", "load_model",
           "load_image_processor", "load_model_and_processor", "check_processor_sizes", "check_finite_weights",
           "memory_per_image", "quiet_transformers", "AutoConfig", "AutoModel",
           "AutoModelForImageClassification", "AutoModelForSemanticSegmentation", "AutoModelForObjectDetection"]
