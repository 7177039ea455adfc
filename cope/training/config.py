"""Settings of a ``cope train`` run (pydantic only: the CLI builds its flags from these without importing torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainConfig(BaseModel):
    """Settings of one training run (``cope train`` flags map onto these)."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(default=128, ge=2, description="size of the shared space (at most the stored vectors' dimension)")
    shared_projection: bool = Field(default=True, description="one image and one text projection for all domains")
    hidden: int = Field(default=0, ge=0, description="width of a residual MLP in the projections (0: linear)")
    init: Literal["pca", "random"] = Field(default="pca", description="projection start: PCA of the data or random")
    center: bool = Field(default=False, description="centre each domain's image and text vectors on their mean")
    projection_lr_scale: float = Field(default=1.0, ge=0, description="learning-rate factor of the input "
                                       "projections (0 freezes them: only domain heads, fusion and centres learn)")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    epochs: int = Field(default=200, ge=1)
    batch_products: int = Field(default=64, ge=2, description="products per batch (one item per domain each)")
    lr: float = Field(default=3e-4, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    temperature: float = Field(default=0.05, gt=0, description="InfoNCE temperature (initial value if learned)")
    learn_temperature: bool = True
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    cosface_weight: float = Field(default=0.0, ge=0, description="weight of the CosFace product-ID loss (0: off)")
    cosface_margin: float = Field(default=0.2, ge=0)
    cosface_scale: float = Field(default=20.0, gt=0)
    val_fraction: float = Field(default=0.1, ge=0, lt=1, description="share of products for early stopping")
    test_fraction: float = Field(default=0.2, ge=0, lt=1, description="share of products held out for the report")
    patience: int = Field(default=20, ge=1, description="epochs without validation gain before stopping")
    monitor: Literal["mrr", "r1"] = Field(default="mrr", description="validation metric (mean over directions)")
    max_eval_products: int = Field(default=5000, ge=2, description="evaluate on at most this many products")
    ks: tuple[int, ...] = (1, 5, 10)
    seed: int = 0
    threads: int | None = Field(default=None, ge=1)
    device: str = "cpu"
    progress: bool | None = Field(default=None, description="None: show a bar when logging is at INFO")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1")
        return self
