"""Building blocks shared by several algorithms (image backbones, losses)."""
