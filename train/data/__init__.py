"""Datasets for training and evaluation."""

from train.data.demo import DemoDigits

__all__ = ["DemoDigits"]
