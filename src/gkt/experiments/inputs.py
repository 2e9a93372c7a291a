"""The CLI's model and data loading as Python calls: :func:`load_data` reads a data spec as the verbs do,
:func:`load_model` a model spec aligned to the data's classes as ``--student``/``--teacher``/``--models``
are; and :func:`input_options`, the ``--bad-images``/``--img-size`` settings every API call takes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gkt.data.datasets import ImageDataset
from gkt.data.decode import bad_images_default
from gkt.data.spec import load_split
from gkt.data.subsets import stratified_subset
from gkt.models import Classifier, DataInfo
from gkt.models import load_model as load_spec
from gkt.models.class_map import ClassMapLike
from gkt.models.specs import img_size_default


@contextlib.contextmanager
def input_options(bad_images: str | None = None, img_size: int | None = None) -> Iterator[None]:
    """Within the block, data loads with the ``bad_images`` policy (``fail`` or ``skip``; None: ``$GKT_BAD_IMAGES``,
    else fail) and every library model (``timm:``, ``hf:``, ``torchvision:``) at ``img_size`` px (None: each
    model's own), as the CLI's ``--bad-images`` and ``--img-size`` set them."""
    with bad_images_default(bad_images), img_size_default(img_size):
        yield


def load_data(spec: str, split: str = "train", *, fraction: float = 1.0, seed: int = 0, val_fraction: float = 0.0,
              data_dir: str | None = None, bad_images: str | None = None) -> ImageDataset:
    """One split of a data spec, as the CLI reads ``--data SPEC``.

    ``spec``: ``fmnist`` | ``digits`` | ``folder:PATH`` (``PATH/train/<class>/<images>``, and ``PATH/val/`` or
    ``PATH/test/`` when shipped) | ``hf:DIR`` (``datasets``' ``save_to_disk``) | ``hf:ORG/NAME[:CONFIG]``, each
    optionally ``[classes]`` and ``@domain`` (see the README's Specs).
    ``split``: ``train``, ``val`` or ``test`` (a folder's or ``hf:`` data's test split is its ``test``, else its
    shipped val split).
    ``fraction``: keep a stratified share of the split, drawn with ``seed`` — ``gkt transfer --fraction F --seed S``'s
    transfer set is ``load_data(spec, fraction=F, seed=S)``.
    ``seed``: the seed of ``fraction``'s draw and of a carved val split.
    ``val_fraction``: the share of train carved (stratified, seeded) as the val split when the data ships none;
    ``train`` is then the rest. The default 0 keeps train whole, as ``gkt transfer`` and ``gkt study`` read it;
    a data set that ships a val split (a folder's ``val/``, an ``hf:`` validation split) keeps train whole always.
    ``data_dir``: the Fashion-MNIST directory (``--data-dir``; else ``$GKT_DATA``, the Debian package, the cache).
    ``bad_images``: an undecodable image ``fail`` s naming it, or is ``skip`` ped (default ``$GKT_BAD_IMAGES``,
    else fail)."""
    dataset = load_split(spec, split, data_dir=data_dir, val_fraction=val_fraction, seed=seed,
                         bad_images=bad_images)
    return stratified_subset(dataset, fraction=fraction, seed=seed)


def data_info(data: str | ImageDataset | DataInfo, data_dir: str | None = None) -> DataInfo:
    """What a model is built and aligned for: a data spec's train split (as the verbs read it), a dataset's, or
    the :class:`DataInfo` itself."""
    if isinstance(data, DataInfo):
        return data
    return DataInfo.from_dataset(load_data(data, data_dir=data_dir) if isinstance(data, str) else data)


def class_map_of(class_map: str | Path | dict[str, Any] | None, data: DataInfo | None) -> ClassMapLike | None:
    """A ``class_map`` keyword as :func:`gkt.models.load_model` takes it: a file's path or a mapping; left out
    with data, ``"auto"`` (classes matched by name, as the verbs do)."""
    if isinstance(class_map, dict):
        return class_map
    return str(class_map) if class_map else "auto" if data is not None else None


def load_model(spec: str, *, data: str | ImageDataset | DataInfo | None = None,
               class_map: str | Path | dict[str, Any] | None = None, data_dir: str | None = None,
               zoo_dir: str | None = None, img_size: int | None = None) -> Classifier:
    """A model spec as the CLI loads ``--student``, ``--teacher`` and ``--models`` SPEC: a :class:`Classifier`
    (on CPU, in eval mode) whose logits follow the data's classes.

    ``spec``: ``zoo:NAME`` | ``timm:NAME`` or ``timm:hf-hub:ORG/NAME`` | ``hf:ORG/NAME`` or ``hf:DIR`` (transformers) |
    ``torchvision:ARCH[:WEIGHTS]`` | ``file:PATH`` (a gkt checkpoint, e.g. ``file:RUN_DIR/student``), each with
    ``?key=value`` options (see the README's Specs).
    ``data``: the data the model is used on: a data spec (its train split is read, as the verbs do), a dataset
    from :func:`load_data`, or a :class:`~gkt.models.DataInfo`; the model is aligned to its classes and checked
    against them. None: the model's own classes.
    ``class_map``: a JSON/YAML file or a dict ``{data_class: model_class_or_list}`` aligning the model's classes
    to the data's (a mapped logit is the logsumexp of the model's classes; needs ``data``); None with ``data``:
    classes matched by name (``--class-map`` left out).
    ``data_dir``: the Fashion-MNIST directory when ``data`` is an ``fmnist`` spec.
    ``zoo_dir``: where the embedded zoo is cached (default ``$GKT_HOME/zoo``).
    ``img_size``: a library model's input size in px (``--img-size``; a spec's own ``?img_size=N`` wins)."""
    info = None if data is None else data_info(data, data_dir)
    with img_size_default(img_size):
        return load_spec(spec, info, zoo_dir, class_map=class_map_of(class_map, info))
