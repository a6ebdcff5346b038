"""brandgen-tiny: the embedded default model (procedural data, local tokenizer, recipe, evaluator)."""
