"""The portrait world: attributes, renderer, world configs and captions, datasets, the world classifier, the
tiny model's training recipe and its quality gates (docs/world.md, docs/model-card.md)."""
