"""The `pretrain`, `finetune` and `evaluate` stages (docs/method.md sections 6-7): settings,
checkpoints, optimizer steps, the stage loops and evaluation."""
