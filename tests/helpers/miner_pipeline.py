"""Score images with an exported folder exactly the way the NATIX miner does, and print the result as JSON.

natixnetwork/streetvision-subnet ``base_miner/detectors/vit_detector.py`` (HEAD 28a1755) loads a submission
with ``pipeline("image-classification", model=AutoModelForImageClassification.from_pretrained(repo),
feature_extractor=AutoImageProcessor.from_pretrained(repo, use_fast=True))``, calls it on each PIL image and
reads the score labelled "Roadwork". Run it with the transformers under test first on the path, e.g.
``PYTHONPATH=.cache/hf-4.45.2 python tests/helpers/miner_pipeline.py EXPORT_DIR IMAGE...``.

Output: ``{"transformers": version, "processor": class name, "scores": [Roadwork score per image]}``.
"""

from __future__ import annotations

import json
import sys

from PIL import Image


def main(argv: list[str]) -> int:
    import transformers
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    folder, images = argv[0], argv[1:]
    classifier = pipeline(
        "image-classification",
        model=AutoModelForImageClassification.from_pretrained(folder),
        feature_extractor=AutoImageProcessor.from_pretrained(folder, use_fast=True),
    )
    scores = []
    for path in images:
        with Image.open(path) as image:
            answer = {item["label"]: item["score"] for item in classifier(image.convert("RGB"))}
        scores.append(float(answer["Roadwork"]))
    processor = type(classifier.image_processor).__name__
    print(json.dumps({"transformers": transformers.__version__, "processor": processor, "scores": scores}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
