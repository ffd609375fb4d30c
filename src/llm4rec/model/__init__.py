"""The model side of the `model` rules (docs/method.md sections 4-5): prompts, tokenizer,
encoded examples, the edge-aware collator, backbones and the edge-aware model."""
