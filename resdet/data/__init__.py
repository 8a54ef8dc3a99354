"""Datasets, transforms and samplers.

Classification: ``build_cls_dataset(name, root, split, train=...)`` builds ``cifar10``,
``imagenet``, ``digits`` or ``folder:PATH`` (see resdet.data.folder).
"""

from resdet.data.folder import build_cls_dataset

__all__ = ["build_cls_dataset"]
