"""The pipeline spec: everything an item's vector is a function of, as one typed, serialisable object.

An item's vector depends on the encoder (name, options, weights fingerprint), the extraction options (frames per
video and per slice, images per product), the fusion weights, optional trained heads (by fingerprint) and an
optional fitted projection (PCA, by fingerprint) applied last. The spec
names all of them, has one :attr:`PipelineSpec.tag`, writes itself into a table's schema metadata and is rebuilt
from it (as lancedb does with ``function_to_metadata`` / ``parse_functions``). The embed job, the Ray engine,
``reproject``, ``eval``, ``train``, queries and the notebook all go through it; nothing parses a tag string back.

This module is data only (pydantic, no torch). :class:`cope.embedding.Pipeline` builds the models from a spec.

>>> spec = PipelineSpec(encoder=EncoderSpec(name="open_clip:ViT-S-32"), encoder_tag="ViT-S-32/abc", encoder_dim=512)
>>> spec.tag
'ViT-S-32/abc;fusion=image:0.5,text:0.5'
>>> PipelineSpec.from_metadata(spec.to_metadata()) == spec
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cope.content import ExtractOptions
from cope.encoders.registry import DEFAULT_MODEL
from cope.errors import HeadsMismatchError, StoreMismatchError
from cope.fusion import FusionConfig
from cope.store.schema import META_DIM, META_LEGACY_SPEC, META_MODEL_TAG, META_PIPELINE

#: extraction options that change vectors (image_size is only a decode hint derived from the encoder; the video
#: decoder and the pixel limit choose how, not what, is decoded)
_TAGGED_EXTRACT = {"frames_per_video": "v", "frames_per_slice": "s", "max_images_per_product": "p"}


OptionValue = str | int | float | bool | None


class EncoderSpec(BaseModel):
    """Which encoder, and the options that build it (``create_encoder(name, **options)``), e.g. ``pretrained``: an
    open_clip weights file, ``local-dir:`` folder or hub tag. Run-time options (device, threads) are not part of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = DEFAULT_MODEL
    options: dict[str, OptionValue] = Field(default_factory=dict)

    @property
    def pretrained(self) -> str | None:
        value = self.options.get("pretrained")
        return str(value) if value is not None else None


class HeadsRef(BaseModel):
    """Trained COPE heads, named by the fingerprint of their weights.

    ``uri`` is where they were found (absolute); a table's database folder also keeps a copy under
    ``_cope_heads/<fingerprint>/``, so the heads are found again from any working directory (see
    :func:`cope.heads.locate_heads`). Either copy is checked against the fingerprint before use.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fingerprint: str
    base_tag: str = Field(description="tag of the pipeline whose (image, text) vectors the heads take")
    dim: int = Field(ge=1)
    domains: tuple[str, ...]
    default_domain: str | None = None
    uri: str | None = None


class ProjectionRef(BaseModel):
    """A projection fitted on a catalog's vectors (``kind`` ``pca``: keep the top ``dim`` principal directions,
    L2-normalise), named by the fingerprint of its parameters and applied after fusion and heads.

    ``base_tag``/``input_dim`` name the vectors it takes (the pipeline's tag and dimension without the projection).
    ``uri`` is where the parameters were found (absolute); the database folder keeps a copy under
    ``_cope_projections/<fingerprint>/`` (see :func:`cope.projection.locate_projection`). Either copy is checked
    against the fingerprint before use.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["pca"] = "pca"
    fingerprint: str
    base_tag: str = Field(description="tag of the pipeline whose vectors the projection takes")
    input_dim: int = Field(ge=1)
    dim: int = Field(ge=1)
    uri: str | None = None


class PipelineSpec(BaseModel):
    """Encoder, extraction, fusion, heads and projection of one vector space. ``encoder_tag``/``encoder_dim`` are
    filled in when the encoder is built (:meth:`cope.embedding.Pipeline.build`): they fingerprint its weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    encoder: EncoderSpec = Field(default_factory=EncoderSpec)
    extract: ExtractOptions = Field(default_factory=ExtractOptions)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    heads: HeadsRef | None = None
    encoder_tag: str | None = None
    encoder_dim: int | None = Field(default=None, ge=1)
    projection: ProjectionRef | None = None

    # -- identity ------------------------------------------------------------------------------------------------
    @property
    def resolved(self) -> bool:
        return self.encoder_tag is not None and self.encoder_dim is not None

    def _require_resolved(self) -> None:
        if not self.resolved:
            raise ValueError("the spec has no encoder_tag yet: build it with cope.embedding.Pipeline.build(spec)")

    @property
    def base_tag(self) -> str:
        """Tag of the vectors before heads: encoder, fusion, non-default extraction options and the OCR settings."""
        self._require_resolved()
        default = ExtractOptions()
        changed = [f"{short}{getattr(self.extract, name)}" for name, short in _TAGGED_EXTRACT.items()
                   if getattr(self.extract, name) != getattr(default, name)]
        tag = f"{self.encoder_tag};{self.fusion.tag}" + (f";extract={','.join(changed)}" if changed else "")
        if self.extract.ocr:  # what is read in pictures, and how much of it goes into the unified vector
            e = self.extract
            tag += (f";ocr=w{self.fusion.ocr_weight:g},s{e.ocr_max_side},n{e.ocr_images},"
                    f"m{e.ocr_min_score:g},b{int(e.ocr_body_text)}")
        return tag

    @property
    def tag(self) -> str:
        """The one name of this vector space: two pipelines with the same tag give the same vectors."""
        tag = self.base_tag + (f";heads={self.heads.fingerprint}" if self.heads else "")
        return tag + (f";{self.projection.kind}={self.projection.fingerprint}" if self.projection else "")

    @property
    def dim(self) -> int:
        if self.projection is not None:
            return self.projection.dim
        self._require_resolved()
        assert self.encoder_dim is not None
        return self.heads.dim if self.heads else self.encoder_dim

    def without_heads(self) -> PipelineSpec:
        """The base pipeline (no heads, hence no projection either: it was fitted on the heads' vectors)."""
        return self.model_copy(update={"heads": None, "projection": None})

    def without_projection(self) -> PipelineSpec:
        return self.model_copy(update={"projection": None})

    def with_projection(self, projection: ProjectionRef) -> PipelineSpec:
        """This pipeline followed by ``projection``, refused unless it was fitted on this pipeline's vectors."""
        before = self.without_projection()
        if projection.base_tag != before.tag or projection.input_dim != before.dim:
            raise StoreMismatchError(
                f"this {projection.kind} projection was fitted on vectors of {projection.base_tag!r} "
                f"(dim {projection.input_dim}), but this pipeline makes {before.tag!r} (dim {before.dim}). Fit one on "
                "a table of this pipeline (`cope reproject --pca DIM`) or embed with the projection's pipeline."
            )
        return self.model_copy(update={"projection": projection})

    def with_heads(self, heads: HeadsRef) -> PipelineSpec:
        if self.projection is not None:
            raise HeadsMismatchError(
                f"this pipeline ends in a {self.projection.kind} projection ({self.projection.fingerprint}): heads "
                "take the vectors before it. Add the heads to the pipeline without the projection, then fit one."
            )
        if heads.base_tag != self.base_tag:
            raise HeadsMismatchError(
                f"these heads were trained on vectors of {heads.base_tag!r}, but this pipeline makes {self.base_tag!r}."
                " Train heads on a table of this model (`cope train`) or embed with the heads' base model."
            )
        return self.model_copy(update={"heads": heads})

    # -- schema metadata -----------------------------------------------------------------------------------------
    def to_metadata(self) -> dict[bytes, bytes]:
        """Schema metadata entries of a table holding this pipeline's vectors."""
        return {META_PIPELINE: self.model_dump_json(exclude_none=False).encode(), META_MODEL_TAG: self.tag.encode(),
                META_DIM: str(self.dim).encode()}

    @classmethod
    def from_metadata(cls, metadata: Mapping[bytes, bytes] | None) -> PipelineSpec | None:
        """The spec stored in a table's schema metadata (``None`` when the table has none, e.g. not a cope table).

        Tables written before the spec existed carry ``cope.model_spec`` and ``cope.model_tag``; they are read too.
        """
        meta = dict(metadata or {})
        if META_PIPELINE in meta:
            return cls.model_validate_json(meta[META_PIPELINE])
        if META_LEGACY_SPEC not in meta or META_MODEL_TAG not in meta:
            return None
        legacy = json.loads(meta[META_LEGACY_SPEC] or b"{}")
        tag = meta[META_MODEL_TAG].decode()
        if not legacy.get("model") or legacy.get("heads"):
            return None  # too old to rebuild: vectors only
        fusion = FusionConfig(**legacy.get("fusion", {}))
        options = {"pretrained": legacy["pretrained"]} if legacy.get("pretrained") else {}
        spec = cls(encoder=EncoderSpec(name=legacy["model"], options=options), fusion=fusion,
                   encoder_tag=tag.removesuffix(f";{fusion.tag}"), encoder_dim=int(meta[META_DIM]))
        return spec if spec.tag == tag else None
