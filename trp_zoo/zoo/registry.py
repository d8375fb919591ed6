"""The model zoo: named checkpoints, their hub repos, recipes and numbers with provenance.

Modelled on timm's registry (names, glob filters) and torchvision's weights metadata
(each entry says what it is, how it was made and what it scores, and where the score comes
from). No weights are published yet: every entry's ``published`` is False, its ``metrics``
(numbers measured by our code on published weights) are empty, and ``targets`` holds the
paper's numbers, labelled as the target a recipe aims for. A model trained on this machine
appears in ``list_models()`` too, with the numbers its recipe measured (see ``store``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import UnknownModelError
from ..modules import close_matches
from .store import local_models

HUB_ORG = "trp-zoo"
PAPER = "Xu et al., Trained Rank Pruning for Efficient Deep Neural Networks (IJCAI 2020)"


@dataclass(frozen=True)
class PaperResult:
    """A row of the TRP paper's results table: the target for an entry's recipe."""

    top1: float
    macs_reduction: float
    dense_top1: float | None = None
    top5: float | None = None
    params_m: float | None = None
    source: str = PAPER


@dataclass(frozen=True)
class ZooEntry:
    """One named model of the zoo."""

    name: str
    base_architecture: str  # a timm model name
    scheme: str  # "channel" or "spatial"
    dataset: str
    num_classes: int
    input_size: tuple[int, int, int]
    recipe: str  # the command that trains and saves it
    published: bool = False  # weights on the hub at repo_id
    metrics: Mapping[str, float] = field(default_factory=dict)  # measured on published weights
    metrics_source: str | None = None  # where the measured metrics come from
    targets: tuple[PaperResult, ...] = ()

    @property
    def repo_id(self) -> str:
        """The hub repo the recipe publishes to."""
        return f"{HUB_ORG}/{self.name}"

    def publish_hint(self) -> str:
        return f"python -m trp_zoo publish CHECKPOINT_DIR --repo {self.repo_id}"


def _entry(
    name: str,
    base: str,
    scheme: str,
    dataset: str,
    num_classes: int,
    input_size: tuple[int, int, int],
    recipe: str,
    *targets: PaperResult,
) -> ZooEntry:
    command = f"python {recipe} --scheme {scheme}"
    return ZooEntry(name, base, scheme, dataset, num_classes, input_size, command, targets=targets)


_IMAGENET = ("imagenet-1k", 1000, (3, 224, 224))
_CIFAR10 = ("cifar10", 10, (3, 32, 32))
_FMNIST = ("fashion-mnist", 10, (1, 28, 28))

_ENTRIES = (
    _entry(
        "resnet50_trp_ch",
        "resnet50",
        "channel",
        *_IMAGENET,
        "recipes/imagenet_resnet50.py",
        PaperResult(72.69, 2.23, dense_top1=75.90, top5=91.41),
        PaperResult(74.06, 1.80, dense_top1=75.90, top5=92.07),
    ),
    _entry("resnet50_trp_sp", "resnet50", "spatial", *_IMAGENET, "recipes/imagenet_resnet50.py"),
    _entry("resnet18_trp_ch", "resnet18", "channel", *_IMAGENET, "recipes/imagenet_resnet18.py"),
    _entry("resnet18_trp_sp", "resnet18", "spatial", *_IMAGENET, "recipes/imagenet_resnet18.py"),
    _entry(
        "resnet20_trp_ch",
        "cifar_resnet20",
        "channel",
        *_CIFAR10,
        "recipes/cifar10_resnet20.py",
        PaperResult(90.50, 2.17, dense_top1=91.74, params_m=0.10),
    ),
    _entry(
        "resnet20_trp_sp",
        "cifar_resnet20",
        "spatial",
        *_CIFAR10,
        "recipes/cifar10_resnet20.py",
        PaperResult(90.62, 2.84, dense_top1=91.74, params_m=0.08),
    ),
    _entry(
        "resnet56_trp_ch", "cifar_resnet56", "channel", *_CIFAR10, "recipes/cifar10_resnet56.py"
    ),
    _entry(
        "resnet18_trp_ch_fmnist",
        "resnet18",
        "channel",
        *_FMNIST,
        "recipes/fashion_mnist_resnet18.py",
    ),
    _entry(
        "resnet18_trp_sp_fmnist",
        "resnet18",
        "spatial",
        *_FMNIST,
        "recipes/fashion_mnist_resnet18.py",
    ),
    # models with Linear layers (the paper has no result for them: no targets)
    _entry(
        "deit_small_trp_ch",
        "deit_small_patch16_224",
        "channel",
        *_IMAGENET,
        "recipes/imagenet_deit_small.py",
    ),
    _entry(
        "convnext_tiny_trp_ch",
        "convnext_tiny",
        "channel",
        *_IMAGENET,
        "recipes/imagenet_convnext_tiny.py",
    ),
    # resized by the recipe's model_kwargs (they travel in the checkpoint's config.json)
    _entry(
        "vit_trp_ch_fmnist",
        "vit_tiny_patch16_224",
        "channel",
        *_FMNIST,
        "recipes/fashion_mnist_vit.py",
    ),
    _entry(
        "convnext_trp_ch_fmnist",
        "convnext_atto",
        "channel",
        *_FMNIST,
        "recipes/fashion_mnist_convnext.py",
    ),
)

REGISTRY: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}


def get_entry(name: str) -> ZooEntry:
    """The registry entry for ``name`` (an ``UnknownModelError`` with close matches if none)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"{name!r} is not in the zoo registry.{close_matches(name, REGISTRY)}"
        ) from None


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def list_models(
    filter: str | Sequence[str] = "",
    *,
    exclude_filters: str | Sequence[str] = "",
    pretrained: bool = False,
) -> list[str]:
    """Names of the zoo's models: the registry plus checkpoints recorded on this machine.

    ``filter``/``exclude_filters`` are shell-style globs (as in ``timm.list_models``);
    ``pretrained=True`` keeps only names whose weights are published or stored locally.
    """

    local = set(local_models())
    names = sorted(set(REGISTRY) | local)
    include = [filter] if isinstance(filter, str) else list(filter)
    exclude = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    include, exclude = [p for p in include if p], [p for p in exclude if p]
    if include:
        names = [n for n in names if _matches(n, include)]
    if exclude:
        names = [n for n in names if not _matches(n, exclude)]
    if pretrained:
        names = [n for n in names if n in local or (n in REGISTRY and REGISTRY[n].published)]
    return names
