"""Brand LoRA training: dataset validation, a per-family trainer, background jobs and exports."""
