"""Load generators: diffusers checkpoints (hub id or local dir) and the bundled tiny portrait model."""
