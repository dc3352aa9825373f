"""Backbones: the feature extractors methods are built on."""

from .backbones import BACKBONES, MLP, Conv4, ResNet12, build_backbone, conv_block, feature_dim

__all__ = ["BACKBONES", "MLP", "Conv4", "ResNet12", "build_backbone", "conv_block", "feature_dim"]
