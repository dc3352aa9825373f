"""Backbones: the feature extractors methods are built on."""

from .backbones import BACKBONES, MLP, Conv4, ResNet12, build_backbone, conv_block, feature_dim
from .feature_transform import Conv4FT, add_feature_transforms
from .pretrained import register_architecture

__all__ = ["BACKBONES", "MLP", "Conv4", "Conv4FT", "ResNet12", "add_feature_transforms", "build_backbone", "conv_block", "feature_dim",
           "register_architecture"]
