"""The seven stages and the main job: one module each, side by side."""
