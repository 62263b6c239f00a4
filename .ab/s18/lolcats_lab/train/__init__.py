"""Training: stage 1 attention transfer, stage 2 LoRA, and the loop they share."""

from .lora import LoraSettings, add_lora, finetune_lora
from .loop import LoopConfig, LoopResult, TrainingDiverged, run_training
from .layerwise import transfer_layerwise
from .transfer import TransferConfig, layer_mse, transfer

__all__ = [
    "LoopConfig", "LoopResult", "LoraSettings", "TrainingDiverged", "TransferConfig",
    "add_lora", "finetune_lora", "layer_mse", "run_training", "transfer", "transfer_layerwise",
]
