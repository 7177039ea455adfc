"""The shared Magento catalog (../shared/data/products_magento) as cope inputs, for the benchmarks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_inputs(data: Path, work: Path, *, description: bool = True, prefix: str = "") -> tuple[Path, Path]:
    """The embed manifest (text-only product pages, with their description or title only, + one image record per
    photo with its role) and the pairs file (text / main / extra_view) under ``work``."""
    products = read_jsonl(data / "products_magento" / "manifest.jsonl")
    images = read_jsonl(data / "products_magento" / "images.jsonl")
    work.mkdir(parents=True, exist_ok=True)
    manifest, pairs = work / f"{prefix}manifest.jsonl", work / f"{prefix}pairs.csv"
    with manifest.open("w") as m, pairs.open("w") as p:
        p.write("item_id,product_key,domain\n")
        for prod in products:
            page = {"domain": "product", "item_id": prod["id"], "title": prod["title"]}
            if description:
                page["description"] = prod.get("description", "")
            m.write(json.dumps({**page, "product_key": prod["id"]}) + "\n")
            p.write(f"product:{prod['id']},{prod['id']},text\n")
        for im in images:
            m.write(json.dumps({"domain": "image", "image_id": im["id"], "uri": str(data / im["path"]),
                                "product_key": im["product_id"], "role": im["role"]}) + "\n")
            p.write(f"image:{im['id']},{im['product_id']},{'main' if im['role'] == 'main' else 'extra_view'}\n")
    return manifest, pairs
