"""A seeded procedural editing set with ground truth, its judge, and the small models trained on it.

``scenes`` draws images of one to three coloured shapes on textured backgrounds with captions,
and edit pairs (colour, shape, add, remove, move) with instructions, target images and exact
masks; ``piebench`` writes them in the PIE-Bench layout; ``judge`` decides from pixels whether an
object of a palette colour and shape is in a region; ``text`` is the word-to-conditioning map the
small models were trained with. Pure numpy/torch: nothing here imports ComfyUI.
"""
