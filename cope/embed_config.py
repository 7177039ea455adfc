"""Settings and summary of an embed run (light: no torch, no LanceDB), shared by the CLI and both schedulers."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cope.content import ExtractOptions
from cope.encoders.registry import DEFAULT_MODEL
from cope.fusion import FusionConfig
from cope.manifest import ManifestOptions, check_columns
from cope.media import RemoteOptions
from cope.pipeline import EncoderSpec, PipelineSpec

EXIT_OK = 0
EXIT_SOME_FAILED = 3

#: stages of a run as :attr:`EmbedSummary.stages` times them: read (manifest rows, content hashes, stored-hash
#: lookups), decode (extractors: open and decode media), ocr, preprocess (resize and crop into tensors), wait (the
#: model thread waiting for extraction), encode (model forward passes), fusion (fuse, heads, projection, store rows),
#: write (upserts and error rows), compact (at the end)
STAGES = ("read", "decode", "ocr", "preprocess", "wait", "encode", "fusion", "write", "compact")


class EmbedConfig(BaseModel):
    """Settings of one ``cope embed`` run; the CLI's flags and defaults are generated from these fields."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(default=DEFAULT_MODEL, description="encoder: a registered name, open_clip:<arch> or "
                       "local-dir:<folder>")
    pretrained: str | None = Field(default=None, description="open_clip weights: a .pt/.safetensors file, "
                                   "local-dir:<folder>, or a hub tag")
    table: str = Field(default="items", description="table name in the database")
    batch_size: int = Field(default=32, ge=1, description="images per forward pass")
    text_batch_size: int = Field(default=64, ge=1, description="texts per forward pass")
    workers: int = Field(default=2, ge=1, description="extraction threads (decode and preprocess)")
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads (default: torch's choice)")
    device: str = Field(default="cpu", description="torch device, e.g. cuda")
    write_every: int = Field(default=512, ge=1, description="rows buffered per upsert")
    lookup_every: int = Field(default=512, ge=1, description="records per stored-hash lookup")
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    extract: ExtractOptions = Field(default_factory=ExtractOptions)
    default_domain: str | None = Field(default=None, description="domain of rows that have no 'domain' column")
    columns: dict[str, str] = Field(default_factory=dict, description="manifest column of a record field, "
                                    "FIELD=NAME (item_id=sku, title=name, images=image_path; product.title=name for "
                                    "one domain); repeat for several")
    media_root: str | None = Field(default=None, description="folder or URL prefix (s3://bucket/media/) that "
                                   "relative media paths are resolved against (default: each manifest's folder)")
    remote: RemoteOptions | None = Field(default=None, description="timeouts, retries, per-host limit of remote "
                                         "media reads (cope.media.configure); None: the process's settings")
    progress: bool | None = Field(default=None, description="None: show a bar when logging is at INFO")
    compact: bool = Field(default=True, description="merge fragments and drop old versions at the end")
    heads: str | None = Field(default=None, description="trained COPE heads (cope train --out) applied before "
                              "writing; the table then holds the heads' space")
    projection: str | None = Field(default=None, description="a fitted projection folder (cope reproject --pca, "
                                   "<db>/_cope_projections/<fingerprint>) applied last; default: the table's own, "
                                   "when it has one")

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        return check_columns(v)  # refuses unknown fields, naming the known ones

    def manifest_options(self) -> ManifestOptions:
        """How this run reads its manifests (domain, column mapping, media root)."""
        return ManifestOptions(default_domain=self.default_domain, columns=self.columns, media_root=self.media_root)

    def pipeline_spec(self) -> PipelineSpec:
        """The spec of the vectors this run makes (heads and projection are added by :meth:`EmbedCore.open`)."""
        options = {"pretrained": self.pretrained} if self.pretrained else {}
        return PipelineSpec(encoder=EncoderSpec(name=self.model, options=options), extract=self.extract,
                            fusion=self.fusion)


@dataclass
class EmbedSummary:
    done: int = 0  # records embedded and written
    items: int = 0  # rows written (a live stream yields one per slice)
    skipped: int = 0  # records already stored with the same content hash and pipeline
    failed: int = 0  # records that failed to extract or encode
    invalid: int = 0  # manifest rows that are not valid records
    seconds: float = 0.0
    images: int = 0
    model_tag: str = ""
    errors: list[str] = field(default_factory=list)  # the first few reasons, for the summary
    unindexed: int | None = None  # rows not yet in the table's ANN index (searched exactly); None: no ANN index
    ocr_failed: int = 0  # records written without their OCR part (the reason is in the errors table)
    ocr_read: int = 0  # pictures read by OCR in this run
    ocr_cached: int = 0  # pictures whose text came from the OCR cache
    ocr_ms: int = 0  # time spent reading pictures, summed over the extraction workers
    #: seconds per stage (see :data:`STAGES`); decode, ocr and preprocess are summed over the extraction threads
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    def stage_report(self) -> str:
        """``read 0.2 s, decode 3.1 s, ...`` in pipeline order (the stages that ran)."""
        order = [s for s in STAGES if s in self.stages] + sorted(set(self.stages) - set(STAGES))
        return ", ".join(f"{s} {self.stages[s]:.2f} s" for s in order)

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if (self.failed or self.invalid or self.ocr_failed) else EXIT_OK

    def __str__(self) -> str:
        return (
            f"done {self.done} records ({self.items} items, {self.images} images), skipped {self.skipped}, "
            f"failed {self.failed}, invalid rows {self.invalid}; {self.seconds:.1f} s, "
            f"{self.items_per_second:.1f} items/s"
            + (f"; {self.unindexed} rows not in the ANN index yet (run `cope index`)" if self.unindexed else "")
            + (f"; OCR read {self.ocr_read} pictures ({self.ocr_cached} cached, {self.ocr_failed} records failed)"
               if self.ocr_read or self.ocr_cached or self.ocr_failed else "")
        )
