"""Datasets, transforms and samplers.

Datasets are built by registered name (``resdet.data.catalog``; ``resdet datasets`` lists them):
``build_cls_dataset("cifar10", root, split, train=...)`` for classification,
``build_det_dataset("coco", root, train=...)`` for detection.
"""

from resdet.data.catalog import build_cls_dataset, build_det_dataset

__all__ = ["build_cls_dataset", "build_det_dataset"]
