"""A tiny text-to-image demo model trained by the project on synthetic captioned shapes."""
