"""Transfer recipes: the defaults a transfer takes for what the user leaves out — gkt's own, or the paper
authors' (Roth et al., ICLR 2024, and their code). A recipe never overrides an option the user gave: an
explicit ``--lr`` or ``--augment`` wins (:meth:`TransferRecipe.resolve`). docs/methods.md lists where gkt
and the authors' code differ beyond these settings."""

from __future__ import annotations

from dataclasses import dataclass

from gkt.core.errors import GktError


@dataclass(frozen=True)
class TransferRecipe:
    """The settings a recipe fills in."""

    lr: float  # SGD learning rate (per 256 samples of a batch where ``lr_per_256``)
    lr_per_256: bool  # the rate scales linearly with the batch size: lr · batch/256
    augment: tuple[str, ...]  # batch augmentations (gkt.data.augment)
    online_targets: bool  # the frozen models' outputs (and KL+DP's mask) recomputed on every augmented step
    summary: str

    def learning_rate(self, batch_size: int) -> float:
        return self.lr * batch_size / 256 if self.lr_per_256 else self.lr

    def resolve(self, lr: float | None, augment: tuple[str, ...] | None, batch_size: int
                ) -> tuple[float, tuple[str, ...]]:
        """``(lr, augment)``: the given values, the recipe's where None."""
        return (self.learning_rate(batch_size) if lr is None else lr,
                self.augment if augment is None else tuple(augment))


RECIPES: dict[str, TransferRecipe] = {
    # lr 3e-4: the best rate of the sweep in docs/methods.md ("Defaults and why"); no augmentation, so the
    # frozen models' outputs are computed once and cached
    "gkt": TransferRecipe(3e-4, False, (), False, "lr 3e-4, no augmentation, cached targets"),
    # the authors' code: lr 1e-4 scaled by batch/256, flip + colour distortion + greyscale, the teacher, the
    # frozen student and KL+DP's mask computed on every augmented batch
    "paper": TransferRecipe(1e-4, True, ("paper",), True,
                            "lr 1e-4·batch/256, flip + colour distortion + greyscale, targets and the DP "
                            "mask recomputed on every augmented step"),
}


def get_recipe(name: str) -> TransferRecipe:
    if name not in RECIPES:
        raise GktError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[name]


def describe_recipes() -> str:
    """One clause per recipe, for help texts."""
    return "; ".join(f"{name}: {recipe.summary}" for name, recipe in RECIPES.items())
