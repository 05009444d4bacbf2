"""LoRA training: settings, data, checkpoint files and the slice-wise trainer."""
