"""Training: the three-stage InfiniteVL recipe (distillation, SFT, long-sequence LoRA) and its data.

Nothing here is imported by the app or by inference code; optional packages (peft, matplotlib)
are imported where they are used.
"""
