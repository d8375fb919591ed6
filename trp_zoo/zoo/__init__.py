"""The zoo: the checkpoint format (a timm-compatible Hugging Face model repo), model card,
results, saving, the local store, the registry, hub I/O, publishing and the timm entrypoint."""
