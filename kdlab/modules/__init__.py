"""LightningModules: the shared LM base, pretraining, and distillation."""

from kdlab.modules.base import DivergedError, LanguageModelModule
from kdlab.modules.distill import DistillModule
from kdlab.modules.pretrain import PretrainModule

__all__ = ["DistillModule", "DivergedError", "LanguageModelModule", "PretrainModule"]
